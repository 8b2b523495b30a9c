"""Fused bias_act and upfirdn2d kernels in Triton, registered as torch ops with autograd.

bias_act: one pass computes clamp(gain * act(x + b)). The backward pass recomputes s = x + b from the saved
input (elementwise, cheaper than another stored tensor) and writes dx = dy * gain * act'(s) where the forward
output was not clamped; db is dx summed over every axis but `dim`. The backward is itself an op whose autograd
uses a third kernel for act''(s), so gradients of gradients (R1, path length) stay fused. Third-order
gradients are not supported (that op has no autograd).

upfirdn2d: one program computes a tile of output pixels of one image channel by visiting the filter taps and
reading only the input pixels that land on a tap (the inserted zeros and the cropped border are never read).
Its gradient is upfirdn2d of the output gradient with up and down swapped and the filter mirrored, so any
order of gradient is available.

All arithmetic is float32 inside the kernels; inputs and outputs keep their dtype (float16, bfloat16, float32).
"""
from __future__ import annotations

import os
import traceback
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

_BLOCK = 1024        # elements per bias_act program
_PIXEL_BLOCK = 256   # output pixels per upfirdn2d program

# Activation codes: the same order as activation_funcs' cuda_idx.
ACTIVATION_CODES = dict(linear=1, relu=2, lrelu=3, tanh=4, sigmoid=5, elu=6, selu=7, softplus=8, swish=9)
HAS_SECOND_DERIVATIVE = {'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish'}
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def triton_version() -> str:
    return triton.__version__


def is_compile_error(error: BaseException) -> bool:
    """Whether `error` came out of Triton itself (compiler, driver, launcher) rather than from bad arguments."""
    if isinstance(error, AssertionError):
        return False
    if type(error).__module__.split('.')[0] == 'triton':
        return True
    frames = traceback.extract_tb(error.__traceback__)
    triton_dir = os.path.dirname(triton.__file__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(triton_dir)


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f'{type(error).__name__}: {lines[-1]}' if lines else type(error).__name__


# ------------------------------------------------------------------------------------------------------------------
# Activation functions and their first two derivatives, in float32.

@triton.jit
def _tanh(s):
    # tl has no tanh; exp(-2|s|) is accurate except near 0, where the odd Taylor series takes over.
    e = tl.exp(-2.0 * tl.abs(s))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(s < 0, -t, t)
    s2 = s * s
    series = s * (1.0 + s2 * (-0.3333333333333333 + s2 * (0.13333333333333333 - s2 * 0.05396825396825397)))
    return tl.where(tl.abs(s) < 0.0625, series, t)


@triton.jit
def _activation(s, alpha, ACT: tl.constexpr):
    if ACT == 2:
        r = tl.maximum(s, 0.0)
    elif ACT == 3:
        r = tl.where(s > 0, s, s * alpha)
    elif ACT == 4:
        r = _tanh(s)
    elif ACT == 5:
        r = tl.sigmoid(s)
    elif ACT == 6:
        r = tl.where(s > 0, s, tl.exp(tl.minimum(s, 0.0)) - 1.0)
    elif ACT == 7:
        r = tl.where(s > 0, _SELU_SCALE * s, (_SELU_SCALE * _SELU_ALPHA) * (tl.exp(tl.minimum(s, 0.0)) - 1.0))
    elif ACT == 8:
        # Like torch.nn.functional.softplus: linear above 20.
        r = tl.where(s > 20.0, s, tl.maximum(s, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(s))))
    elif ACT == 9:
        r = s * tl.sigmoid(s)
    else:
        r = s
    return r


@triton.jit
def _derivative(s, alpha, ACT: tl.constexpr):
    if ACT == 2:
        d = tl.where(s > 0, 1.0, 0.0)
    elif ACT == 3:
        d = tl.where(s > 0, 1.0, alpha)
    elif ACT == 4:
        t = _tanh(s)
        d = 1.0 - t * t
    elif ACT == 5:
        g = tl.sigmoid(s)
        d = g * (1.0 - g)
    elif ACT == 6:
        d = tl.where(s > 0, 1.0, tl.exp(tl.minimum(s, 0.0)))
    elif ACT == 7:
        d = tl.where(s > 0, _SELU_SCALE, (_SELU_SCALE * _SELU_ALPHA) * tl.exp(tl.minimum(s, 0.0)))
    elif ACT == 8:
        d = tl.where(s > 20.0, 1.0, tl.sigmoid(s))
    elif ACT == 9:
        g = tl.sigmoid(s)
        d = g + s * g * (1.0 - g)
    else:
        d = s * 0.0 + 1.0
    return d


@triton.jit
def _second_derivative(s, alpha, ACT: tl.constexpr):
    if ACT == 4:
        t = _tanh(s)
        dd = -2.0 * t * (1.0 - t * t)
    elif ACT == 5:
        g = tl.sigmoid(s)
        dd = g * (1.0 - g) * (1.0 - 2.0 * g)
    elif ACT == 6:
        dd = tl.where(s > 0, 0.0, tl.exp(tl.minimum(s, 0.0)))
    elif ACT == 7:
        dd = tl.where(s > 0, 0.0, (_SELU_SCALE * _SELU_ALPHA) * tl.exp(tl.minimum(s, 0.0)))
    elif ACT == 8:
        g = tl.sigmoid(s)
        dd = tl.where(s > 20.0, 0.0, g * (1.0 - g))
    elif ACT == 9:
        g = tl.sigmoid(s)
        dd = g * (1.0 - g) * (2.0 + s * (1.0 - 2.0 * g))
    else:
        dd = s * 0.0
    return dd


# ------------------------------------------------------------------------------------------------------------------
# bias_act kernels. x is dense in memory (any dimension order), so the index along `dim` of the element at
# memory offset o is (o // stride_dim) % channels.

@triton.jit
def _load_pre_activation(x_ptr, b_ptr, offs, mask, stride_dim, channels, HAS_BIAS: tl.constexpr):
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        c = (offs // stride_dim) % channels
        s += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    return s


@triton.jit
def _unclamped(s, alpha, gain, clamp, HAS_CLAMP: tl.constexpr, ACT: tl.constexpr):
    """1.0 where the forward output was not clamped (the gradient passes), else 0.0."""
    if HAS_CLAMP:
        y = _activation(s, alpha, ACT) * gain
        keep = tl.where(tl.abs(y) <= clamp, 1.0, 0.0)
    else:
        keep = s * 0.0 + 1.0
    return keep


@triton.jit
def _bias_act_forward_kernel(x_ptr, b_ptr, y_ptr, n, stride_dim, channels, alpha, gain, clamp,
                             ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                             BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = _load_pre_activation(x_ptr, b_ptr, offs, mask, stride_dim, channels, HAS_BIAS)
    y = _activation(s, alpha, ACT) * gain
    if HAS_CLAMP:
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_backward_kernel(dy_ptr, x_ptr, b_ptr, dx_ptr, n, stride_dim, channels, alpha, gain, clamp,
                              ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                              BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = _load_pre_activation(x_ptr, b_ptr, offs, mask, stride_dim, channels, HAS_BIAS)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = dy * (gain * _derivative(s, alpha, ACT) * _unclamped(s, alpha, gain, clamp, HAS_CLAMP, ACT))
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_second_kernel(ddx_ptr, dy_ptr, x_ptr, b_ptr, out_ptr, n, stride_dim, channels, alpha, gain, clamp,
                            ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                            BLOCK: tl.constexpr):
    """Gradient of sum(ddx * dx) with respect to x, where dx is the backward kernel's output."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = _load_pre_activation(x_ptr, b_ptr, offs, mask, stride_dim, channels, HAS_BIAS)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ddx = tl.load(ddx_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    keep = _unclamped(s, alpha, gain, clamp, HAS_CLAMP, ACT)
    out = ddx * dy * (gain * _second_derivative(s, alpha, ACT) * keep)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself if its elements fill its memory without gaps (contiguous or channels_last), else a copy."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _like(reference: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t laid out in memory exactly like `reference` (the kernels index by memory offset)."""
    if t.stride() == reference.stride():
        return t
    return torch.empty_like(reference).copy_(t)


def _launch_elementwise(kernel, tensors: Sequence[Optional[torch.Tensor]], out: torch.Tensor, dim: int, act: str,
                        alpha: float, gain: float, clamp: float) -> torch.Tensor:
    x_like = tensors[-2]
    b = tensors[-1]
    n = out.numel()
    if n == 0:
        return out
    channels = x_like.shape[dim] if x_like.ndim else 1
    stride_dim = max(x_like.stride(dim), 1) if x_like.ndim else 1
    pointers = [t if t is not None else x_like for t in tensors]  # a placeholder pointer when there is no bias
    kernel[(triton.cdiv(n, _BLOCK),)](*pointers, out, n, stride_dim, channels, float(alpha), float(gain),
                                      float(max(clamp, 0.0)), ACT=ACTIVATION_CODES[act], HAS_BIAS=b is not None,
                                      HAS_CLAMP=clamp >= 0, BLOCK=_BLOCK)
    return out


@torch.library.custom_op('torch_utils::bias_act', mutates_args=())
def bias_act_op(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str, alpha: float, gain: float,
                clamp: float) -> torch.Tensor:
    """clamp(gain * act(x + b)); clamp < 0 means no clamping. x dense; b 1-D along `dim` or None."""
    x = _dense(x)
    return _launch_elementwise(_bias_act_forward_kernel, [x, b], torch.empty_like(x), dim, act, alpha, gain, clamp)


@torch.library.custom_op('torch_utils::bias_act_backward', mutates_args=())
def bias_act_backward_op(dy: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str,
                         alpha: float, gain: float, clamp: float) -> torch.Tensor:
    """dx of bias_act_op for the output gradient dy."""
    x = _dense(x)
    dy = _like(x, dy)
    return _launch_elementwise(_bias_act_backward_kernel, [dy, x, b], torch.empty_like(x), dim, act, alpha, gain,
                               clamp)


@torch.library.custom_op('torch_utils::bias_act_second', mutates_args=())
def bias_act_second_op(ddx: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor], dim: int,
                       act: str, alpha: float, gain: float, clamp: float) -> torch.Tensor:
    """Gradient with respect to x of sum(ddx * bias_act_backward_op(dy, x, b, ...))."""
    x = _dense(x)
    ddx, dy = _like(x, ddx), _like(x, dy)
    return _launch_elementwise(_bias_act_second_kernel, [ddx, dy, x, b], torch.empty_like(x), dim, act, alpha, gain,
                               clamp)


@bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


@bias_act_backward_op.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


@bias_act_second_op.register_fake
def _(ddx, dy, x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t summed over every axis but `dim` (the bias gradient), in float32, cast back to t's dtype."""
    axes = [i for i in range(t.ndim) if i != dim]
    return t.sum(dim=axes, dtype=torch.float32).to(t.dtype) if axes else t


def _save_inputs(ctx, inputs, output) -> None:
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.params = (dim, act, alpha, gain, clamp)


def _bias_act_backward(ctx, dy):
    x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.params
    dx = bias_act_backward_op(dy, x, b, dim, act, alpha, gain, clamp)
    db = _sum_to_bias(dx, dim) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None


def _save_backward_inputs(ctx, inputs, output) -> None:
    dy, x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.params = (dim, act, alpha, gain, clamp)


def _bias_act_backward_backward(ctx, ddx):
    dy, x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.params
    d_dy = bias_act_backward_op(ddx, x, b, dim, act, alpha, gain, clamp)  # dx is linear in dy
    d_x = d_b = None
    if act in HAS_SECOND_DERIVATIVE and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d_x = bias_act_second_op(ddx, dy, x, b, dim, act, alpha, gain, clamp)
        d_b = _sum_to_bias(d_x, dim) if b is not None and ctx.needs_input_grad[2] else None
    return d_dy, d_x, d_b, None, None, None, None, None


bias_act_op.register_autograd(_bias_act_backward, setup_context=_save_inputs)
bias_act_backward_op.register_autograd(_bias_act_backward_backward, setup_context=_save_backward_inputs)


# ------------------------------------------------------------------------------------------------------------------
# upfirdn2d.

@triton.jit
def _upfirdn2d_kernel(x_ptr, f_ptr, y_ptr, channels, in_h, in_w, out_h, out_w,
                      sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                      upx, upy, downx, downy, padx0, pady0, filter_h, filter_w,
                      BLOCK: tl.constexpr):
    """f_ptr holds the correlation kernel (already mirrored for a true convolution), gain included."""
    plane = tl.program_id(0)
    n = plane // channels
    c = plane % channels
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < out_h * out_w
    oy = pix // out_w
    ox = pix % out_w
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ky in range(filter_h):
        uy = oy * downy + ky - pady0  # row in the upsampled image
        uy_safe = tl.maximum(uy, 0)
        iy = uy_safe // upy
        row_ok = (uy >= 0) & (uy_safe - iy * upy == 0) & (iy < in_h)
        for kx in range(filter_w):
            ux = ox * downx + kx - padx0
            ux_safe = tl.maximum(ux, 0)
            ix = ux_safe // upx
            ok = mask & row_ok & (ux >= 0) & (ux_safe - ix * upx == 0) & (ix < in_w)
            tap = tl.load(f_ptr + ky * filter_w + kx)
            v = tl.load(x_base + tl.where(ok, iy, 0).to(tl.int64) * sxh + tl.where(ok, ix, 0).to(tl.int64) * sxw,
                        mask=ok, other=0.0)
            acc += v.to(tl.float32) * tap
    y_base = y_ptr + n.to(tl.int64) * syn + c.to(tl.int64) * syc
    tl.store(y_base + oy.to(tl.int64) * syh + ox.to(tl.int64) * syw, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _output_size(size: int, up: int, down: int, pad0: int, pad1: int, taps: int) -> int:
    return (size * up + pad0 + pad1 - taps) // down + 1


@torch.library.custom_op('torch_utils::upfirdn2d', mutates_args=())
def upfirdn2d_op(x: torch.Tensor, f: torch.Tensor, upx: int, upy: int, downx: int, downy: int, padx0: int,
                 padx1: int, pady0: int, pady1: int, flip_filter: bool) -> torch.Tensor:
    """upfirdn2d with a 2-D float32 filter [fh, fw] that already includes the gain; x is [N, C, H, W]."""
    N, C, H, W = x.shape
    fh, fw = f.shape
    out_h = _output_size(H, upy, downy, pady0, pady1, fh)
    out_w = _output_size(W, upx, downx, padx0, padx1, fw)
    assert out_h >= 1 and out_w >= 1, 'upfirdn2d: the upsampled and padded input is smaller than the filter'
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty([N, C, out_h, out_w], dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if y.numel() == 0:
        return y
    kernel = (f if flip_filter else f.flip([0, 1])).to(device=x.device, dtype=torch.float32).contiguous()
    grid = (N * C, triton.cdiv(out_h * out_w, _PIXEL_BLOCK))
    _upfirdn2d_kernel[grid](x, kernel, y, C, H, W, out_h, out_w, *x.stride(), *y.stride(),
                            upx, upy, downx, downy, padx0, pady0, fh, fw, BLOCK=_PIXEL_BLOCK)
    return y


@upfirdn2d_op.register_fake
def _(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter):
    N, C, H, W = x.shape
    fh, fw = f.shape
    return x.new_empty([N, C, _output_size(H, upy, downy, pady0, pady1, fh),
                        _output_size(W, upx, downx, padx0, padx1, fw)])


def adjoint_padding(in_size: int, out_size: int, up: int, down: int, pad0: int, taps: int) -> Tuple[int, int]:
    """Padding of the upfirdn2d (up and down swapped, filter mirrored) that is the adjoint along one axis.

    The adjoint maps an output-sized image back to in_size pixels: its first tap must reach input pixel 0,
    hence taps - 1 - pad0 before, and the rest of the upsampled input after.
    """
    return taps - 1 - pad0, in_size * up - out_size * down + pad0 - up + 1


def _save_upfirdn2d(ctx, inputs, output) -> None:
    x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter = inputs
    ctx.save_for_backward(f)
    ctx.params = (x.shape, output.shape, upx, upy, downx, downy, padx0, pady0, flip_filter)


def _upfirdn2d_backward(ctx, dy):
    (f,) = ctx.saved_tensors
    in_shape, out_shape, upx, upy, downx, downy, padx0, pady0, flip_filter = ctx.params
    fh, fw = f.shape
    px0, px1 = adjoint_padding(in_shape[3], out_shape[3], upx, downx, padx0, fw)
    py0, py1 = adjoint_padding(in_shape[2], out_shape[2], upy, downy, pady0, fh)
    dx = upfirdn2d_op(dy, f, downx, downy, upx, upy, px0, px1, py0, py1, not flip_filter)
    return dx, None, None, None, None, None, None, None, None, None, None


upfirdn2d_op.register_autograd(_upfirdn2d_backward, setup_context=_save_upfirdn2d)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: Tuple[int, int], down: Tuple[int, int],
              padding: List[int], flip_filter: bool, gain: float) -> torch.Tensor:
    """upfirdn2d with parsed arguments; a 1-D filter runs as two passes (x, then y) like the reference path."""
    upx, upy = up
    downx, downy = down
    padx0, padx1, pady0, pady1 = padding
    f = f * (gain ** (f.ndim / 2))
    if f.ndim == 2:
        return upfirdn2d_op(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter)
    x = upfirdn2d_op(x, f[None, :], upx, 1, downx, 1, padx0, padx1, 0, 0, flip_filter)
    return upfirdn2d_op(x, f[:, None], 1, upy, 1, downy, 0, 0, pady0, pady1, flip_filter)
