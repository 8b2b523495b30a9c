"""Fused multiply-add `a*b + c` with broadcasting and gradients reduced to each operand's own shape."""
from __future__ import annotations

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return a*b + c (broadcast). Forward is torch.addcmul; gradients come back in the operands' shapes."""
    if torch.jit.is_tracing():  # a tracer records forward ops only, and cannot record a Python autograd function
        return torch.addcmul(c, a, b)
    return _FusedMultiplyAdd.apply(a, b, c)


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum `grad` over the axes that were added or stretched to reach its shape."""
    extra = grad.ndim - len(shape)
    assert extra >= 0, 'gradient has fewer dimensions than its operand'
    axes = [i for i in range(grad.ndim) if grad.shape[i] != 1 and (i < extra or shape[i - extra] == 1)]
    if axes:
        grad = grad.sum(axes, keepdim=True)
    if grad.shape != shape:
        grad = grad.reshape(shape)
    return grad


class _FusedMultiplyAdd(torch.autograd.Function):
    # backward uses differentiable torch ops (and fma itself), so higher-order gradients work too.

    @staticmethod
    def forward(ctx, a, b, c):  # pylint: disable=arguments-differ
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):  # pylint: disable=arguments-differ
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _sum_to_shape(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _sum_to_shape(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _sum_to_shape(dout, ctx.c_shape)
        return da, db, dc


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    return 'torch.addcmul with broadcast-reducing autograd'
