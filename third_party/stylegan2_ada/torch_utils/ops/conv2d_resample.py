"""2-D convolution with optional FIR up/downsampling, computed through the cheapest equivalent primitives.

Definition (what the result equals, up to float rounding): with total padding p = user padding, plus
[(fw+up-1)//2, (fw-up)//2] per axis if up > 1, plus [(fw-down+1)//2, (fw-down)//2] per axis if down > 1:
    y = upfirdn2d(x, f, up=up, padding=p, gain=up**2)      (skipped when up == 1, except for the padding)
    y = conv2d(y, w)                                        (valid mode; a true convolution if not flip_weight)
    y = upfirdn2d(y, f, down=down)                          (only when down > 1)
The FIR filter and the convolution commute, which lets upsampling run as a strided transposed convolution
and downsampling as a strided convolution, so no zero-stuffed or discarded pixels are ever convolved.

Memory format: on CPU, float32 inputs with groups=1 are computed in channels_last (oneDNN's fast layout) and
the result is returned channels_last, when no gradient is needed (inference); with autograd the input's
layout is kept. Values do not depend on the layout; callers that need a contiguous
NCHW tensor call .contiguous().
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import conv2d_gradfix, replacement
from . import upfirdn2d
from .upfirdn2d import _get_filter_size, _parse_padding, _prefers_channels_last


def _conv(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1, transpose: bool = False,
          flip_weight: bool = True) -> torch.Tensor:
    """conv2d (correlation) or conv_transpose2d; flip_weight=False turns it into a true convolution."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1, down: int = 1,
                    padding=0, groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> torch.Tensor:
    """Convolve x [N, I, H, W] with w [O, I/groups, kh, kw], upsampling/downsampling through FIR filter f.

    f: setup_filter() result (float32) or None. up, down, groups: ints >= 1. padding: int, [x, y] or
    [x0, x1, y0, y1], measured on the upsampled image. flip_weight=True: correlation, like
    torch.nn.functional.conv2d; False: true convolution. flip_filter: as in upfirdn2d.
    """
    replaced = replacement('conv2d_resample')
    if replaced is not None:
        return replaced(x, w, f=f, up=up, down=down, padding=padding, groups=groups, flip_weight=flip_weight,
                        flip_filter=flip_filter)
    assert isinstance(x, torch.Tensor) and x.ndim == 4, 'x must be [N, C, H, W]'
    assert isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype, 'w must be 4-D with the dtype of x'
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32), \
        'f must be None or a float32 filter from setup_filter()'
    assert isinstance(up, (int, np.integer)) and up >= 1, 'up must be an int >= 1'
    assert isinstance(down, (int, np.integer)) and down >= 1, 'down must be an int >= 1'
    assert isinstance(groups, (int, np.integer)) and groups >= 1, 'groups must be an int >= 1'
    up, down, groups = int(up), int(down), int(groups)
    out_channels, in_channels_per_group, kh, kw = w.shape
    fw, fh = _get_filter_size(f)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if (groups == 1 and not needs_grad and _prefers_channels_last(x)
            and not x.is_contiguous(memory_format=torch.channels_last)):
        # oneDNN's float32 CPU convolutions (dense, transposed and the depthwise FIR) are much faster in
        # channels_last; results then stay channels_last, so a chain of layers converts only once. Not when
        # training: there the broadcast reductions of the backward pass got slower than the convs got faster.
        x = x.contiguous(memory_format=torch.channels_last)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Padding of the definition, all applied on the input side.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling only: filter and subsample first, then the (cheaper) 1x1 conv.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: 1x1 conv first, on the small image.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided conv computes just the kept pixels.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (optionally followed by downsampling): a transposed conv with stride `up` equals zero insertion
    # followed by a full convolution; its output is then the conv of the padded stuffed image, shifted by
    # (k - 1 - p0) on the left and (k - up - p1) on the right. That remainder goes to the FIR step as padding.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        # Cropping both sides equally is free inside the transposed conv.
        crop_x = max(min(-px0, -px1), 0)
        crop_y = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[crop_y, crop_x], groups=groups, transpose=True,
                  flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y],
                                gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: symmetric non-negative padding goes straight into the conv.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (asymmetric or negative padding): pad/crop explicitly, then a valid conv.
    x = upfirdn2d.upfirdn2d(x, (f if up > 1 else None), up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                            flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation()."""
    if device_type == 'cpu':
        return 'strided/transposed torch convolutions + upfirdn2d; channels_last (oneDNN) for float32 inference'
    return 'strided/transposed torch convolutions + upfirdn2d'
