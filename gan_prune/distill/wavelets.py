"""Orthonormal 2-D Haar discrete wavelet transform (multi-level), differentiable, any float dtype and device.

One level maps each 2x2 block [[a, b], [c, d]] of every channel to

    LL = (a + b + c + d) / 2     low-pass in both directions
    LH = (a + b - c - d) / 2     low-pass along width, high-pass along height (horizontal edges)
    HL = (a - b + c - d) / 2     high-pass along width, low-pass along height (vertical edges)
    HH = (a - b - c + d) / 2     high-pass in both directions (diagonals)

i.e. the separable product of the Haar filters low = (1, 1)/sqrt(2) and high = (1, -1)/sqrt(2). The transform is
orthonormal, so for even sizes the energy (sum of squares) of the input equals that of the four sub-bands.
Odd heights/widths are zero-padded by one row/column at the bottom/right, so each sub-band is ceil(H/2) x ceil(W/2).
Further levels transform the previous level's LL band.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class HaarLevel(NamedTuple):
    """One decomposition level: the low-pass band and the (LH, HL, HH) high-frequency bands, each [N, C, h, w]."""
    low: torch.Tensor
    high: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def haar_dwt2_level(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level of the 2-D Haar DWT of x [..., H, W] -> (LL, LH, HL, HH), each [..., ceil(H/2), ceil(W/2)]."""
    if x.ndim < 2:
        raise ValueError(f'haar_dwt2_level needs at least 2 dimensions, got shape {tuple(x.shape)}')
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        batch_dims = x.shape[:-2]
        x = F.pad(x.reshape(-1, 1, h, w), [0, w % 2, 0, h % 2]).reshape(*batch_dims, h + h % 2, w + w % 2)
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    # Butterflies: rows first (top +/- bottom), then columns; each stage scales by 1/sqrt(2).
    top_plus_bottom_left, top_minus_bottom_left = a + c, a - c
    top_plus_bottom_right, top_minus_bottom_right = b + d, b - d
    ll = (top_plus_bottom_left + top_plus_bottom_right) * 0.5
    hl = (top_plus_bottom_left - top_plus_bottom_right) * 0.5
    lh = (top_minus_bottom_left + top_minus_bottom_right) * 0.5
    hh = (top_minus_bottom_left - top_minus_bottom_right) * 0.5
    return ll, lh, hl, hh


def haar_dwt2(x: torch.Tensor, levels: int = 1) -> list[HaarLevel]:
    """Multi-level 2-D Haar DWT of x [..., H, W]; element j of the result is level j+1 (finest first)."""
    if levels < 1:
        raise ValueError(f'levels must be >= 1, got {levels}')
    result = []
    low = x
    for _ in range(levels):
        low, lh, hl, hh = haar_dwt2_level(low)
        result.append(HaarLevel(low, (lh, hl, hh)))
    return result


def haar_high_bands(x: torch.Tensor, levels: int = 1) -> list[torch.Tensor]:
    """Per level, the three high-frequency bands stacked on a new dim: [..., 3, h_j, w_j] (LH, HL, HH)."""
    return [torch.stack(level.high, dim=-3) for level in haar_dwt2(x, levels)]
