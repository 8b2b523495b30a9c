"""Image conversion and grids, in StyleGAN2-ADA's conventions: float pixels nominally in [-1, 1] become uint8 by
``x * 127.5 + 128``, clamped to [0, 255]; grids are filled row-major and empty cells are black."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images (any layout) with nominal range [-1, 1] -> uint8, same layout and device; computed in the
    images' own dtype, as StyleGAN2-ADA's tools do."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return images.to(torch.float32) / 127.5 - 1


def to_hwc_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, C, H, W] float in [-1, 1] (or uint8) tensor or array -> [N, H, W, C] uint8 numpy array on the CPU."""
    if isinstance(images, torch.Tensor):
        images = images.detach()
        if images.dtype != torch.uint8:
            images = float_to_uint8(images)
        images = images.cpu().numpy()
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 2, 3, 1))


def image_grid(images: Sequence[np.ndarray] | np.ndarray, cols: int | None = None,
               rows: int | None = None) -> np.ndarray:
    """Tile HWC uint8 images of one shape row-major into one HWC image.

    cols defaults to ceil(sqrt(n)); rows defaults to as many as the images need. Cells without an image are
    black; images beyond cols x rows are left out.
    """
    if len(images) == 0:
        raise ValueError('no images for the grid')
    n = len(images)
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = rows or int(math.ceil(n / cols))
    h, w, c = images[0].shape
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(images[:rows * cols]):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return grid


def _pil_image(array: np.ndarray):
    import PIL.Image
    if array.ndim == 2 or array.shape[-1] == 1:
        return PIL.Image.fromarray(array.reshape(array.shape[:2]), 'L')
    if array.shape[-1] == 3:
        return PIL.Image.fromarray(array, 'RGB')
    raise GanPruneError(f'cannot write a PNG with {array.shape[-1]} channels (need 1 or 3)')


def write_png(array: np.ndarray, path: str) -> None:
    """Save an HWC (or HW) uint8 array as PNG atomically, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: _pil_image(array).save(f, format='PNG'))
