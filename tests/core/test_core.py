"""gan_prune.core: one device rule, one cache directory rule, one image conversion, one fingerprint."""
import os
import warnings

import numpy as np
import pytest
import torch

from gan_prune import defaults
from gan_prune.core import cache, device, fingerprint, images
from gan_prune.errors import GanPruneError
from gan_prune.io import download
from gan_prune.metrics import detectors, stats


def test_every_cache_user_resolves_the_same_directory(monkeypatch, tmp_path):
    # The metric statistics once preferred defaults.DOWNLOAD['cache_dir'] over $GAN_PRUNE_CACHE_DIR while the
    # downloads preferred the environment: the two caches split. One rule now, the environment first.
    monkeypatch.setitem(defaults.DOWNLOAD, 'cache_dir', str(tmp_path / 'configured'))
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path / 'env'))
    expected = str(tmp_path / 'env')
    assert cache.cache_dir() == download.cache_dir() == stats.default_cache_dir() == expected
    assert detectors.default_inception_paths()[0].startswith(os.path.join(expected, 'detectors'))
    assert stats.cache_path(dict(kind='dataset')).startswith(os.path.join(expected, 'metrics'))
    monkeypatch.delenv(cache.CACHE_ENV_VAR)
    assert stats.default_cache_dir() == download.cache_dir() == str(tmp_path / 'configured')
    assert cache.cache_dir(tmp_path / 'arg') == str(tmp_path / 'arg')


def test_device_rule(monkeypatch):
    assert device.resolve_device('cpu') == torch.device('cpu')
    assert device.resolve_device(torch.device('cpu')) == torch.device('cpu')
    with pytest.raises(GanPruneError, match='unknown device'):
        device.resolve_device('gpu0')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert device.resolve_device('auto') == device.resolve_device(None) == torch.device('cpu')
    for name in ('cuda', 'cuda:1', 'CUDA'):
        with pytest.warns(UserWarning, match='CUDA is not available'):
            assert device.resolve_device(name) == torch.device('cpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert device.resolve_device('auto') == torch.device('cuda')
    assert device.resolve_device('cuda', local_rank=3) == torch.device('cuda', 1)
    assert device.resolve_device('cuda:0', local_rank=3) == torch.device('cuda', 0)


def test_module_device():
    assert device.module_device(torch.nn.Linear(2, 2)) == torch.device('cpu')
    assert device.module_device(torch.nn.ReLU()) == torch.device('cpu')


def test_float_to_uint8_rounds_like_stylegan2_ada_and_inverts_uint8_to_float():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
    assert images.float_to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(images.float_to_uint8(images.uint8_to_float(every)), every)


def test_grid_row_major_with_black_cells_and_overflow_left_out():
    tiles = [np.full((2, 2, 1), i + 1, np.uint8) for i in range(5)]
    grid = images.image_grid(tiles, cols=2, rows=2)
    assert grid.shape == (4, 4, 1)
    assert grid[0, 2, 0] == 2 and grid[2, 0, 0] == 3 and grid[2, 2, 0] == 4
    grid = images.image_grid(tiles, cols=3)
    assert grid.shape == (4, 6, 1) and grid[2, 4, 0] == 0
    with pytest.raises(ValueError):
        images.image_grid([])


def test_to_hwc_uint8_accepts_tensors_and_arrays():
    x = torch.zeros([2, 3, 4, 5])
    assert images.to_hwc_uint8(x).shape == (2, 4, 5, 3) and images.to_hwc_uint8(x)[0, 0, 0, 0] == 128
    arr = np.full([1, 1, 2, 2], 9, np.uint8)
    assert images.to_hwc_uint8(arr).shape == (1, 2, 2, 1)


def test_write_png_refuses_two_channels(tmp_path):
    with pytest.raises(GanPruneError, match='channels'):
        images.write_png(np.zeros([2, 2, 2], np.uint8), str(tmp_path / 'x.png'))
    assert not os.listdir(tmp_path)


def test_module_fingerprint_tracks_every_bit_of_the_weights():
    net = torch.nn.Linear(3, 2)
    first = fingerprint.module_fingerprint(net)
    assert fingerprint.module_fingerprint(net) == first and len(first) == 64
    with torch.no_grad():
        net.weight[0, 0] = torch.nextafter(net.weight[0, 0], torch.tensor(2.0))
    assert fingerprint.module_fingerprint(net) != first


def test_file_sha256(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(b'abc')
    assert fingerprint.file_sha256(path) == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
