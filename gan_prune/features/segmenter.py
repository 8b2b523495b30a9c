"""A small segmentation network that finds the content (face, hair) in cartoon-face images.

It plays the face parser's role for the bundled teacher: trained on the procedural dataset's masks
(tools/train_mask_model.py), shipped as a constructor file ({'name', 'kwargs', 'state_dict'}: data, no code, so
it loads without --trust-pickle) and used like any user mask model (`--mask FILE`): images in [-1, 1] ->
[N, 1, H, W] content probability.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ContentSegmenter(nn.Module):
    """Encoder-decoder with one skip connection; resolution-agnostic (any multiple of 4)."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.width = int(width)
        w = self.width
        self.enc1 = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2), nn.ReLU())
        self.dec2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 1, 1))

    def logits(self, img: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(img)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([e2, F.interpolate(e3, size=e2.shape[2:], mode='nearest')], 1))
        return self.dec1(torch.cat([e1, F.interpolate(d2, size=e1.shape[2:], mode='nearest')], 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(img))


def save_mask_model(model: ContentSegmenter, path: str) -> str:
    """Write `model` as a mask model file that loads as data (class name, kwargs, state dict), atomically."""
    from gan_prune.fileio import atomic_write
    blob = {'name': f'{ContentSegmenter.__module__}.{ContentSegmenter.__qualname__}',
            'kwargs': {'width': model.width}, 'state_dict': model.state_dict()}
    return atomic_write(path, lambda f: torch.save(blob, f))
