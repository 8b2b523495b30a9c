"""A channel-pruned StyleGAN2-ADA generator whose constructor takes the channel count of every feature map.

This module's text is embedded in network pickles and executed by whatever environment loads them (ours or the
original stylegan2-ada-pytorch), so at module level it imports only numpy, torch, torch_utils and dnnlib. The
layers are the standard classes of `training.networks` (imported inside __init__: unpickling never calls
__init__), so parameter names, buffers (`*.noise_const`), `mapping.w_avg` and the G(z, c, ...) call are those of a
standard Generator and every tool that reads a standard G reads this one.

Feature maps (keys of `channels`, plain ints so init_kwargs stay plain data):
- 'b4.const': the learned 4x4 constant, the input of b4.conv1;
- 'b{r}.mid' for r >= 8: the output of b{r}.conv0, the input of b{r}.conv1;
- 'b{r}.out': a block's output (input of the next block's conv0 and skip, and of this block's toRGB).
`gain_channels` (same keys, optional) gives the fan-in used for the fixed weight gains of toRGB and resnet skip
layers. A pruned network keeps the teacher's channel counts here, so its kept weights compute exactly what they
computed in the teacher, and rebuilding from init_kwargs reproduces the same function.
"""
import warnings

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import upfirdn2d


def feature_map_names(img_resolution: int) -> list:
    """Names of the prunable feature maps of a generator at `img_resolution`, in forward order."""
    names = ['b4.const', 'b4.out']
    res = 8
    while res <= img_resolution:
        names += [f'b{res}.mid', f'b{res}.out']
        res *= 2
    return names


def _warn_if_half_on_cpu(dtype: torch.dtype, device: torch.device) -> None:
    """A float16 block on the CPU runs 20-100x slower than float32: say so (once per caller), with the remedy.

    Defined here, not imported: the networks module of other environments has no such helper.
    """
    if dtype == torch.float16 and device.type == 'cpu':
        warnings.warn('float16 synthesis blocks on the CPU are 20-100x slower than float32; call the generator '
                      'with force_fp32=True there', stacklevel=2)


@persistence.persistent_class
class SlimSynthesisBlock(torch.nn.Module):
    """SynthesisBlock with independent channel counts for its input, middle and output feature maps.

    For the 4x4 block (in_channels == 0) `mid_channels` is the channel count of the constant.
    """

    def __init__(self, in_channels, mid_channels, out_channels, w_dim, resolution, img_channels, is_last,
                 architecture='skip', resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False,
                 fp16_channels_last=False, gain_in_channels=None, gain_out_channels=None, **layer_kwargs):
        assert architecture in ['orig', 'skip', 'resnet']
        from training import networks  # construction only; unpickling rebuilds from state
        super().__init__()
        self.in_channels = in_channels
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([mid_channels, resolution, resolution]))
        else:
            self.conv0 = networks.SynthesisLayer(in_channels, mid_channels, w_dim=w_dim, resolution=resolution, up=2,
                                                 resample_filter=resample_filter, conv_clamp=conv_clamp,
                                                 channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = networks.SynthesisLayer(mid_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                             conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1

        if is_last or architecture == 'skip':
            self.torgb = networks.ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                             channels_last=self.channels_last)
            if gain_out_channels:  # fixed gain from the fan-in the weights were trained with
                self.torgb.weight_gain = float(1 / np.sqrt(gain_out_channels))
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = networks.Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                             resample_filter=resample_filter, channels_last=self.channels_last)
            if gain_in_channels:
                self.skip.weight_gain = float(1 / np.sqrt(gain_in_channels))

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        _warn_if_half_on_cpu(dtype, ws.device)
        if fused_modconv is None:
            with misc.suppress_tracer_warnings():
                fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)
            if self.architecture == 'resnet':
                y = self.skip(x, gain=np.sqrt(0.5))
                x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
                x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
                x = y.add_(x)
            else:
                x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
                x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img


@persistence.persistent_class
class SlimSynthesisNetwork(torch.nn.Module):
    """SynthesisNetwork whose per-feature-map channel counts come from `channels` (see module docstring)."""

    def __init__(self, w_dim, img_resolution, img_channels, channels, gain_channels=None, num_fp16_res=0,
                 **block_kwargs):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        self.channels = dict(channels)
        missing = [k for k in feature_map_names(img_resolution) if k not in self.channels]
        assert not missing, f'channels: missing feature maps {missing}'
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        gains = dict(gain_channels) if gain_channels else {}

        self.num_ws = 0
        for res in self.block_resolutions:
            mid_key = 'b4.const' if res == 4 else f'b{res}.mid'
            in_key = None if res == 4 else f'b{res // 2}.out'
            block = SlimSynthesisBlock(
                in_channels=0 if in_key is None else int(self.channels[in_key]),
                mid_channels=int(self.channels[mid_key]), out_channels=int(self.channels[f'b{res}.out']),
                w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=(res == self.img_resolution),
                use_fp16=(res >= fp16_resolution),
                gain_in_channels=gains.get(in_key) if in_key else None, gain_out_channels=gains.get(f'b{res}.out'),
                **block_kwargs)
            self.num_ws += block.num_conv
            if res == self.img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        block_ws = []
        with torch.autograd.profiler.record_function('split_ws'):
            misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
            ws = ws.to(torch.float32)
            w_idx = 0
            for res in self.block_resolutions:
                block = getattr(self, f'b{res}')
                block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
                w_idx += block.num_conv

        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            x, img = getattr(self, f'b{res}')(x, img, cur_ws, **block_kwargs)
        return img


@persistence.persistent_class
class SlimGenerator(torch.nn.Module):
    """Generator with a SlimSynthesisNetwork; same attributes, mapping network and call as a standard Generator."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, channels, gain_channels=None,
                 mapping_kwargs={}, synthesis_kwargs={}):
        from training import networks  # construction only; unpickling rebuilds from state
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SlimSynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                              channels=channels, gain_channels=gain_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = networks.MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                               **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img = self.synthesis(ws, **synthesis_kwargs)
        return img
