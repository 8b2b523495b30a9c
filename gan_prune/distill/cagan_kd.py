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

from gan_prune.features.lpips_vgg import LPIPS_SCALE, LPIPS_SHIFT, VGG16_TAPS, load_lpips_vgg, load_vgg16_features


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
            self.lpips = load_lpips_vgg(spec.partition(':')[2] or None, official_file=_official_vgg16)
        elif spec.startswith('vgg16:'):
            self.kind = 'vgg16'
            self.features = load_vgg16_features(spec.split(':', 1)[1])
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


def _official_vgg16() -> str:
    """torchvision's VGG-16 file for `lpips-vgg` without FILE: a local copy, the cache, or a checked download."""
    from gan_prune.distill.official_weights import fetch
    return fetch('vgg16')


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
