"""Compiled CPU kernels for the modulated 3x3 layers of the synthesis network in float32 inference.

oneDNN vectorises convolutions over channels: with few output channels many vector lanes idle, and bias,
noise, leaky ReLU and clamp each cost a further pass over the activations. narrow_conv.cpp vectorises over
image columns instead (planar NCHW), keeps a tile of up to 16 output channels in registers, computes every
tile of an image row while its input rows are in cache, and finishes the epilogue before the first store.
The upsampling layer (transposed 3x3 convolution with stride 2, then the 4x4 low-pass filter) is a single
pass whose intermediate rows never leave the cache.

Measured layer by layer against the oneDNN path (`python tools/bench_narrow.py`, table in docs/benchmarks.md;
whole layers with their epilogues, batch 4, one thread, 2-core AMD EPYC): with 13-128 output channels the
kernels take 0.35-0.95 of oneDNN's time (both 3x3 and upsampling layers); from 154 channels on the two are
even or oneDNN is faster (512 channels: 1.5-2x). So layers with up to MAX_CHANNELS output channels use the kernels,
wider ones oneDNN, and the teacher takes the same rule as the pruned students.

The kernels are built with the host compiler on first use (about 40 s, once: the library is cached on disk,
see torch_utils.custom_ops). Without a compiler, with TORCH_UTILS_CPU_KERNELS=0 in the environment, or if
the build fails, kernels() returns None and the layers keep the pure-PyTorch paths; both agree to float32
rounding (tests/third_party/test_narrow_conv.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator, Optional

import torch

from .. import custom_ops

logger = logging.getLogger('torch_utils.ops')

# Layers with at most this many output channels use the kernels (the measured crossover, see above).
MAX_CHANNELS = 128

_PLUGIN_NAME = 'narrow_conv_plugin'
_plugin = None
_failed = False
_lock = threading.Lock()
_enabled = True


def _build_args() -> tuple[list, dict]:
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'narrow_conv.cpp')
    cflags, ldflags = ['-O3', '-ffp-contract=fast'], []
    if os.name != 'nt':
        cflags.append('-march=native')  # what makes the vector code fast (AVX2 / AVX-512 on x86)
    if sys.platform.startswith('linux'):
        # at::parallel_for is OpenMP inside the header: without -fopenmp the kernels run on one thread.
        # PyTorch's wheels already load libgomp.so.1, which the extension then shares.
        cflags.append('-fopenmp')
        ldflags.append('-fopenmp')
    return [source], dict(extra_cflags=cflags, extra_ldflags=ldflags)


def kernels():
    """The compiled module, building it on first use; None when unavailable (the reason is logged once)."""
    global _plugin, _failed
    if _plugin is not None or _failed:
        return _plugin
    with _lock:
        if _plugin is not None or _failed:
            return _plugin
        if os.environ.get('TORCH_UTILS_CPU_KERNELS', '1') == '0':
            _failed = True
            logger.info('narrow_conv: disabled by TORCH_UTILS_CPU_KERNELS=0')
            return None
        sources, build_kwargs = _build_args()
        if not custom_ops.is_built(_PLUGIN_NAME, sources, **build_kwargs):
            logger.warning('Compiling the CPU kernels for narrow layers (once, about a minute; set '
                           'TORCH_UTILS_CPU_KERNELS=0 to skip)')
        previous = custom_ops.verbosity
        custom_ops.verbosity = 'none'  # the line above (or nothing, when cached) replaces the build chatter
        try:
            _plugin = custom_ops.get_plugin(_PLUGIN_NAME, sources=sources, **build_kwargs)
        except custom_ops.PluginUnavailableError as error:
            _failed = True
            logger.warning('%s; narrow layers use the PyTorch path', error)
        finally:
            custom_ops.verbosity = previous
    return _plugin


def vector_width() -> int:
    """Floats per vector in the built kernels (16 with AVX-512, else 8); 0 when unavailable."""
    plugin = kernels()
    return int(plugin.vector_width()) if plugin is not None else 0


def clear_cache() -> None:
    """Free the released output buffers the kernels keep for reuse (up to 256 MiB)."""
    if _plugin is not None:
        _plugin.clear_cache()


@contextlib.contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """Within the block, layers use the kernels only if `flag` (benchmarks compare both paths this way)."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    try:
        yield
    finally:
        _enabled = previous


def applies(x: torch.Tensor, weight: torch.Tensor, up: int, resample_filter: Optional[torch.Tensor]) -> bool:
    """Whether a modulated 3x3 layer (up = 1 or 2) with this input can run through the kernels."""
    out_channels, _, kh, kw = weight.shape
    if (not _enabled or x.device.type != 'cpu' or x.dtype != torch.float32 or weight.dtype != torch.float32 or (kh, kw) != (3, 3)
            or up not in (1, 2) or out_channels > MAX_CHANNELS):
        return False
    if up == 2:
        f = resample_filter
        if f is None or f.ndim != 2 or tuple(f.shape) != (4, 4) or not torch.equal(f, f.flip([0, 1])):
            return False
    width = vector_width()
    return width > 0 and x.shape[3] % width == 0


def modulated_lrelu(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, noise: Optional[torch.Tensor],
                    alpha: float, clamp: Optional[float], up: int = 1,
                    resample_filter: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(conv(x[n], weights[n]) + bias + noise) for every sample n, NCHW float32 result.

    x: [N, I, H, W]; weights: [N, O, I, 3, 3] per-sample weights (modulation, demodulation and activation gain
    folded in); bias: [O]; noise: None, [H', W'] or [N, H', W'] at the output resolution; act(v) =
    clamp(lrelu(v, alpha), -clamp, clamp). up = 1: correlation with zero padding 1 (conv2d, padding=1).
    up = 2: what conv2d_resample(x, weights[n], resample_filter, up=2, padding=1, flip_weight=False) computes
    (transposed convolution, then the filter with gain 4). Call applies() first.
    """
    plugin = kernels()
    packed = weights.permute(0, 2, 3, 4, 1).contiguous()  # [N, I, 3, 3, O]: a tile's weights side by side
    noise = torch.empty([0]) if noise is None else noise.to(torch.float32).contiguous()
    clamp = float('inf') if clamp is None else float(clamp)
    x = x.contiguous()
    bias = bias.to(torch.float32).contiguous()
    if up == 1:
        return plugin.conv3x3_lrelu(x, packed, bias, noise, float(alpha), clamp)
    taps = (resample_filter.to(torch.float32) * (up ** 2)).contiguous()
    return plugin.up3x3_fir_lrelu(x, packed, taps, bias, noise, float(alpha), clamp)


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation() (does not trigger the build)."""
    if device_type != 'cpu':
        return 'not used (CPU float32 inference only)'
    if _failed:
        return 'unavailable here; all layers use oneDNN convolutions'
    state = 'built' if _plugin is not None else 'built on first use'
    return f'compiled kernels for float32 inference of layers with <= {MAX_CHANNELS} output channels ({state})'
