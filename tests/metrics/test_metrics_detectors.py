"""Detectors: the TorchScript Inception loader (on a small scripted stand-in) and effnet-lite0 features."""
import hashlib
import os

import pytest
import torch
import torch.nn.functional as F

from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript
from gan_prune.metrics import detectors

# Scripting the stand-in detector uses TorchScript, which torch now marks deprecated.
pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning:torch.jit')


class _InceptionLike(torch.nn.Module):
    """Same call signature as StyleGAN2-ADA's Inception file: (uint8 NCHW, return_features) -> [N, D]."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(img.to(torch.float32) / 255.0, 4).flatten(1)
        if return_features:
            return x
        return self.proj(x)


@pytest.fixture(scope='module')
def scripted_detector_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('det') / 'inception-like.pt'
    torch.jit.save(torch.jit.script(_InceptionLike()), str(path))
    return str(path)


@pytest.fixture(autouse=True)
def stand_in_is_known(scripted_detector_file, monkeypatch):
    """The stand-in plays NVIDIA's published Inception file, which loads without --trust-pickle by its checksum."""
    digest = hashlib.sha256(open(scripted_detector_file, 'rb').read()).hexdigest()
    monkeypatch.setitem(torchscript.KNOWN_TORCHSCRIPT_SHA256, digest, 'inception stand-in')


def test_unknown_torchscript_detector_needs_trust(tmp_path, monkeypatch):
    path = tmp_path / 'other.pt'
    torch.jit.save(torch.jit.script(_InceptionLike()), str(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() not in torchscript.KNOWN_TORCHSCRIPT_SHA256
    loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, 'load', lambda *a, **k: loads.append(a) or real_load(*a, **k))
    for spec in (f'inception:{path}', 'inception'):
        target = tmp_path / 'detectors' / 'inception-2015-12-05.pt'
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
        monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'no-dnnlib'))
        with pytest.raises(GanPruneError) as e:
            detectors.build_detector(spec, device='cpu', cache_dir=str(tmp_path))
        assert '--trust-pickle' in str(e.value) and '\n' not in str(e.value)
    assert loads == []
    det = detectors.build_detector(f'inception:{path}', device='cpu', trust=True)
    assert det.features(torch.zeros([1, 3, 8, 8], dtype=torch.uint8)).shape == (1, 48) and len(loads) == 1


def test_inception_file_is_called_with_uint8_and_return_features(scripted_detector_file):
    det = detectors.build_detector('inception:' + scripted_detector_file, device='cpu')
    assert det.name == 'inception' and det.is_inception
    images = torch.randint(0, 256, [5, 3, 16, 16], dtype=torch.uint8)
    feats = det.features(images)
    expected = F.adaptive_avg_pool2d(images.float() / 255.0, 4).flatten(1)
    assert feats.shape == (5, 48) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)
    assert det.dim == 48
    assert det.identity()['file']['path'] == os.path.abspath(scripted_detector_file)


def test_grayscale_images_are_repeated_to_rgb(scripted_detector_file):
    det = detectors.build_detector('inception:' + scripted_detector_file, device='cpu')
    gray = torch.randint(0, 256, [2, 1, 8, 8], dtype=torch.uint8)
    torch.testing.assert_close(det.features(gray), det.features(gray.repeat(1, 3, 1, 1)))


def test_detector_rejects_float_images(scripted_detector_file):
    det = detectors.build_detector('inception:' + scripted_detector_file, device='cpu')
    with pytest.raises(GanPruneError, match='uint8'):
        det.features(torch.zeros([1, 3, 8, 8]))


def test_default_inception_path_under_cache_dir(tmp_path, scripted_detector_file, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'no-dnnlib'))
    with pytest.raises(GanPruneError, match='no Inception detector file'):
        detectors.build_detector('inception', device='cpu', cache_dir=str(tmp_path))
    target = tmp_path / 'detectors' / 'inception-2015-12-05.pt'
    target.parent.mkdir()
    target.write_bytes(open(scripted_detector_file, 'rb').read())
    det = detectors.build_detector('inception', device='cpu', cache_dir=str(tmp_path))
    assert det.path == str(target)


def test_default_inception_path_finds_dnnlib_download(tmp_path, scripted_detector_file, monkeypatch):
    downloads = tmp_path / 'dnnlib' / 'downloads'
    downloads.mkdir(parents=True)
    target = downloads / '0123abcd_inception-2015-12-05.pt'
    target.write_bytes(open(scripted_detector_file, 'rb').read())
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))
    det = detectors.build_detector('inception', device='cpu', cache_dir=str(tmp_path / 'empty'))
    assert det.path == str(target)


def test_missing_or_invalid_detector_files_are_user_errors(tmp_path):
    with pytest.raises(GanPruneError, match='not found'):
        detectors.build_detector('inception:' + str(tmp_path / 'nope.pt'), device='cpu')
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a torchscript archive')
    with pytest.raises(GanPruneError, match='TorchScript'):
        detectors.build_detector('inception:' + str(bad), device='cpu')
    with pytest.raises(GanPruneError, match='unknown detector'):
        detectors.build_detector('vgg16', device='cpu')


def test_scripted_module_with_wrong_signature_fails_clearly(tmp_path):
    class NoFeatures(torch.nn.Module):
        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return img.float().flatten(1)

    path = tmp_path / 'plain.pt'
    torch.jit.save(torch.jit.script(NoFeatures()), str(path))
    det = detectors.build_detector(f'inception:{path}', device='cpu', trust=True)
    with pytest.raises(GanPruneError, match='return_features'):
        det.features(torch.zeros([1, 3, 8, 8], dtype=torch.uint8))


def test_cuda_request_falls_back_to_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('CUDA present: nothing to fall back from')
    assert detectors.resolve_device('cuda').type == 'cpu'
    assert detectors.resolve_device(None).type == 'cpu'


def test_effnet_lite0_features():
    det = detectors.build_detector('effnet-lite0', device='cpu')
    assert det.name == 'effnet-lite0' and not det.is_inception and det.dim == 1280
    torch.manual_seed(0)
    images = torch.randint(0, 256, [2, 3, 32, 32], dtype=torch.uint8)
    feats = det.features(images)
    assert feats.shape == (2, 1280) and torch.isfinite(feats).all()
    # Different images give different features; the same images give the same features.
    assert not torch.allclose(feats[0], feats[1])
    torch.testing.assert_close(det.features(images), feats)
    assert 'preprocessing' in det.identity()


def test_detector_specs_are_checked_from_the_registry_without_loading(tmp_path, scripted_detector_file):
    assert set(detectors.DETECTORS) == {'effnet-lite0', 'inception'}
    detectors.check_detector_spec('effnet-lite0')
    detectors.check_detector_spec('inception')  # the default file is looked for when the detector is built
    detectors.check_detector_spec('inception:' + scripted_detector_file)
    with pytest.raises(GanPruneError, match="unknown detector 'incepton'; did you mean 'inception'"):
        detectors.check_detector_spec('incepton')
    with pytest.raises(GanPruneError, match='takes no file'):
        detectors.check_detector_spec('effnet-lite0:weights.pt')
    with pytest.raises(GanPruneError, match='no Inception detector file'):
        detectors.check_detector_spec('inception:' + str(tmp_path / 'missing.pt'))
