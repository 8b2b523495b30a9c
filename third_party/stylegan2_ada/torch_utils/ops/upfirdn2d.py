"""Upsample, FIR-filter and downsample 2-D images (upfirdn2d), plus setup_filter, filter2d, upsample2d, downsample2d.

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

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import conv2d_gradfix
from . import report_implementation

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
    if impl == 'cuda' and x.device.type == 'cuda':
        report_implementation('upfirdn2d', x.device.type, describe(x.device.type))
    else:
        report_implementation('upfirdn2d', x.device.type, _REF_DESCRIPTION)
    return _upfirdn2d_native(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


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
        return 'torch-native CUDA kernels (no compiled plugin)'
    return _REF_DESCRIPTION


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


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntOrPair = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Filter and downsample by `down`; with the 4-tap filter and down=2 the output is exactly H/2 x W/2."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2, pady0 + (fh - downy + 1) // 2,
         pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
