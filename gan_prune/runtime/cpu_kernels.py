"""The 'cpu-kernels' backend: a generator's float32 CPU inference through hand-written kernels.

The kernels (torch_utils/ops/narrow_conv.cpp, built on first use) vectorise over image columns, so layers with
few output channels (pruned students) keep their vector lanes busy, and each fuses a whole layer: modulation,
demodulation, convolution (or the upsampling transposed convolution with its low-pass filter), noise, bias,
gain, leaky ReLU and clamp. They are registered here as torch ops (namespace ``gan_prune``) with fake kernels, so
``torch.compile`` and ``torch.export`` see them as single ops with known output shapes.

``CpuKernelsGenerator`` runs the same math as the reference model (``training.networks``, one code path per
layer), layer by layer, from the generator's own parameters: kernels where a layer fits them (3x3 layers with up
to ``narrow_conv.MAX_CHANNELS`` output channels, rows of whole vectors; toRGB with the skip image; fully
connected layers at batch <= 16), the reference layer modules otherwise (wide teacher layers, resnet skips).
Results agree with the reference path to float32 rounding (tests/runtime/test_backends.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from gan_prune.errors import GanPruneError

_NO_CLAMP = math.inf
_LRELU_SLOPE = 0.2


def _narrow():
    """torch_utils.ops.narrow_conv with its kernels built, or a one-line error saying why they are missing."""
    from torch_utils.ops import narrow_conv
    if narrow_conv.kernels() is None:
        raise GanPruneError('the cpu-kernels backend needs the compiled CPU kernels, which could not be built here '
                            '(a C++ compiler is required; TORCH_UTILS_CPU_KERNELS=0 disables them); use --backend '
                            'eager or compile')
    return narrow_conv


def _clamp_or_none(clamp: float) -> Optional[float]:
    return None if math.isinf(clamp) else clamp


# ---------------------------------------------------------------------------------------------------------
# Torch ops. Every op owns its output (no aliasing of inputs), as torch.library requires.


@torch.library.custom_op('gan_prune::modulated_lrelu', mutates_args=())
def modulated_lrelu(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                    noise: Optional[torch.Tensor], noise_strength: float, gain: float, alpha: float, clamp: float,
                    up: int, resample_filter: Optional[torch.Tensor]) -> torch.Tensor:
    """A modulated 3x3 synthesis layer with its epilogue (see narrow_conv.modulated_lrelu); clamp inf = none."""
    return _narrow().modulated_lrelu(x, weight, styles, bias, noise, noise_strength, gain, alpha,
                                     _clamp_or_none(clamp), up=up, resample_filter=resample_filter)


@modulated_lrelu.register_fake
def _(x, weight, styles, bias, noise, noise_strength, gain, alpha, clamp, up, resample_filter):
    return x.new_empty([x.shape[0], weight.shape[0], x.shape[2] * up, x.shape[3] * up])


@torch.library.custom_op('gan_prune::rgb_skip', mutates_args=())
def rgb_skip(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, weight_gain: float, bias: torch.Tensor,
             clamp: float, img: Optional[torch.Tensor], resample_filter: Optional[torch.Tensor]) -> torch.Tensor:
    """A block's output image: clamp(toRGB(x)) + upsample2d(img) (see narrow_conv.rgb_skip)."""
    out = _narrow().rgb_skip(x, weight, styles, weight_gain, bias, _clamp_or_none(clamp), img, resample_filter)
    if out is None:  # a filter the kernel does not take: the same sum in steps
        out = _rgb_in_steps(x, weight, styles, weight_gain, bias, clamp, img, resample_filter)
    return out


@rgb_skip.register_fake
def _(x, weight, styles, weight_gain, bias, clamp, img, resample_filter):
    return x.new_empty([x.shape[0], weight.shape[0], x.shape[2], x.shape[3]])


@torch.library.custom_op('gan_prune::small_batch_linear', mutates_args=())
def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], weight_gain: float,
                       bias_gain: float, activation: str, act_gain: float) -> torch.Tensor:
    """act(x @ (weight * weight_gain).T + bias * bias_gain) * act_gain for 1-16 rows (narrow_conv)."""
    return _narrow().small_batch_linear(x, weight, bias, weight_gain, bias_gain, activation, act_gain)


@small_batch_linear.register_fake
def _(x, weight, bias, weight_gain, bias_gain, activation, act_gain):
    return x.new_empty([x.shape[0], weight.shape[0]])


def _rgb_in_steps(x, weight, styles, weight_gain, bias, clamp, img, resample_filter) -> torch.Tensor:
    """rgb_skip without the fused kernel: 1x1 modulated convolution, bias, clamp, plus the upsampled image."""
    from torch_utils.ops import upfirdn2d
    n, c, h, w = x.shape
    per_sample = weight[:, :, 0, 0].unsqueeze(0) * (styles * weight_gain).unsqueeze(1)  # [N, K, C]
    rgb = torch.bmm(per_sample, x.reshape(n, c, h * w)).reshape(n, -1, h, w) + bias.reshape(1, -1, 1, 1)
    if not math.isinf(clamp):
        rgb = rgb.clamp(-clamp, clamp)
    return rgb if img is None else upfirdn2d.upsample2d(img, resample_filter) + rgb


# ---------------------------------------------------------------------------------------------------------
# The generator.


class CpuKernelsGenerator(torch.nn.Module):
    """G(z, c, truncation_psi, truncation_cutoff, noise_mode) in float32 on the CPU, through the kernel ops.

    Wraps (does not copy) a loaded generator: a standard ``Generator`` or a ``SlimGenerator``, any architecture,
    conditional or not. fp16 blocks run in float32.
    """

    def __init__(self, G: torch.nn.Module) -> None:
        super().__init__()
        self.narrow = _narrow()
        self.G = G.eval().requires_grad_(False)
        self.z_dim, self.c_dim, self.img_resolution = int(G.z_dim), int(G.c_dim), int(G.img_resolution)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, noise_mode: str = 'const') -> torch.Tensor:
        if noise_mode not in ('const', 'random', 'none'):
            raise GanPruneError(f"noise mode {noise_mode!r}: use 'const', 'random' or 'none'")
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode)

    # -- mapping -------------------------------------------------------------------------------------------

    def _linear(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        from torch_utils.ops import bias_act
        if self.narrow.linear_applies(x, layer.weight, layer.activation):
            return small_batch_linear(x, layer.weight, layer.bias, float(layer.weight_gain), float(layer.bias_gain),
                                      layer.activation, float(bias_act.activation_funcs[layer.activation].def_gain))
        return layer(x)

    def mapping(self, z: torch.Tensor, c: Optional[torch.Tensor], truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim]: MappingNetwork.forward in eval mode."""
        from training.networks import normalize_2nd_moment
        mapping = self.G.mapping
        x = None
        if mapping.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32))
        if mapping.c_dim > 0:
            if c is None:
                raise GanPruneError(f'this generator is conditional: pass a label c of {mapping.c_dim} values')
            y = normalize_2nd_moment(self._linear(mapping.embed, c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        if x is None:
            raise GanPruneError('this generator has neither a latent z nor a label c (z_dim = c_dim = 0)')
        for idx in range(mapping.num_layers):
            x = self._linear(getattr(mapping, f'fc{idx}'), x)
        x = x.unsqueeze(1).repeat([1, mapping.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = mapping.w_avg.lerp(x, float(truncation_psi))
            else:
                x[:, :truncation_cutoff] = mapping.w_avg.lerp(x[:, :truncation_cutoff], float(truncation_psi))
        return x

    # -- synthesis -----------------------------------------------------------------------------------------

    def synthesis(self, ws: torch.Tensor, noise_mode: str = 'const') -> torch.Tensor:
        """The image [N, C, H, W] for ws: SynthesisNetwork.forward (or the slim one) in float32."""
        synthesis = self.G.synthesis
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in synthesis.block_resolutions:
            block = getattr(synthesis, f'b{res}')
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb).unbind(dim=1)
            w_idx += block.num_conv
            x, img = self._block(block, x, img, block_ws, noise_mode)
        assert img is not None  # every synthesis network has at least one block
        return img

    def _block(self, block, x, img, ws, noise_mode):
        w_iter = iter(ws)
        sqrt_half = math.sqrt(0.5)
        if block.in_channels == 0:
            x = block.const.to(torch.float32).unsqueeze(0).repeat([ws[0].shape[0], 1, 1, 1])
            x = self._layer(block.conv1, x, next(w_iter), noise_mode, 1.0)
        elif block.architecture == 'resnet':
            y = block.skip(x.to(torch.float32), gain=sqrt_half)
            x = self._layer(block.conv0, x, next(w_iter), noise_mode, 1.0)
            x = y.add_(self._layer(block.conv1, x, next(w_iter), noise_mode, sqrt_half))
        else:
            x = self._layer(block.conv0, x, next(w_iter), noise_mode, 1.0)
            x = self._layer(block.conv1, x, next(w_iter), noise_mode, 1.0)
        if block.is_last or block.architecture == 'skip':
            img = self._to_rgb(block, x, next(w_iter), img)
        elif img is not None:
            from torch_utils.ops import upfirdn2d
            img = upfirdn2d.upsample2d(img, block.resample_filter)
        return x, img

    def _noise(self, layer, x: torch.Tensor, noise_mode: str) -> Optional[torch.Tensor]:
        """The layer's noise at its output resolution ([H, W] or [N, H, W]), before noise_strength."""
        if not layer.use_noise or noise_mode == 'none':
            return None
        if noise_mode == 'const':
            return layer.noise_const.to(torch.float32)
        return torch.randn([x.shape[0], layer.resolution, layer.resolution], device=x.device)

    def _layer(self, layer, x: torch.Tensor, w: torch.Tensor, noise_mode: str, gain: float) -> torch.Tensor:
        x = x.to(torch.float32)
        if not (layer.activation == 'lrelu' and self.narrow.applies(x, layer.weight, layer.up, layer.resample_filter)):
            return layer(x, w, noise_mode=noise_mode, fused_modconv=False, gain=gain).to(torch.float32)
        styles = self._linear(layer.affine, w)
        noise = self._noise(layer, x, noise_mode)
        strength = float(layer.noise_strength) if noise is not None else 0.0
        clamp = float(layer.conv_clamp) * gain if layer.conv_clamp is not None else _NO_CLAMP
        return modulated_lrelu(x, layer.weight.to(torch.float32), styles, layer.bias.to(torch.float32), noise,
                               strength, float(layer.act_gain) * gain, _LRELU_SLOPE, clamp, layer.up,
                               layer.resample_filter if layer.up != 1 else None)

    def _to_rgb(self, block, x: torch.Tensor, w: torch.Tensor, img: Optional[torch.Tensor]) -> torch.Tensor:
        torgb = block.torgb
        if torgb.weight.shape[2:] == (1, 1) and self.narrow.rgb_applies(x, torgb.weight, img, block.resample_filter):
            clamp = float(torgb.conv_clamp) if torgb.conv_clamp is not None else _NO_CLAMP
            return rgb_skip(x, torgb.weight.to(torch.float32), self._linear(torgb.affine, w),
                            float(torgb.weight_gain), torgb.bias.to(torch.float32), clamp, img,
                            block.resample_filter if img is not None else None)
        from torch_utils.ops import upfirdn2d
        y = torgb(x, w, fused_modconv=False).to(torch.float32)
        return y if img is None else upfirdn2d.upsample2d(img, block.resample_filter).add_(y)
