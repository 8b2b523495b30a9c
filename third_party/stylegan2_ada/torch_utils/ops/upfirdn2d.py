"""Upsample, FIR-filter and downsample 2-D images (upfirdn2d), plus setup_filter, filter2d, upsample2d, downsample2d.

upsample2d_separable is a CPU inference variant of upsample2d for few-channel images (see its docstring).

upfirdn2d(x, f, up, down, padding) does, for every channel independently:
  1. insert up-1 zeros after every pixel,
  2. zero-pad by `padding` (negative values crop),
  3. convolve (valid mode) with f * gain**(f.ndim/2): a true convolution, or a correlation if flip_filter,
  4. keep every down-th pixel starting at index 0.

The implementation never materialises the inserted zeros nor the pixels that step 4 drops: upsampling runs as
a depthwise transposed convolution with stride `up`, downsampling as a depthwise convolution with stride
`down`, and symmetric padding goes into the convolution itself. Results equal the definition up to float
rounding. (Running 2-D filters that are outer products as two 1-D passes was measured too: on CPU a single
4x4 depthwise pass in channels_last is faster, so 2-D filters always run as one pass.)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import conv2d_gradfix
from . import fused, replacement, report_implementation

IntOrPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]

_IMPLS = ('ref', 'cuda')


# ------------------------------------------------------------------------------------------------------------------
# Argument parsing.

def _parse_scaling(scaling: IntOrPair) -> Tuple[int, int]:
    """int or [x, y] -> (x, y), each an int >= 1."""
    if isinstance(scaling, (int, np.integer)):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple)) and len(scaling) == 2, 'up/down must be an int or [x, y]'
    sx, sy = (int(s) for s in scaling)
    assert sx >= 1 and sy >= 1 and sx == scaling[0] and sy == scaling[1], 'up/down factors must be ints >= 1'
    return sx, sy


def _parse_padding(padding: Padding) -> Tuple[int, int, int, int]:
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, (int, np.integer)):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple)), 'padding must be an int, [x, y] or [x0, x1, y0, y1]'
    if len(padding) == 2:
        padx, pady = padding
        padding = [padx, padx, pady, pady]
    assert len(padding) == 4, 'padding must be an int, [x, y] or [x0, x1, y0, y1]'
    x0, x1, y0, y1 = (int(p) for p in padding)
    return x0, x1, y0, y1


def _get_filter_size(f: Optional[torch.Tensor]) -> Tuple[int, int]:
    """(fw, fh) of a filter; a 1-D filter is used along both axes; None is 1x1."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2), 'filter must be a 1-D or 2-D tensor (see setup_filter)'
    fw = f.shape[-1]
    fh = f.shape[0]
    assert fw >= 1 and fh >= 1, 'filter must not be empty'
    return int(fw), int(fh)


# ------------------------------------------------------------------------------------------------------------------
# Filters.

def setup_filter(f, device: torch.device = torch.device('cpu'), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """Turn a filter description into the float32 tensor upfirdn2d() expects.

    f: [fh, fw] or [taps] (list, array or tensor), a scalar, or None (same as [1]).
    separable: keep a 1-D filter 1-D (applied along both axes). None: only for 1-D filters with >= 8 taps;
    any other 1-D filter becomes its outer product.
    The result is normalised to sum 1 (if `normalize`), flipped (if `flip_filter`), multiplied by
    gain**(ndim/2), and placed on `device`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2), 'filter must be a scalar, 1-D or 2-D'
    assert f.numel() > 0, 'filter must not be empty'
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2), 'a 2-D filter cannot be separable'
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ------------------------------------------------------------------------------------------------------------------
# The op.

def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 1, down: IntOrPair = 1,
              padding: Padding = 0, flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Upsample by `up` (zero insertion), pad, FIR-filter with `f`, downsample by `down`; per channel.

    x: [N, C, H, W]. f: float32 [fh, fw] or [taps] from setup_filter() (requires_grad=False), or None (identity).
    up, down: int or [x, y]. padding: int, [x, y] or [x0, x1, y0, y1] (negative crops).
    Output height: (H*up_y + pad_y0 + pad_y1 - fh) // down_y + 1, likewise for the width.
    impl: 'cuda' (the fast path on CUDA tensors) or 'ref'; CPU tensors always take the reference path.
    """
    assert isinstance(x, torch.Tensor), 'x must be a tensor'
    assert impl in _IMPLS, f'impl must be one of {_IMPLS}'
    kernels = fused.kernels_for(x) if impl == 'cuda' and f is not None else None
    if kernels is not None:
        y = _upfirdn2d_fused(kernels, x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
        if y is not None:
            report_implementation('upfirdn2d', x.device.type, describe(x.device.type))
            return y
    if impl == 'cuda' and x.device.type == 'cuda':
        report_implementation('upfirdn2d', x.device.type, describe(x.device.type))
    else:
        report_implementation('upfirdn2d', x.device.type, _REF_DESCRIPTION)
    native = replacement('upfirdn2d') or _upfirdn2d_native
    return native(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _upfirdn2d_fused(kernels, x: torch.Tensor, f: torch.Tensor, up: IntOrPair, down: IntOrPair, padding: Padding,
                     flip_filter: bool, gain: float) -> Optional[torch.Tensor]:
    """upfirdn2d through the fused kernel; None if it failed to compile (then disabled for this process)."""
    assert x.ndim == 4, 'x must be [N, C, H, W]'
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2), 'f must be None or a 1-D/2-D tensor (see setup_filter)'
    assert f.dtype == torch.float32 and not f.requires_grad, 'f must be float32 with requires_grad=False'
    try:
        return kernels.upfirdn2d(x, f, _parse_scaling(up), _parse_scaling(down), list(_parse_padding(padding)),
                                 bool(flip_filter), float(gain))
    except Exception as error:  # pylint: disable=broad-except
        if not kernels.is_compile_error(error):
            raise
        fused.disable(f'upfirdn2d kernel failed to compile: {kernels.one_line(error)}')
        return None


def _upfirdn2d_native(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 1, down: IntOrPair = 1,
                      padding: Padding = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Pure-PyTorch upfirdn2d; used on every device."""
    assert x.ndim == 4, 'x must be [N, C, H, W]'
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2)), \
        'f must be None or a 1-D/2-D tensor (see setup_filter)'
    assert f is None or (f.dtype == torch.float32 and not f.requires_grad), \
        'f must be float32 with requires_grad=False'
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    if f is None:
        return _resample_without_filter(x, upx, upy, downx, downy, padx0, padx1, pady0, pady1, gain)

    # The gain is applied in float32 before the cast, exactly like a filter prepared by setup_filter().
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    # oneDNN runs depthwise convolutions several times faster in channels_last. Images (<= 4 channels) are
    # converted there and back, which is cheap; feature maps come channels_last from conv2d_resample already,
    # and converting a large NCHW one would cost more than it saves.
    convert = (_prefers_channels_last(x) and x.shape[1] <= 4
               and not x.is_contiguous(memory_format=torch.channels_last))
    if convert:
        x = x.contiguous(memory_format=torch.channels_last)
    if f.ndim == 2:
        x = _fir_pass(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter)
    else:
        x = _fir_pass(x, f[None, :], upx, 1, downx, 1, padx0, padx1, 0, 0, flip_filter)
        x = _fir_pass(x, f[:, None], 1, upy, 1, downy, 0, 0, pady0, pady1, flip_filter)
    if convert:
        x = x.contiguous()
    return x


def _prefers_channels_last(x: torch.Tensor) -> bool:
    """True where channels_last depthwise/regular convolutions are the fast layout (oneDNN float32 on CPU)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.shape[1] > 1
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _polyphase_applies(x: torch.Tensor) -> bool:
    """Few-channel NCHW float32 CPU tensors without autograd: there 2x upsampling is cheaper as shifted adds.

    Depthwise convolutions of 1-4 channel images are slow on CPU in NCHW, and converting such an image to
    channels_last and back costs more than the filtering itself.
    """
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] <= 4
            and x.is_contiguous() and not (torch.is_grad_enabled() and x.requires_grad))


def _separable_taps(f: torch.Tensor, gain: float) -> Optional[Tuple[List[float], List[float]]]:
    """(taps along y, taps along x), gain included, if f is 1-D or an outer product of two 1-D filters; else None."""
    if f.ndim == 1:
        taps = [v * gain ** 0.5 for v in f.tolist()]
        return taps, taps
    if f.numel() > 64:
        return None
    rows = f.tolist()  # a few numbers: plain Python is cheaper than tensor ops here
    fy = [sum(row) for row in rows]
    total = sum(fy)
    if total == 0:
        return None
    fx = [sum(col) / total for col in zip(*rows)]
    tol = 1e-6 * max(abs(v) for row in rows for v in row)
    if any(abs(a * b - v) > tol for a, row in zip(fy, rows) for b, v in zip(fx, row)):
        return None
    return [v * gain for v in fy], fx


def _upsample2x_axis(x: torch.Tensor, taps: List[float], pad0: int, pad1: int, flip_filter: bool,
                     dim: int) -> torch.Tensor:
    """upfirdn along one axis (`dim` 2 or 3) with up=2: each output phase is a short filter over the input.

    Output m = 2q + r sums c[k] * x[q + (r + k - pad0) / 2] over the taps k of matching parity, where c is the
    correlation kernel; inputs outside the image are zero (the input is zero-padded once so that every tap
    reads one slice).
    """
    kernel = taps if flip_filter else taps[::-1]
    size = x.shape[dim]
    out_size = 2 * size + pad0 + pad1 - len(kernel) + 1
    counts = [(out_size - r + 1) // 2 for r in range(2)]  # outputs of phase r
    phase_taps = [[((r + k - pad0) // 2, c) for k, c in enumerate(kernel) if (r + k - pad0) % 2 == 0 and c != 0]
                  for r in range(2)]
    offsets = [offset for pt in phase_taps for offset, _ in pt] or [0]
    lo = max(0, -min(offsets))
    hi = max(0, max(counts) - 1 + max(offsets) - (size - 1))
    if lo or hi:
        x = F.pad(x, [lo, hi] if dim == 3 else [0, 0, lo, hi])
    shape = list(x.shape)
    shape[dim] = out_size
    out = x.new_empty(shape)
    for r in range(2):
        if counts[r] <= 0:
            continue
        phase = out.narrow(dim, r, 2 * counts[r] - 1)[(slice(None),) * dim + (slice(None, None, 2),)]
        if not phase_taps[r]:
            phase.zero_()
        for i, (offset, c) in enumerate(phase_taps[r]):
            src = x.narrow(dim, lo + offset, counts[r])
            if i == 0:
                torch.mul(src, c, out=phase)
            else:
                phase.add_(src, alpha=c)
    return out


def _upsample2x_polyphase(x: torch.Tensor, taps: Tuple[List[float], List[float]], x0: int, x1: int, y0: int,
                          y1: int, flip_filter: bool) -> torch.Tensor:
    """upfirdn2d with up=2, down=1 and a separable filter, as shifted multiply-adds along x, then along y.

    x goes first: its phases are strided along the innermost axis, which is slow to write, so that pass runs on
    the smaller (not yet y-upsampled) image; the y pass then writes whole rows.
    """
    taps_y, taps_x = taps
    x = _upsample2x_axis(x, taps_x, x0, x1, flip_filter, dim=3)
    return _upsample2x_axis(x, taps_y, y0, y1, flip_filter, dim=2)


def _pad_or_crop(x: torch.Tensor, x0: int, x1: int, y0: int, y1: int) -> torch.Tensor:
    """Zero-pad by positive amounts, crop by negative ones."""
    if x0 > 0 or x1 > 0 or y0 > 0 or y1 > 0:
        x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    if x0 < 0 or x1 < 0 or y0 < 0 or y1 < 0:
        x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    return x


def _fir_pass(x: torch.Tensor, f: torch.Tensor, upx: int, upy: int, downx: int, downy: int,
              x0: int, x1: int, y0: int, y1: int, flip_filter: bool) -> torch.Tensor:
    """upfirdn2d with a 2-D filter [fh, fw] already scaled and cast to x.dtype, as depthwise (transposed) convs."""
    C = x.shape[1]
    fh, fw = f.shape
    if upx > 1 or upy > 1:
        # Zero insertion + convolution == transposed convolution with stride `up`, whose kernel is the true-
        # convolution kernel itself. Its output starts fw-1 pixels before the padded image and ends fw-up past
        # it; the difference becomes padding (or cropping, free inside the transposed conv when symmetric).
        kernel = f.flip([0, 1]) if flip_filter else f
        x0, x1, y0, y1 = x0 - (fw - 1), x1 - (fw - upx), y0 - (fh - 1), y1 - (fh - upy)
        crop_x = max(min(-x0, -x1), 0)
        crop_y = max(min(-y0, -y1), 0)
        x = conv2d_gradfix.conv_transpose2d(x, kernel[None, None].expand(C, 1, fh, fw), stride=(upy, upx),
                                            padding=(crop_y, crop_x), groups=C)
        x = _pad_or_crop(x, x0 + crop_x, x1 + crop_x, y0 + crop_y, y1 + crop_y)
        if downx > 1 or downy > 1:
            x = x[:, :, ::downy, ::downx]
        return x

    # Correlation kernel; a strided convolution computes only the pixels that downsampling keeps.
    kernel = f if flip_filter else f.flip([0, 1])
    if x0 == x1 and y0 == y1 and x0 >= 0 and y0 >= 0:
        conv_padding = (y0, x0)
    else:
        x = _pad_or_crop(x, x0, x1, y0, y1)
        conv_padding = (0, 0)
    return conv2d_gradfix.conv2d(x, kernel[None, None].expand(C, 1, fh, fw), stride=(downy, downx),
                                 padding=conv_padding, groups=C)


def _resample_without_filter(x: torch.Tensor, upx: int, upy: int, downx: int, downy: int,
                             x0: int, x1: int, y0: int, y1: int, gain: float) -> torch.Tensor:
    """upfirdn2d with f=None: zero insertion, pad/crop, subsample and gain, without any convolution."""
    fresh = False  # whether x is already a new tensor rather than (a view of) the caller's
    if upx > 1 or upy > 1:
        N, C, H, W = x.shape
        stuffed = x.new_zeros([N, C, H * upy, W * upx])
        stuffed[:, :, ::upy, ::upx] = x
        x, fresh = stuffed, True
    if x0 > 0 or x1 > 0 or y0 > 0 or y1 > 0:
        fresh = True
    x = _pad_or_crop(x, x0, x1, y0, y1)
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    if gain != 1:
        return x * gain
    if not fresh:
        x = x.clone()  # never hand back a view of the caller's tensor
    return x


_REF_DESCRIPTION = 'reference path (pure PyTorch depthwise convolutions, no zero insertion)'


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    if device_type == 'cuda':
        return fused.describe('upfirdn2d', device_type, 'torch-native CUDA kernels (no compiled plugin)')
    return fused.describe('upfirdn2d', device_type, _REF_DESCRIPTION)


# ------------------------------------------------------------------------------------------------------------------
# Wrappers.

def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Filter x with f, keeping the image size (plus `padding`)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Upsample by `up` and filter; with the 4-tap filter and up=2 the output is exactly 2H x 2W."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2, pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def upsample2d_separable(x: torch.Tensor, f: Optional[torch.Tensor], padding: Padding = 0, flip_filter: bool = False,
                         gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """upsample2d(x, f, up=2, ...) computed as shifted multiply-adds along each axis (no convolution).

    For images with 1-4 channels in NCHW float32 on the CPU, without autograd, and a separable filter (1-D, or a
    2-D outer product such as setup_filter([1, 3, 3, 1])); equal to upsample2d up to float rounding. Any other
    input is passed on to upsample2d.
    """
    taps = _separable_taps(f, gain * 4) if f is not None and _polyphase_applies(x) else None
    if taps is None:
        return upsample2d(x, f, up=2, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)  # padding as in upsample2d with up=2
    return _upsample2x_polyphase(x, taps, padx0 + (fw + 1) // 2, padx1 + (fw - 2) // 2, pady0 + (fh + 1) // 2,
                                 pady1 + (fh - 2) // 2, flip_filter)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntOrPair = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Filter and downsample by `down`; with the 4-tap filter and down=2 the output is exactly H/2 x W/2."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2, pady0 + (fh - downy + 1) // 2,
         pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
