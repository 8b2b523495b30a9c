"""conv2d / conv_transpose2d with the module flags the StyleGAN2-ADA training loop expects.

The original reason for this module (double backward of convolutions on old PyTorch versions) no longer
applies: current PyTorch differentiates convolutions to any order natively, so both functions are plain
torch.nn.functional calls whatever `enabled` says.

`weight_gradients_disabled` / `no_weight_gradients()` exist for callers such as path-length regularisation
that only need gradients with respect to the input. PyTorch's autograd engine already skips the weight
gradient of a convolution when the weight is not among the requested inputs of `torch.autograd.grad`, which
is how those callers use it, so the flag needs no custom kernel to have its effect.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F

enabled = False                    # Set to True by the training loop; kept for compatibility (no effect needed).
weight_gradients_disabled = False  # True inside no_weight_gradients().

_IntOrPair = Union[int, tuple, list]


@contextlib.contextmanager
def no_weight_gradients() -> Iterator[None]:
    """Within this block, convolutions are not asked for weight gradients (see the module docstring)."""
    global weight_gradients_disabled
    previous = weight_gradients_disabled
    weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: _IntOrPair = 1,
           padding: _IntOrPair = 0, dilation: _IntOrPair = 1, groups: int = 1) -> torch.Tensor:
    """Same semantics as torch.nn.functional.conv2d."""
    return F.conv2d(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: _IntOrPair = 1, padding: _IntOrPair = 0, output_padding: _IntOrPair = 0,
                     groups: int = 1, dilation: _IntOrPair = 1) -> torch.Tensor:
    """Same semantics as torch.nn.functional.conv_transpose2d."""
    return F.conv_transpose2d(input, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
                              groups=groups, dilation=dilation)


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    return 'torch.nn.functional convolutions (native double backward)'
