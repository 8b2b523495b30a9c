"""Bias, activation, gain and clamp in one call: the epilogue of every StyleGAN2-ADA layer."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib

from . import fused, replacement, report_implementation

_IMPLS = ('ref', 'cuda')


def _linear(x, alpha):
    return x


def _relu(x, alpha):
    return F.relu(x)


def _lrelu(x, alpha):
    return F.leaky_relu(x, alpha)


def _tanh(x, alpha):
    return torch.tanh(x)


def _sigmoid(x, alpha):
    return torch.sigmoid(x)


def _elu(x, alpha):
    return F.elu(x)


def _selu(x, alpha):
    return F.selu(x)


def _softplus(x, alpha):
    return F.softplus(x)


def _swish(x, alpha):
    return torch.sigmoid(x) * x


def _spec(func, def_alpha, def_gain, cuda_idx, ref, has_2nd_grad):
    return dnnlib.EasyDict(func=func, def_alpha=def_alpha, def_gain=def_gain, cuda_idx=cuda_idx, ref=ref,
                           has_2nd_grad=has_2nd_grad)


# name -> func(x, alpha), default alpha, default gain, kernel index, what the gradient needs ('x' input,
# 'y' output, '' nothing), whether the second derivative is nonzero.
activation_funcs = {
    'linear':   _spec(_linear, 0, 1, 1, '', False),
    'relu':     _spec(_relu, 0, np.sqrt(2), 2, 'y', False),
    'lrelu':    _spec(_lrelu, 0.2, np.sqrt(2), 3, 'y', False),
    'tanh':     _spec(_tanh, 0, 1, 4, 'y', True),
    'sigmoid':  _spec(_sigmoid, 0, 1, 5, 'y', True),
    'elu':      _spec(_elu, 0, 1, 6, 'y', True),
    'selu':     _spec(_selu, 0, 1, 7, 'y', True),
    'softplus': _spec(_softplus, 0, 1, 8, 'y', True),
    'swish':    _spec(_swish, 0, np.sqrt(2), 9, 'x', True),
}


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
             impl: str = 'cuda') -> torch.Tensor:
    """Add bias `b` along `dim`, apply activation `act`, multiply by `gain`, clamp to [-clamp, clamp].

    b: 1-D, length x.shape[dim], same dtype as x, or None. alpha/gain: None means the activation's default.
    clamp: None for no clamping, else >= 0. impl: 'cuda' (the fast path on CUDA tensors) or 'ref'; CPU
    tensors always take the reference path. Output: same shape and dtype as x.
    """
    assert isinstance(x, torch.Tensor), 'x must be a tensor'
    assert impl in _IMPLS, f'impl must be one of {_IMPLS}'
    kernels = fused.kernels_for(x) if impl == 'cuda' else None
    if kernels is not None:
        y = _bias_act_fused(kernels, x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
        if y is not None:
            report_implementation('bias_act', x.device.type, describe(x.device.type))
            return y
    if impl == 'cuda' and x.device.type == 'cuda':
        report_implementation('bias_act', x.device.type, describe(x.device.type))
    else:
        report_implementation('bias_act', x.device.type, _REF_DESCRIPTION)
    native = replacement('bias_act') or _bias_act_native
    return native(x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def _bias_act_fused(kernels, x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str,
                    alpha: Optional[float], gain: Optional[float], clamp: Optional[float]) -> Optional[torch.Tensor]:
    """bias_act through the fused kernels; None if they failed to compile (then disabled for this process)."""
    assert clamp is None or clamp >= 0, 'clamp must be None or >= 0'
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if x.ndim:
        assert -x.ndim <= dim < x.ndim, 'dim out of range'
        dim = dim % x.ndim
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1, 'b must be a 1-D tensor'
        assert b.shape[0] == x.shape[dim], f'b has {b.shape[0]} entries, x.shape[{dim}] is {x.shape[dim]}'
        b = b.contiguous()
    try:
        return kernels.bias_act_op(x, b, dim, act, alpha, gain, float(clamp if clamp is not None else -1))
    except Exception as error:  # pylint: disable=broad-except
        if not kernels.is_compile_error(error):
            raise
        fused.disable(f'bias_act kernel failed to compile: {kernels.one_line(error)}')
        return None


def _bias_act_native(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
                     alpha: Optional[float] = None, gain: Optional[float] = None,
                     clamp: Optional[float] = None) -> torch.Tensor:
    """Pure-PyTorch bias_act; used on every device.

    Memory traffic is what costs here, so passes are saved where the result stays the same up to rounding:
    for activations with f(g*x) == g*f(x) (g > 0) the gain is folded into the bias addition, and when no
    gradient is needed the later steps run in place on the tensor this call allocated.
    """
    assert clamp is None or clamp >= 0, 'clamp must be None or >= 0'
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1, 'b must be a 1-D tensor'
        assert -x.ndim <= dim < x.ndim, 'dim out of range'
        dim = dim % x.ndim
        assert b.shape[0] == x.shape[dim], f'b has {b.shape[0]} entries, x.shape[{dim}] is {x.shape[dim]}'
        b = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])

    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    in_place = not needs_grad  # only ever applied to a tensor allocated below, never to the caller's x

    y = None  # the tensor this call owns; None while the value is still the caller's x
    gain_pending = gain != 1
    if b is not None:
        if gain_pending and gain > 0 and act in _POSITIVELY_HOMOGENEOUS:
            # gain * (x + b) in one pass. Not torch.add(b * gain, x, alpha=gain): inductor (torch 2.14)
            # miscompiles an add with alpha whose operand is a matmul result (the image of torch.compile is wrong).
            y = x.mul(gain).add_(b * gain)
            gain_pending = False
        else:
            y = x + b

    if act != 'linear':
        if y is not None and in_place and act in _IN_PLACE:
            _IN_PLACE[act](y, alpha)
        else:
            y = spec.func(x if y is None else y, alpha)

    if gain_pending:
        if y is not None and in_place:
            y.mul_(gain)
        else:
            y = (x if y is None else y) * gain

    if clamp >= 0:
        if y is not None and in_place:
            y.clamp_(-clamp, clamp)
        else:
            y = (x if y is None else y).clamp(-clamp, clamp)
    return x if y is None else y


# Activations with f(g * x) == g * f(x) for every g > 0.
_POSITIVELY_HOMOGENEOUS = ('linear', 'relu', 'lrelu')

# In-place variants, for tensors that no gradient flows through.
_IN_PLACE = {
    'relu': lambda y, alpha: y.relu_(),
    'lrelu': lambda y, alpha: F.leaky_relu_(y, alpha),
    'tanh': lambda y, alpha: y.tanh_(),
    'sigmoid': lambda y, alpha: y.sigmoid_(),
    'elu': lambda y, alpha: F.elu_(y),
    'selu': lambda y, alpha: F.selu_(y),
}


_REF_DESCRIPTION = 'reference path (pure PyTorch; in place when no gradient is needed)'


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    if device_type == 'cuda':
        return fused.describe('bias_act', device_type, 'torch-native CUDA kernels (no compiled plugin)')
    return fused.describe('bias_act', device_type, _REF_DESCRIPTION)
