"""Streamed feature statistics, their .npz files and the reference-statistics cache."""
import os
import time

import numpy as np
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.metrics import stats


def test_streamed_mean_and_cov_match_numpy():
    rng = np.random.RandomState(0)
    x = rng.randn(103, 5).astype(np.float32) * [1, 2, 3, 4, 5] + 10
    fs = stats.FeatureStats()
    for i in range(0, len(x), 17):  # uneven batches
        fs.append(torch.from_numpy(x[i:i + 17]))
    mean, cov = fs.mean_cov()
    assert fs.num_items == 103 and mean.dtype == np.float64 and cov.dtype == np.float64
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64).T, bias=True), rtol=1e-9, atol=1e-9)


def test_max_items_truncates_and_bank_keeps_features():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    fs = stats.FeatureStats(capture_all=True, max_items=7)
    fs.append(x[:5])
    assert not fs.is_full()
    fs.append(x[5:])
    assert fs.is_full() and fs.num_items == 7
    np.testing.assert_array_equal(fs.features(), x[:7])
    with pytest.raises(GanPruneError):
        stats.FeatureStats().features()


def test_save_load_roundtrip(tmp_path):
    rng = np.random.RandomState(1)
    fs = stats.FeatureStats(capture_all=True)
    fs.append(rng.randn(20, 3))
    fs.meta = dict(note='x')
    path = str(tmp_path / 'sub' / 's.npz')
    fs.save(path)
    assert os.listdir(tmp_path / 'sub') == ['s.npz']  # no temp file left behind
    loaded = stats.FeatureStats.load(path)
    for a, b in zip(loaded.mean_cov(), fs.mean_cov()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.features(), fs.features())
    assert loaded.num_items == 20 and loaded.meta == dict(note='x')
    with pytest.raises(GanPruneError):
        loaded.append(np.zeros([1, 3]))


def _key(dataset_path, detector='det', num=10):
    return dict(kind='dataset', dataset=stats.dataset_fingerprint(dataset_path), detector=dict(name=detector), num=num)


def _counting_compute(calls, capture_all):
    def compute():
        calls.append(capture_all)
        fs = stats.FeatureStats(capture_all=capture_all)
        fs.append(np.random.RandomState(len(calls)).randn(10, 3))
        return fs
    return compute


def test_cache_hit_and_miss(tmp_path):
    data = tmp_path / 'data.zip'
    data.write_bytes(b'0123')
    cache = stats.StatsCache(str(tmp_path / 'cache'))
    calls = []
    first = cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss' and calls == [False]
    again = cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'hit' and calls == [False]
    np.testing.assert_array_equal(again.mean_cov()[0], first.mean_cov()[0])

    # Another detector or another count is another entry.
    cache.get_or_compute(_key(data, detector='other'), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss'
    cache.get_or_compute(_key(data, num=5), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss' and len(calls) == 3

    # Needing the feature bank misses an entry without one, then the rewritten entry serves both needs.
    cache.get_or_compute(_key(data), True, _counting_compute(calls, True))
    assert cache.last_event == 'miss' and calls[-1] is True
    hit = cache.get_or_compute(_key(data), True, _counting_compute(calls, True))
    assert cache.last_event == 'hit' and hit.features().shape == (10, 3)
    cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'hit' and len(calls) == 4


def test_cache_misses_when_dataset_changes(tmp_path):
    data = tmp_path / 'data.zip'
    data.write_bytes(b'0123')
    cache = stats.StatsCache(str(tmp_path / 'cache'))
    calls = []
    cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    data.write_bytes(b'0123456')  # new size
    cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss' and len(calls) == 2
    # Same size, newer mtime.
    data.write_bytes(b'abcdefg')
    os.utime(data, (time.time() + 100, time.time() + 100))
    cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss' and len(calls) == 3


def test_folder_fingerprint_sees_added_files(tmp_path):
    (tmp_path / 'a.png').write_bytes(b'xx')
    before = stats.dataset_fingerprint(str(tmp_path))
    (tmp_path / 'b.png').write_bytes(b'yy')
    after = stats.dataset_fingerprint(str(tmp_path))
    assert before != after and after['files'] == 2


def test_corrupt_cache_file_is_recomputed(tmp_path):
    data = tmp_path / 'data.zip'
    data.write_bytes(b'0123')
    cache = stats.StatsCache(str(tmp_path / 'cache'))
    path = stats.cache_path(_key(data), cache.cache_dir)
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as f:
        f.write(b'garbage')
    calls = []
    cache.get_or_compute(_key(data), False, _counting_compute(calls, False))
    assert cache.last_event == 'miss' and len(calls) == 1
    assert stats.FeatureStats.load(path).num_items == 10


def test_disabled_cache_always_computes(tmp_path):
    cache = stats.StatsCache(str(tmp_path / 'cache'), enabled=False)
    calls = []
    for _ in range(2):
        cache.get_or_compute(dict(kind='x'), False, _counting_compute(calls, False))
    assert cache.last_event == 'disabled' and len(calls) == 2 and not os.path.exists(tmp_path / 'cache')


def test_module_fingerprint_changes_with_weights():
    net = torch.nn.Linear(3, 2)
    a = stats.module_fingerprint(net)
    assert stats.module_fingerprint(net) == a
    with torch.no_grad():
        net.bias[0] += 1
    assert stats.module_fingerprint(net) != a


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('GAN_PRUNE_CACHE_DIR', str(tmp_path / 'g'))
    assert stats.default_cache_dir() == str(tmp_path / 'g')
    monkeypatch.delenv('GAN_PRUNE_CACHE_DIR')
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'd'))
    assert stats.default_cache_dir() == os.path.join(str(tmp_path / 'd'), 'gan_prune')


def test_recent_entries_are_served_from_memory_until_the_file_changes(tmp_path, monkeypatch):
    data = tmp_path / 'data.zip'
    data.write_bytes(b'0123')
    cache = stats.StatsCache(str(tmp_path / 'cache'))
    calls = []
    first = cache.get_or_compute(_key(data), True, _counting_compute(calls, True))
    loads = []
    original_load = stats.FeatureStats.load
    monkeypatch.setattr(stats.FeatureStats, 'load', classmethod(lambda cls, p: loads.append(p) or original_load(p)))
    assert cache.get_or_compute(_key(data), True, _counting_compute(calls, True)) is first
    assert loads == [] and cache.last_event == 'hit'
    path = stats.cache_path(_key(data), cache.cache_dir)
    os.utime(path, ns=(0, 12345))  # the file was replaced (e.g. by another process): read it again
    again = cache.get_or_compute(_key(data), True, _counting_compute(calls, True))
    assert loads == [path] and again is not first and len(calls) == 1
    np.testing.assert_array_equal(again.features(), first.features())
