"""Bilinear grid_sample with zero padding, as the augmentation pipeline uses it.

Current PyTorch differentiates grid_sample twice natively (needed by R1 regularisation through the
augmentation pipeline), so the `enabled` flag is kept for compatibility only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

enabled = False  # Set to True by the training loop; kept for compatibility (no effect needed).


def grid_sample(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional.grid_sample with mode='bilinear', padding_mode='zeros', align_corners=False."""
    return F.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    return 'torch.nn.functional.grid_sample (native double backward)'
