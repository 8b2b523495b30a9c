"""CAGAN's instance-level KD, the `--kd cagan` baseline: masked L1 plus a perceptual distance (LPIPS-VGG by default)
between student and teacher images.

Kept apart from gan_prune.distill.losses so that the KD-term registry (gan_prune.distill.terms) and the objective
(losses) both import it without importing each other.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.errors import GanPruneError

# LPIPS input scaling (Zhang et al. 2018): images in [-1, 1] are shifted/scaled per channel before VGG.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features


class PerceptualDistance(nn.Module):
    """Per-sample perceptual distance between two image batches in [-1, 1].

    spec `lpips-vgg[:FILE]`: LPIPS (Zhang et al. 2018) as the `lpips` package computes it, VGG variant, with its
    learned per-channel linear weights (shipped with the package); the VGG-16 trunk is torchvision's ImageNet
    state dict FILE, or without FILE the official file (local copy, cache, or a checked download).
    spec `vgg16:FILE`: LPIPS-style distance on torchvision VGG16 features (weights from a local state dict):
    channel-normalised activations at relu1_2..relu5_3, squared differences summed over channels, averaged
    over pixels, summed over layers (LPIPS without its learned per-channel weights).
    Any other spec is an embedder (gan_prune.distill.embedders): squared distance of unit-normalised embeddings;
    `trust` lets a TorchScript embedder file run (--trust-pickle).
    """

    def __init__(self, spec: str, trust: bool = False):
        super().__init__()
        self.spec = spec
        if spec == LPIPS_VGG or spec.startswith(LPIPS_VGG + ':'):
            self.kind = 'lpips'
            self.lpips = _load_lpips_vgg(spec.partition(':')[2] or None)
        elif spec.startswith('vgg16:'):
            self.kind = 'vgg16'
            self.features = _load_vgg16_features(spec.split(':', 1)[1])
            self.register_buffer('shift', torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer('scale', torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        else:
            from gan_prune.distill.embedders import build_embedder
            self.kind = 'embedder'
            self.embedder = build_embedder(spec, trust=trust)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> 'PerceptualDistance':
        return super().train(False)  # frozen network: never switch batch norm / dropout to training mode

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.kind == 'embedder':
            ea = F.normalize(self.embedder(a), dim=1)
            eb = F.normalize(self.embedder(b), dim=1)
            return (ea - eb).square().sum(1)
        if self.kind == 'lpips':
            return self.lpips(self._sized(a), self._sized(b)).flatten()
        x, y = self._vgg_input(a), self._vgg_input(b)
        total = a.new_zeros([a.shape[0]], dtype=torch.float32)
        last = max(VGG16_TAPS)
        for idx, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if idx in VGG16_TAPS:
                nx = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + (nx - ny).square().sum(1).mean(dim=[1, 2])
            if idx >= last:
                break
        return total

    @staticmethod
    def _sized(img: torch.Tensor) -> torch.Tensor:
        img = img.float()
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        if img.shape[-1] < 32:  # five max-pools need at least 32 px
            img = F.interpolate(img, size=(32, 32), mode='bilinear', align_corners=False)
        return img

    def _vgg_input(self, img: torch.Tensor) -> torch.Tensor:
        return (self._sized(img) - self.shift) / self.scale


LPIPS_VGG = 'lpips-vgg'


def _load_lpips_vgg(path: str | None) -> nn.Module:
    """lpips.LPIPS(net='vgg') with the package's linear weights and the VGG-16 trunk read from `path` (a
    torchvision vgg16 state dict; None: the official file). lpips never downloads anything here."""
    import warnings
    try:
        import lpips
    except ImportError:
        raise GanPruneError('--cagan-net lpips-vgg needs the lpips package: pip install lpips') from None
    if path is None:
        from gan_prune.distill.official_weights import fetch
        path = fetch('vgg16')
    features = _load_vgg16_features(path)
    with warnings.catch_warnings():  # lpips builds its random trunk with torchvision's deprecated pretrained=False
        warnings.simplefilter('ignore')
        model = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True, verbose=False)
    # lpips splits torchvision's features into slices that keep the layer indices: features.{i} -> slice{k}.{i}.
    trunk = {}
    for slice_name, block in model.net.named_children():
        for index in block._modules:
            layer = features[int(index)]
            for key, value in layer.state_dict().items():
                trunk[f'{slice_name}.{index}.{key}'] = value
    model.net.load_state_dict(trunk, strict=True)
    return model.eval().requires_grad_(False)


def _load_vgg16_features(path: str) -> nn.Sequential:
    import torchvision
    from gan_prune.weights import resolve_weights
    found = resolve_weights(path)
    if found is None:
        raise GanPruneError(f'VGG16 weights file not found: {path} (give a torchvision vgg16 state dict; bare names '
                            f'are also searched in $GAN_PRUNE_WEIGHTS, ./weights and ~/.cache/gan_prune/weights)')
    net = torchvision.models.vgg16(weights=None)
    try:
        state = torch.load(found, map_location='cpu', weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith('features.')}
        net.load_state_dict(state, strict=False)
        missing = [k for k in net.state_dict() if k.startswith('features.') and k not in state]
    except Exception as e:  # pylint: disable=broad-except
        raise GanPruneError(f'cannot read VGG16 weights {found} ({type(e).__name__}: {e}); '
                            f'give a torchvision vgg16 state dict') from e
    if missing:
        raise GanPruneError(f'{found} is not a torchvision vgg16 state dict (missing {missing[0]})')
    return net.features.eval()


class CaganKD(nn.Module):
    """CAGAN's instance-level KD: l1_weight * mean|M (x_T - x_S)| + perceptual_weight * P(M x_S, M x_T).

    `mask` maps teacher images to [N, 1, H, W] content-of-interest masks (gan_prune.prune.masks providers);
    None means every pixel. Returns per-sample (l1, perceptual) terms, unweighted.
    """

    def __init__(self, perceptual: nn.Module | None, l1_weight: float = 3.0, perceptual_weight: float = 3.0,
                 mask: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.perceptual = perceptual
        self.l1_weight, self.perceptual_weight = float(l1_weight), float(perceptual_weight)
        self.mask = mask

    def forward(self, img_s: torch.Tensor, img_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_t = img_t.detach().float()
        img_s = img_s.float()
        if self.mask is not None:
            with torch.no_grad():
                m = self.mask(img_t).to(img_t.dtype)
            img_s, img_t = img_s * m, img_t * m
        l1 = (img_t - img_s).abs().mean(dim=[1, 2, 3])
        if self.perceptual is None or self.perceptual_weight == 0:
            return l1, torch.zeros_like(l1)
        return l1, self.perceptual(img_s, img_t)
