"""Compiled CPU kernels for float32 inference of synthesis networks, above all narrow (pruned) ones.

training.networks never calls them (it is the reference model, one code path per layer): the 'cpu-kernels'
inference backend of gan_prune (gan_prune/runtime/cpu_kernels.py) registers them as torch ops and runs a
generator through them. This module builds the kernels and holds their Python signatures.

oneDNN vectorises convolutions over channels: with few output channels many vector lanes idle, and bias,
noise, leaky ReLU and clamp each cost a further pass over the activations. narrow_conv.cpp vectorises over
image columns instead (planar NCHW; 16, 8 or 4 lanes, so that 4-16 px rows fill their vectors), keeps a tile
of up to 16 output channels in registers, computes every tile of an image row while its input rows are in
cache, and finishes the epilogue before the first store. It forms the modulated, demodulated weights itself,
so a layer is one call without per-layer tensor operations. The upsampling layer (transposed 3x3 convolution
with stride 2, then the 4x4 low-pass filter, separably when the filter allows) is a single pass whose
intermediate rows never leave the cache. Two further kernels serve every generator:
- modulated_lrelu_rgb / rgb_skip: a block's output image (toRGB plus the upsampled skip image), computed from
  the rows of the block's last layer right after they were produced;
- small_batch_linear: fully connected layers at inference batch sizes (mapping network, affines), which a
  GEMM library would first pack; small_batch_linears runs several such layers in one call.

Measured layer by layer against the reference layer (`python tools/bench_narrow.py`, table in
docs/benchmarks.md): the kernels win clearly on narrow layers and about break even at 256 output channels, so
the backend uses them for layers with up to MAX_CHANNELS output channels, teacher and students alike.

The kernels are built with the host compiler on first use (about 40 s, once: the library is cached on disk,
see torch_utils.custom_ops). Without a compiler, with TORCH_UTILS_CPU_KERNELS=0 in the environment, or if
the build fails, kernels() returns None (and the cpu-kernels backend refuses in one line). The kernels agree
with the PyTorch definitions to float32 rounding (tests/third_party/test_narrow_conv.py).
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
MAX_CHANNELS = 256
# The block-output kernel (toRGB plus the upsampled skip image) keeps this many image channels in registers.
MAX_IMAGE_CHANNELS = 4

_PLUGIN_NAME = 'narrow_conv_plugin'
_EMPTY = torch.empty([0])
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
    """Within the block, applies() and the other checks answer False unless `flag` (switches the kernels off)."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    try:
        yield
    finally:
        _enabled = previous


def _bound(clamp: Optional[float]) -> float:
    """A clamp as the kernels take it: infinity for none."""
    return float('inf') if clamp is None else float(clamp)


def _skip_args(img: Optional[torch.Tensor], resample_filter: Optional[torch.Tensor]) -> tuple:
    """(skip image, filter) as the block-output kernels take them: empty tensors without an image."""
    if img is None:
        return _EMPTY, _EMPTY
    return img.contiguous(), resample_filter.contiguous()


def applies(x: torch.Tensor, weight: torch.Tensor, up: int, resample_filter: Optional[torch.Tensor]) -> bool:
    """Whether a modulated 3x3 layer (up = 1 or 2) with this input can run through the kernels."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and layer_applies(weight, up, resample_filter, x.shape[3]))


def layer_applies(weight: torch.Tensor, up: int, resample_filter: Optional[torch.Tensor], width: int) -> bool:
    """applies() for a float32 CPU input `width` columns wide, before that input exists."""
    out_channels, _, kh, kw = weight.shape
    if (not _enabled or weight.device.type != 'cpu' or weight.dtype != torch.float32 or (kh, kw) != (3, 3)
            or up not in (1, 2) or out_channels > MAX_CHANNELS):
        return False
    if up == 2 and (resample_filter is None or tuple(resample_filter.shape) != (4, 4)
                    or resample_filter.dtype != torch.float32):
        return False
    # Rows of whole 4, 8 or 16-float vectors (the 4-16 px layers use the shorter vectors).
    return width % 4 == 0 and kernels() is not None


def modulated_lrelu(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                    noise: Optional[torch.Tensor], noise_strength: float, gain: float, alpha: float,
                    clamp: Optional[float], up: int = 1,
                    resample_filter: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A modulated 3x3 synthesis layer with its epilogue, NCHW float32 result.

    x: [N, I, H, W]; weight: [O, I, 3, 3]; styles: [N, I]. The kernels form the per-sample weights
    w[n, o, i] = weight[o, i] * styles[n, i] * d[n, o] * gain with the demodulation d[n, o] =
    1 / sqrt(sum_i,k (weight[o, i, k] * styles[n, i])^2 + 1e-8), and return
    clamp(lrelu(conv(x[n], w[n]) + gain * (bias + noise_strength * noise), alpha), -clamp, clamp).
    bias: [O]; noise: None, [H', W'] or [N, H', W'] at the output resolution. up = 1: correlation with zero
    padding 1 (conv2d, padding=1). up = 2: what conv2d_resample(x, w[n], resample_filter, up=2, padding=1,
    flip_weight=False) computes (transposed convolution, then the 4x4 filter with gain 4). All tensors float32;
    call applies() first.
    """
    # Called once per layer and image: no conversions beyond what the kernels need (they check the rest).
    plugin = kernels()
    args = (x.contiguous(), weight.contiguous(), styles.contiguous())
    noise = _EMPTY if noise is None else noise.contiguous()
    epilogue = (float(noise_strength), float(gain), float(alpha), _bound(clamp))
    if up == 1:
        return plugin.conv3x3_lrelu(*args, bias.contiguous(), noise, *epilogue)
    return plugin.up3x3_fir_lrelu(*args, resample_filter.contiguous(), bias.contiguous(), noise, *epilogue)


def rgb_applies(x: torch.Tensor, weight: torch.Tensor, img: Optional[torch.Tensor],
                resample_filter: Optional[torch.Tensor], channels: Optional[int] = None) -> bool:
    """Whether a toRGB layer (weight [K, C, 1, 1]) and the block's incoming image can run through rgb_skip().

    x: the input of toRGB, or with `channels` given, a tensor of its batch size and resolution (the input of
    the convolution that produces it, for modulated_lrelu_rgb()).
    """
    if x.device.type != 'cpu' or x.dtype != torch.float32 or x.ndim != 4:
        return False
    n, c, h, w = x.shape
    return rgb_layer_applies(weight, c if channels is None else channels, (n, h, w), img, resample_filter)


def rgb_layer_applies(weight: torch.Tensor, channels: int, size: tuple, img: Optional[torch.Tensor],
                      resample_filter: Optional[torch.Tensor]) -> bool:
    """rgb_applies() for a float32 CPU input with `channels` channels and size (batch, height, width)."""
    if not _enabled or weight.ndim != 4 or tuple(weight.shape[1:]) != (channels, 1, 1):
        return False
    if weight.shape[0] > MAX_IMAGE_CHANNELS:
        return False
    n, h, w = size
    if img is not None:
        if (img.device.type != 'cpu' or img.dtype != torch.float32
                or tuple(img.shape) != (n, weight.shape[0], h // 2, w // 2) or h % 2 or w % 2
                or resample_filter is None or tuple(resample_filter.shape) != (4, 4)):
            return False
    return kernels() is not None


def rgb_skip(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, weight_gain: float, bias: torch.Tensor,
             clamp: Optional[float], img: Optional[torch.Tensor],
             resample_filter: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """clamp(conv1x1(x[n], w[n]) + bias) + upsample2d(img, resample_filter): a block's output image.

    x: [N, C, H, W]; weight: [K, C, 1, 1]; styles: [N, C]; the toRGB weights of sample n are
    w[n, k, c] = weight[k, c] * styles[n, c] * weight_gain. bias: [K]; img: None or [N, K, H/2, W/2].
    One pass: each output row is the 1x1 convolution of x's row plus two filtered rows of img, so neither the
    toRGB output nor the upsampled image is written out and read back. None when the filter is not separable.
    All tensors float32; call rgb_applies() first.
    """
    out = kernels().rgb_skip(x.contiguous(), weight.contiguous(), styles.contiguous(), float(weight_gain),
                             bias.contiguous(), _bound(clamp), *_skip_args(img, resample_filter))
    return out if out.numel() else None


def modulated_lrelu_rgb(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                        noise: Optional[torch.Tensor], noise_strength: float, gain: float, alpha: float,
                        clamp: Optional[float], rgb_weight: torch.Tensor, rgb_styles: torch.Tensor,
                        rgb_weight_gain: float, rgb_bias: torch.Tensor, rgb_clamp: Optional[float],
                        img: Optional[torch.Tensor],
                        resample_filter: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(y, image): modulated_lrelu(x, ...) with up = 1, then rgb_skip(y, rgb_weight, ...), in one pass.

    The block's output image is computed from each block of rows of y right after the convolution produced
    them, while they are still in cache, instead of reading y back from memory. None when the filter is not
    separable. Call applies() and rgb_applies(x, rgb_weight, img, resample_filter, channels=weight.shape[0]).
    """
    noise = _EMPTY if noise is None else noise.contiguous()
    out = kernels().conv3x3_lrelu_rgb(
        x.contiguous(), weight.contiguous(), styles.contiguous(), bias.contiguous(), noise, float(noise_strength),
        float(gain), float(alpha), _bound(clamp), rgb_weight.contiguous(), rgb_styles.contiguous(),
        float(rgb_weight_gain), rgb_bias.contiguous(), _bound(rgb_clamp), *_skip_args(img, resample_filter))
    return (out[0], out[1]) if out else None


# Fully connected layers with at most this many rows (the batch) use small_batch_linear().
MAX_LINEAR_ROWS = 16
# Activations small_batch_linear() applies itself: name -> leaky slope for negative inputs.
_LINEAR_ACTIVATIONS = {'linear': 1.0, 'relu': 0.0, 'lrelu': 0.2}


def linear_applies(x: torch.Tensor, weight: torch.Tensor, activation: str) -> bool:
    """Whether a fully connected layer with this input, weight and activation can use small_batch_linear()."""
    return (_enabled and x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.ndim == 2 and 1 <= x.shape[0] <= MAX_LINEAR_ROWS and activation in _LINEAR_ACTIVATIONS
            and kernels() is not None)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], weight_gain: float,
                       bias_gain: float, activation: str, act_gain: float) -> torch.Tensor:
    """act(x @ (weight * weight_gain).T + bias * bias_gain) * act_gain for a few rows of x: [M, O] float32.

    activation: 'linear', 'relu' or 'lrelu' (slope 0.2). Reads the weight once, row by row, without the
    packing step of a GEMM library (which at 1-16 rows costs more than the product). Call linear_applies() first.
    """
    return kernels().small_batch_linear(x.contiguous(), weight.contiguous(), _linear_bias(bias), float(weight_gain),
                                        float(bias_gain), _LINEAR_ACTIVATIONS[activation], float(act_gain))


def _linear_bias(bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A linear layer's bias as the kernels take it: float32 and contiguous, empty for none."""
    return _EMPTY if bias is None else bias.to(torch.float32).contiguous()


def small_batch_linears(xs: list, layers: list, chain: bool = False) -> list:
    """small_batch_linear() for several layers in one call: their outputs, [M, O_i] float32 each.

    layers: (weight, bias or None, weight_gain, bias_gain, activation, act_gain) per layer. xs: each layer's
    input, or with chain only the first layer's (each further layer takes the previous one's output, as in
    the mapping network). Call linear_applies() for every layer and input first.
    """
    weights, biases, weight_gains, bias_gains, alphas, act_gains = [], [], [], [], [], []
    for weight, bias, weight_gain, bias_gain, activation, act_gain in layers:
        weights.append(weight.contiguous())
        biases.append(_linear_bias(bias))
        weight_gains.append(float(weight_gain))
        bias_gains.append(float(bias_gain))
        alphas.append(_LINEAR_ACTIVATIONS[activation])
        act_gains.append(float(act_gain))
    return kernels().small_batch_linears(list(xs), weights, biases, weight_gains, bias_gains, alphas, act_gains,
                                         bool(chain))


def describe(device_type: str) -> str:
    """One line for torch_utils.ops.describe_implementation() (does not trigger the build)."""
    if device_type != 'cpu':
        return 'not used (CPU float32 inference only)'
    if _failed:
        return 'unavailable here; all layers use oneDNN convolutions'
    state = 'built' if _plugin is not None else 'built on first use'
    return f'compiled kernels for float32 inference of layers with <= {MAX_CHANNELS} output channels ({state})'
