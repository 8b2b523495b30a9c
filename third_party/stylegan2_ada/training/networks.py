"""StyleGAN2-ADA generator and discriminator with the public interface of stylegan2-ada-pytorch.

Class names, constructor arguments, stored attributes, parameter and buffer names (and their creation order)
follow the published interface, so state dicts and network pickles are interchangeable with the original.

The text of this module is embedded into every network pickle written with these classes, and the original
environment executes it when loading. It therefore imports only numpy, torch, the standard library and the
public torch_utils names that the original environment provides; extras of this torch_utils (the compiled
narrow-layer kernels, separable image upsampling) are looked up at call time and skipped where missing.
"""

import contextlib
import importlib

import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import conv2d_resample
from torch_utils.ops import upfirdn2d
from torch_utils.ops import bias_act
from torch_utils.ops import fma

#----------------------------------------------------------------------------
# Module-level functions.


@misc.profiled_function
def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale x so that its mean square along `dim` is one."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _profiled(name):
    """torch.autograd.profiler.record_function(name) while a profiler records, else a context that does nothing.

    The record itself costs about 10 us per call even when no profiler runs (a dispatcher call in and out).
    """
    enabled = getattr(torch.autograd, '_profiler_enabled', None)  # absent from some older torch versions
    if enabled is not None and not enabled():
        return contextlib.nullcontext()
    return torch.autograd.profiler.record_function(name)


def _cpu_fast_path(x):
    """Whether to take the CPU-specific code paths below (float32/float64 tensors on the CPU).

    They compute the same function as the generic paths, with fewer passes over the activations:
    - modulation: on CPU the grouped convolution of the fused path (groups = batch size) is slower than the
      batched convolution of the non-fused path for most layer shapes (measured, batch 4, one thread: 2.5x
      slower for 512 channels at 16 px, 1.3x at 32 px, 1.5x for the upsampling layers; only 64-128 channel
      layers at 128-256 px gain about 10%), and the two agree to float rounding, so the non-fused order is
      used even when fused_modconv is requested;
    - 1x1 modulated convolutions (ToRGB) become one batched matmul with per-sample weights;
    - layer epilogues fold demodulation, activation gain, noise and bias into one multiply and one add, and
      apply clamp and leaky ReLU in place (lrelu(v) * g == lrelu(v * g) for g > 0).
    float16 keeps the generic paths: there the order of operations changes the rounding noticeably.
    Other devices keep them too, so that the bias_act/upfirdn2d implementations of the environment are used.
    Inference (float32, nothing requiring grad) goes further: see _inference_fast_path.
    """
    return x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64)


def _demodulation_coefs(weight, styles):
    """[N, O] factors that give each output channel of the per-sample weights weight * styles unit norm.

    sum_{i,k} (weight[o,i,k] * styles[n,i])^2 == styles^2 @ sum_k weight^2: the same value as forming the
    per-sample weights, without materialising a [N, O, I, kh, kw] tensor.
    """
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()


def _modulate_and_convolve(x, weight, styles, up, down, padding, resample_filter, demodulate, flip_weight):
    """Non-fused modulated convolution without the demodulation multiply: (conv(x * styles, weight), dcoefs)."""
    batch_size = x.shape[0]
    dcoefs = _demodulation_coefs(weight, styles) if demodulate else None
    x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
    x = conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, flip_weight=flip_weight)
    return x, dcoefs


@misc.profiled_function
def modulated_conv2d(
    x,                          # Input tensor of shape [batch_size, in_channels, in_height, in_width].
    weight,                     # Weight tensor of shape [out_channels, in_channels, kernel_height, kernel_width].
    styles,                     # Modulation coefficients of shape [batch_size, in_channels].
    noise           = None,     # Optional noise tensor to add to the output activations.
    up              = 1,        # Integer upsampling factor.
    down            = 1,        # Integer downsampling factor.
    padding         = 0,        # Padding with respect to the upsampled image.
    resample_filter = None,     # Low-pass filter to apply when resampling activations.
    demodulate      = True,     # Apply weight demodulation?
    flip_weight     = True,     # False = convolution, True = correlation.
    fused_modconv   = True,     # Perform modulation, convolution, and demodulation as a single fused operation?
):
    """Style-modulated (and optionally demodulated) convolution; noise is added before bias and activation."""
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    # Bring weight and styles to unit scale first so the float16 products below cannot overflow.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    if _cpu_fast_path(x):
        if kh == 1 and kw == 1 and up == 1 and down == 1 and padding in (0, [0, 0], [0, 0, 0, 0]):
            # 1x1 kernel: a batched matmul with per-sample weights reads the activations once.
            w = weight[:, :, 0, 0].unsqueeze(0) * styles.unsqueeze(1)  # [N, O, I]
            if demodulate:
                w = w * (w.square().sum(dim=2, keepdim=True) + 1e-8).rsqrt()
            out = torch.bmm(w.to(x.dtype), x.reshape(batch_size, in_channels, -1))
            x = out.reshape(batch_size, out_channels, *x.shape[2:])
            return x + noise.to(x.dtype) if noise is not None else x
        fused_modconv = False

    if not fused_modconv:
        x, dcoefs = _modulate_and_convolve(x, weight, styles, up, down, padding, resample_filter, demodulate,
                                           flip_weight)
        if demodulate and noise is not None:
            x = fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

    # Fused path: per-sample weights, one grouped convolution over the whole batch.
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


def _scale_shift_lrelu_(x, scale, shifts, alpha, clamp):
    """lrelu(x * scale + sum(shifts)), clamped to [-clamp, clamp], gains already folded into scale and shifts.

    Works in place on x, which must be a fresh convolution output (its backward does not need it). In-place
    steps matter on CPU: a fresh tensor of this size costs more in page faults than the arithmetic on it.
    The shifts (bias [C, 1, 1], noise [H, W] or [N, 1, H, W]) are added one by one: each broadcasts along a
    whole axis in both NCHW and channels_last layouts, which a precomputed [C, H, W] sum would not.
    Clamping the pre-activation to [-clamp / alpha, clamp] before the (monotone) leaky ReLU gives the same
    values and the same zero gradient where the output is clamped.
    """
    if scale is not None:
        x = x.mul_(scale)
    for shift in shifts:
        x = x.add_(shift)
    if clamp is not None:
        x = x.clamp_(-clamp / alpha, clamp) if alpha > 0 else x.clamp_(max=clamp)
    return torch.nn.functional.leaky_relu_(x, alpha)


def _act_clamp(conv_clamp, gain):
    return float(conv_clamp) * float(gain) if conv_clamp is not None else None


def _inference_fast_path(x, *tensors):
    """Whether the inference-only CPU paths apply to input x with further operands `tensors` (parameters etc.).

    Conditions: the CPU fast path above, float32, and autograd recording nothing (grad mode off, or no operand
    that requires grad). Whenever a gradient can flow the paths above are kept; a frozen network takes the same
    path, and renders the same bits, with or without torch.no_grad() and in train or eval mode. These paths may
    write into preallocated outputs, fold per-sample factors into weights and keep activations channels_last
    from layer to layer; results agree with the other paths to float rounding.
    """
    if x.dtype != torch.float32 or not _cpu_fast_path(x):
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, *tensors))


_narrow_module = []


def _narrow_kernels():
    """torch_utils.ops.narrow_conv (compiled kernels for narrow layers in CPU inference), or None.

    None where the module does not exist (the original torch_utils, which may execute this file when it
    loads a network pickle; hence the guarded dynamic import) or cannot build its kernels.
    """
    if not _narrow_module:
        try:
            narrow = importlib.import_module('torch_utils.ops.narrow_conv')
        except ImportError:
            narrow = None
        _narrow_module.append(narrow if narrow is not None and narrow.kernels() is not None else None)
    return _narrow_module[0]


# Output pixels per sample from which a layer runs its convolutions one sample at a time during CPU inference.
# Measured (batch 4, one thread): from 128x128 on, the passes over memory this saves outweigh the slower
# per-sample convolutions; below, batching the convolutions is faster.
_PER_SAMPLE_MIN_PIXELS = 128 * 128


def _const_noise_shift(layer, act_gain):
    """(bias + noise_const * noise_strength) * act_gain as one channels_last [1, O, H, W] float32 tensor.

    Built once per call (a quarter of a pass at batch 4), so that each sample's epilogue adds a single operand
    laid out like its convolution output.
    """
    bias, noise = layer.bias.to(torch.float32), (layer.noise_const * layer.noise_strength).to(torch.float32)
    shift = torch.empty([1, bias.shape[0], *noise.shape], dtype=torch.float32, device=bias.device,
                        memory_format=torch.channels_last)
    return torch.add((bias * act_gain).reshape(1, -1, 1, 1), noise.reshape(1, 1, *noise.shape), alpha=act_gain,
                     out=shift)


def _modulated_lrelu_per_sample(x, weight, styles, dcoefs, shift, sample_noise, act_gain, alpha, clamp, up, padding,
                                resample_filter, flip_weight, resolution):
    """lrelu(conv(x * styles) * dcoefs * act_gain + shift + sample_noise), clamped, one sample at a time.

    CPU float32 inference only. shift broadcasts over one sample's output ([1, O, H, W] or [1, O, 1, 1]);
    sample_noise is None or [N, 1, H, W]; both already include act_gain. With a single sample, modulation and
    demodulation fold into the small weight tensor (no pass over the activations), and the epilogue runs while
    the sample's convolution output is still in cache, writing straight into the channels_last batch output
    [N, O, resolution, resolution].
    """
    batch_size = x.shape[0]
    # Per-sample factors [N, O, I, 1, 1]; each sample's weight is then one multiply.
    factors = styles.reshape(batch_size, 1, -1, 1, 1) * (dcoefs * act_gain).reshape(batch_size, -1, 1, 1, 1)
    out = torch.empty([batch_size, weight.shape[0], resolution, resolution], dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout; a no-op between these layers
    plain = (up == 1 and flip_weight and isinstance(padding, int))
    for n, (sample, factor, slot) in enumerate(zip(x.split(1), factors.unbind(0), out.split(1))):
        w = weight * factor
        if plain:  # what conv2d_resample does here, without its argument handling
            y = torch.nn.functional.conv2d(sample, w, padding=padding)
        else:
            y = conv2d_resample.conv2d_resample(x=sample, w=w, f=resample_filter, up=up, padding=padding,
                                                flip_weight=flip_weight)
        torch.add(y, shift, out=slot)
        if sample_noise is not None:
            slot.add_(sample_noise[n:n + 1])
        if clamp is not None:
            slot.clamp_(-clamp / alpha, clamp) if alpha > 0 else slot.clamp_(max=clamp)
        torch.nn.functional.leaky_relu_(slot, alpha)
    return out

#----------------------------------------------------------------------------
# Layers.


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self,
        in_features,                # Number of input features.
        out_features,               # Number of output features.
        bias            = True,     # Apply additive bias before the activation function?
        activation      = 'linear', # Activation function: 'relu', 'lrelu', etc.
        lr_multiplier   = 1,        # Learning rate multiplier.
        bias_init       = 0,        # Initial value for the additive bias.
    ):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = float(lr_multiplier / np.sqrt(in_features))
        self.bias_gain = lr_multiplier

    def forward(self, x):
        precomputed = self.__dict__.get('_precomputed')  # see precomputed_styles()
        if precomputed is not None and precomputed[0] == _tensor_key(x):
            return precomputed[1]
        if x.ndim == 2 and _inference_fast_path(x, self.weight, self.bias):
            return self._forward_inference(x)
        # float() keeps numpy scalars restored from older pickles out of tensor arithmetic.
        w = self.weight.to(x.dtype) * float(self.weight_gain)
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * float(self.bias_gain)
        if self.activation == 'linear' and b is not None:
            x = torch.addmm(b.unsqueeze(0), x, w.t())
        else:
            x = x.matmul(w.t())
            x = bias_act.bias_act(x, b, act=self.activation)
        return x

    def _forward_inference(self, x):
        """The weight gain goes into the matmul's alpha and the bias into its beta term: no scaled weight copy.

        At inference batch sizes the compiled kernel (torch_utils.ops.narrow_conv.small_batch_linear) reads the
        weight once and applies bias and activation itself.
        """
        narrow = _narrow_kernels()
        if narrow is not None and narrow.linear_applies(x, self.weight, self.activation):
            return narrow.small_batch_linear(x, *self._kernel_args())
        b = self.bias
        if b is not None:
            b = b.to(x.dtype).unsqueeze(0)
            x = torch.addmm(b, x, self.weight.to(x.dtype).t(), beta=float(self.bias_gain),
                            alpha=float(self.weight_gain))
        else:
            x = torch.mm(x, self.weight.to(x.dtype).t()).mul_(float(self.weight_gain))
        if self.activation != 'linear':
            x = bias_act.bias_act(x, None, act=self.activation)
        return x

    def _kernel_args(self):
        """(weight, bias, weight_gain, bias_gain, activation, act_gain) as narrow_conv's linear kernels take them."""
        return (self.weight, self.bias, self.weight_gain, self.bias_gain, self.activation,
                bias_act.activation_funcs[self.activation].def_gain)


def _fully_connected_inference(layers, xs, chain=False):
    """Outputs of the FullyConnectedLayers `layers` in CPU float32 inference, one per layer.

    xs: each layer's input, or with chain only the first one (each further layer takes the previous output).
    One compiled call for all the layers where the kernels take every one (narrow_conv.small_batch_linears),
    else each layer's _forward_inference.
    """
    narrow = _narrow_kernels()
    if narrow is not None and all(narrow.linear_applies(x, layer.weight, layer.activation)
                                  for x, layer in zip(xs * len(layers) if chain else xs, layers)):
        return narrow.small_batch_linears(xs, [layer._kernel_args() for layer in layers], chain=chain)
    outputs = []
    for i, layer in enumerate(layers):
        outputs.append(layer._forward_inference(outputs[-1] if chain and outputs else xs[i]))
    return outputs


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Number of input channels.
        out_channels,                   # Number of output channels.
        kernel_size,                    # Width and height of the convolution kernel.
        bias            = True,         # Apply additive bias before the activation function?
        activation      = 'linear',     # Activation function: 'relu', 'lrelu', etc.
        up              = 1,            # Integer upsampling factor.
        down            = 1,            # Integer downsampling factor.
        resample_filter = [1,3,3,1],    # Low-pass filter to apply when resampling activations.
        conv_clamp      = None,         # Clamp the output to +-X, None = disable clamping.
        channels_last   = False,        # Expect the input to have memory_format=channels_last?
        trainable       = True,         # Update the weights of this layer during training?
    ):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = float(1 / np.sqrt(in_channels * (kernel_size ** 2)))
        self.act_gain = float(bias_act.activation_funcs[activation].def_gain)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            # Frozen layers keep the same names, as buffers.
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        act_gain = float(self.act_gain) * float(gain)
        act_clamp = _act_clamp(self.conv_clamp, gain)
        flip_weight = (self.up == 1)  # The transposed convolution of the up path expects the flipped kernel.
        b = self.bias.to(x.dtype) if self.bias is not None else None

        lrelu_with_bias = (self.activation == 'lrelu' and b is not None)
        plain_linear = (self.activation == 'linear' and b is None and act_clamp is None)
        if (lrelu_with_bias or plain_linear) and _cpu_fast_path(x):
            # The positive activation gain folds into the (linear) convolution and the bias.
            w = self.weight * (float(self.weight_gain) * act_gain)
            x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up,
                                                down=self.down, padding=self.padding, flip_weight=flip_weight)
            if plain_linear:
                return x
            alpha = float(bias_act.activation_funcs['lrelu'].def_alpha)
            return _scale_shift_lrelu_(x, None, [(b * act_gain).reshape(-1, 1, 1)], alpha, act_clamp)

        w = self.weight * float(self.weight_gain)
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=flip_weight)
        x = bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)
        return x


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self,
        z_dim,                      # Input latent (Z) dimensionality, 0 = no latent.
        c_dim,                      # Conditioning label (C) dimensionality, 0 = no label.
        w_dim,                      # Intermediate latent (W) dimensionality.
        num_ws,                     # Number of intermediate latents to output, None = do not broadcast.
        num_layers      = 8,        # Number of mapping layers.
        embed_features  = None,     # Label embedding dimensionality, None = same as w_dim.
        layer_features  = None,     # Number of intermediate features in the mapping layers, None = same as w_dim.
        activation      = 'lrelu',  # Activation function: 'relu', 'lrelu', etc.
        lr_multiplier   = 0.01,     # Learning rate multiplier for the mapping layers.
        w_avg_beta      = 0.995,    # Decay for tracking the moving average of W during training, None = do not track.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features_list[idx], features_list[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        x = None
        with _profiled('input'):
            if self.z_dim > 0:
                misc.assert_shape(z, [None, self.z_dim])
                x = normalize_2nd_moment(z.to(torch.float32))  # z may arrive as float64 (numpy-derived).
            if self.c_dim > 0:
                misc.assert_shape(c, [None, self.c_dim])
                y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
                x = torch.cat([x, y], dim=1) if x is not None else y

        layers = [getattr(self, f'fc{idx}') for idx in range(self.num_layers)]
        # In CPU float32 inference all layers in one call, without the module calls around them (cache-cold
        # Python between the layers: about 0.5 ms of a 60 ms small generator; measured).
        if (layers and x is not None and x.ndim == 2 and not _has_hooks(*layers)
                and _inference_fast_path(x, *[p for layer in layers for p in (layer.weight, layer.bias)])):
            x = _fully_connected_inference(layers, [x], chain=True)[-1]
        else:
            for layer in layers:
                x = layer(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with _profiled('update_w_avg'):
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, float(self.w_avg_beta)))

        if self.num_ws is not None:
            with _profiled('broadcast'):
                x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            with _profiled('truncate'):
                assert self.w_avg_beta is not None
                if self.num_ws is None or truncation_cutoff is None:
                    x = self.w_avg.lerp(x, float(truncation_psi))
                else:
                    x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], float(truncation_psi))
        return x


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Number of input channels.
        out_channels,                   # Number of output channels.
        w_dim,                          # Intermediate latent (W) dimensionality.
        resolution,                     # Resolution of this layer.
        kernel_size     = 3,            # Convolution kernel size.
        up              = 1,            # Integer upsampling factor.
        use_noise       = True,         # Enable noise input?
        activation      = 'lrelu',      # Activation function: 'relu', 'lrelu', etc.
        resample_filter = [1,3,3,1],    # Low-pass filter to apply when resampling activations.
        conv_clamp      = None,         # Clamp the output of convolution layers to +-X, None = disable clamping.
        channels_last   = False,        # Use channels_last format for the weights?
    ):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = float(bias_act.activation_funcs[activation].def_gain)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        self.weight = torch.nn.Parameter(weight.to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        assert noise_mode in ['random', 'const', 'none']
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.weight.shape[1], in_resolution, in_resolution])
        styles = self.affine(w)

        flip_weight = (self.up == 1)  # The transposed convolution of the up path expects the flipped kernel.
        act_gain = float(self.act_gain) * float(gain)
        act_clamp = _act_clamp(self.conv_clamp, gain)
        noise_strength = self.noise_strength if self.use_noise else None

        if self.activation == 'lrelu' and _inference_fast_path(x, styles, self.weight, self.bias, noise_strength):
            narrow = self._narrow_kernels(x)
            if narrow is not None:
                epilogue = self._narrow_epilogue(x, noise_mode, gain)
                return narrow.modulated_lrelu(x, self.weight, styles, self.bias, *epilogue, up=self.up,
                                              resample_filter=self.resample_filter)
            if self.resolution * self.resolution >= _PER_SAMPLE_MIN_PIXELS:
                return self._forward_per_sample(x, styles, noise_mode, act_gain, act_clamp, flip_weight)

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        if self.activation == 'lrelu' and _cpu_fast_path(x):
            x, dcoefs = _modulate_and_convolve(x, self.weight, styles, up=self.up, down=1, padding=self.padding,
                resample_filter=self.resample_filter, demodulate=True, flip_weight=flip_weight)
            shifts = [self.bias.to(x.dtype).reshape(-1, 1, 1) * act_gain]
            if noise is not None:
                shifts.append(noise.to(x.dtype) * act_gain)  # noise enters before bias and activation
            scale = (dcoefs * act_gain).to(x.dtype).reshape(x.shape[0], -1, 1, 1)
            alpha = float(bias_act.activation_funcs['lrelu'].def_alpha)
            return _scale_shift_lrelu_(x, scale, shifts, alpha, act_clamp)

        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight, fused_modconv=fused_modconv)
        x = bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)
        return x

    def _narrow_kernels(self, x):
        """torch_utils.ops.narrow_conv if this layer runs through its compiled kernels with input x, else None.

        Those kernels (CPU float32 inference, up to narrow_conv.MAX_CHANNELS output channels) modulate,
        demodulate and apply the gains themselves: a layer is one call, without per-layer tensor operations.
        """
        narrow = _narrow_kernels()
        if narrow is None or not narrow.applies(x, self.weight, self.up, self.resample_filter):
            return None
        return narrow

    def _narrow_epilogue(self, x, noise_mode, gain):
        """(noise, noise_strength, act_gain, alpha, clamp) as the narrow kernels take them."""
        noise = None
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const
        if self.use_noise and noise_mode == 'random':  # the same draws as the other paths: [N, 1, H, W]
            noise = torch.randn([x.shape[0], self.resolution, self.resolution], device=x.device)
        strength = float(self.noise_strength) if noise is not None else 0.0
        alpha = float(bias_act.activation_funcs['lrelu'].def_alpha)
        return (noise, strength, float(self.act_gain) * float(gain), alpha, _act_clamp(self.conv_clamp, gain))

    def forward_with_rgb(self, x, w, torgb, w_rgb, img, resample_filter, noise_mode='random', gain=1):
        """(self(x, w), upsample2d(img, resample_filter) + torgb(self(x, w), w_rgb)) in one pass, or None.

        CPU float32 inference of a narrow 3x3 layer (up = 1) and the block's toRGB: the image is computed from
        each block of rows of this layer's output right after the kernel produced them, while they are still
        in cache (narrow_conv.modulated_lrelu_rgb; with a filter it does not take, the steps one by one). None
        where the kernels do not apply; the caller then takes the separate steps.
        """
        assert noise_mode in ['random', 'const', 'none']
        if self.up != 1 or self.activation != 'lrelu' or torgb.weight.shape[2:] != (1, 1):
            return None
        narrow = self._narrow_kernels(x)
        if narrow is None or not narrow.rgb_applies(x, torgb.weight, img, resample_filter,
                                                    channels=self.weight.shape[0]):
            return None
        misc.assert_shape(x, [None, self.weight.shape[1], self.resolution, self.resolution])
        styles, rgb_styles = self.affine(w), torgb.affine(w_rgb)
        noise_strength = self.noise_strength if self.use_noise else None
        if not (_inference_fast_path(x, styles, self.weight, self.bias, noise_strength)
                and _inference_fast_path(x, rgb_styles, torgb.weight, torgb.bias, img)):
            return None
        epilogue = self._narrow_epilogue(x, noise_mode, gain)
        return _layer_and_rgb(narrow, self, x, styles, epilogue, torgb, rgb_styles, img, resample_filter)

    def _forward_per_sample(self, x, styles, noise_mode, act_gain, act_clamp, flip_weight):
        """CPU float32 inference at high resolution: see _modulated_lrelu_per_sample."""
        weight = self.weight.to(x.dtype)
        styles = styles.to(x.dtype)
        dcoefs = _demodulation_coefs(weight, styles)  # [N, O]
        sample_noise = None
        if self.use_noise and noise_mode == 'const':
            shift = _const_noise_shift(self, act_gain)
        else:
            shift = (self.bias.to(x.dtype) * act_gain).reshape(1, -1, 1, 1)
            if self.use_noise and noise_mode == 'random':
                sample_noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                sample_noise = sample_noise * (self.noise_strength.to(x.dtype) * act_gain)
        alpha = float(bias_act.activation_funcs['lrelu'].def_alpha)
        return _modulated_lrelu_per_sample(x, weight, styles, dcoefs, shift, sample_noise, act_gain, alpha, act_clamp,
            up=self.up, padding=self.padding, resample_filter=self.resample_filter, flip_weight=flip_weight,
            resolution=self.resolution)


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        self.weight = torch.nn.Parameter(weight.to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = float(1 / np.sqrt(in_channels * (kernel_size ** 2)))

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * float(self.weight_gain)
        if self.weight.shape[2:] == (1, 1) and _inference_fast_path(x, styles, self.weight, self.bias):
            return self._forward_inference(x, styles)
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        x = bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)
        return x

    def forward_with_skip(self, x, w, img, resample_filter):
        """upsample2d(img, resample_filter) + self(x, w) in one pass (img None: self(x, w)), or None.

        The block output in CPU float32 inference through torch_utils.ops.narrow_conv.rgb_skip, which writes
        neither the toRGB output nor the upsampled image separately. None where that kernel does not apply
        (gradients, other devices or dtypes, channels_last x, more than 4 image channels, no kernels); the
        caller then takes the separate steps.
        """
        narrow = _narrow_kernels()
        if narrow is None or not x.is_contiguous() or not narrow.rgb_applies(x, self.weight, img, resample_filter):
            return None
        styles = self.affine(w)
        if not _inference_fast_path(x, styles, self.weight, self.bias, img):
            return None
        return narrow.rgb_skip(x, self.weight, styles, self.weight_gain, self.bias, self.conv_clamp, img,
                               resample_filter)

    def _forward_inference(self, x, styles):
        """1x1 modulated conv plus bias as one batched matmul; reads NCHW or channels_last x without a copy."""
        batch_size, in_channels, height, width = x.shape
        w = self.weight[:, :, 0, 0].to(x.dtype).unsqueeze(0) * styles.to(x.dtype).unsqueeze(1)  # [N, O, I]
        y = torch.baddbmm(self.bias.to(x.dtype).reshape(1, -1, 1), w, x.reshape(batch_size, in_channels, -1))
        y = y.reshape(batch_size, -1, height, width)
        if self.conv_clamp is not None:
            y = y.clamp_(-float(self.conv_clamp), float(self.conv_clamp))
        return y

#----------------------------------------------------------------------------
# Generator.


def _tensor_key(t):
    """What identifies a tensor's values within one forward pass: memory, layout and in-place version."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t._version


@contextlib.contextmanager
def precomputed_styles(blocks, block_ws):
    """Within the block, the affine layers of the synthesis blocks answer from styles computed up front.

    CPU float32 inference only. Each layer otherwise turns its w into styles with a small matmul right after
    the previous layer streamed megabytes of activations through the caches, and pays for cold code and a cold
    weight every time (about 50 us; 20 such layers in a 256 px generator). Computed back to back they cost a
    fraction of that. A layer takes its precomputed styles only when called with the very w they came from
    (same memory, shape, strides and version): any other call computes them as usual. Layers take their w in
    the order conv0, conv1, torgb from the block's slice of ws, as SynthesisBlock.forward hands them out.
    """
    affines = []
    try:
        if block_ws and _inference_fast_path(block_ws[0]):
            for block, cur_ws in zip(blocks, block_ws):
                layers = [getattr(block, name) for name in ('conv0', 'conv1', 'torgb') if hasattr(block, name)]
                for layer, w in zip(layers, cur_ws.unbind(dim=1)):
                    affine = layer.affine
                    if not _inference_fast_path(w, affine.weight, affine.bias):
                        continue
                    affine.__dict__.pop('_precomputed', None)
                    styles = affine(w)
                    affine.__dict__['_precomputed'] = (_tensor_key(w), styles)
                    affines.append(affine)
        yield
    finally:
        for affine in affines:
            affine.__dict__.pop('_precomputed', None)


def synthesis_blocks_forward(blocks, block_ws, **block_kwargs):
    """(x, img) after running the synthesis blocks in order, each on its slice of ws: SynthesisNetwork's loop.

    In CPU float32 inference a block whose layers all run through the compiled kernels (narrow_conv) is
    computed here with one kernel call per layer (_narrow_block_forward). The module path around those calls
    (module calls, shape checks, style lookups) runs cache-cold after each layer has streamed its activations:
    measured on a 256 px student at batch 4, the Python around the kernels went from about 4 to 2.5 ms of a
    59 ms call with this path and the mapping's single call. The results are the same bits: the same kernels
    with the same arguments, and random noise drawn in the same order. Blocks or layers with hooks, and the
    other blocks, run as modules, with their styles precomputed (precomputed_styles).
    """
    narrow_layers = [None] * len(blocks)
    if block_ws and _inference_fast_path(block_ws[0]) and set(block_kwargs) <= _NARROW_BLOCK_KWARGS:
        force_fp32 = block_kwargs.get('force_fp32', False)
        narrow_layers = [_narrow_block_layers(block, force_fp32) for block in blocks]
    modules = [(block, cur_ws) for block, cur_ws, layers in zip(blocks, block_ws, narrow_layers) if layers is None]
    # The narrow blocks' styles up front as well (see precomputed_styles), in one call.
    affines = [[(layer.affine, w) for layer, w in zip(_present(layers), cur_ws.unbind(dim=1))]
               if layers is not None else [] for cur_ws, layers in zip(block_ws, narrow_layers)]
    flat = [pair for block_affines in affines for pair in block_affines]
    flat_styles = iter(_fully_connected_inference([a for a, _ in flat], [w for _, w in flat]) if flat else [])
    styles = [[next(flat_styles) for _ in block_affines] for block_affines in affines]
    noise_mode = block_kwargs.get('noise_mode', 'random')
    x = img = None
    with precomputed_styles([block for block, _ in modules], [cur_ws for _, cur_ws in modules]):
        for block, cur_ws, layers, layer_styles in zip(blocks, block_ws, narrow_layers, styles):
            if layers is None:
                x, img = block(x, img, cur_ws, **block_kwargs)
            else:
                x, img = _narrow_block_forward(block, layers, layer_styles, x, img, noise_mode, cur_ws.shape[0])
    return x, img


# Block arguments the direct path of synthesis_blocks_forward knows (fused_modconv has no effect there).
_NARROW_BLOCK_KWARGS = {'noise_mode', 'force_fp32', 'fused_modconv'}


def _present(layers):
    """The layers of a (conv0, conv1, torgb) triple that the block has, in the order they take their w."""
    return [layer for layer in layers if layer is not None]


def _has_hooks(*modules):
    """Whether calling these modules would run forward hooks (their own or global ones)."""
    if getattr(torch.nn.modules.module, '_global_forward_hooks', None) or \
            getattr(torch.nn.modules.module, '_global_forward_pre_hooks', None):
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


def _narrow_block_layers(block, force_fp32):
    """(conv0 or None, conv1, torgb or None) when every layer of the block runs through narrow_conv, else None.

    The conditions of the layers' own kernel paths (SynthesisLayer.forward, forward_with_rgb), checked before
    anything runs so that a block never starts one way and finishes the other. Only 'orig' and 'skip' blocks
    in float32, without hooks and, with gradients enabled, without parameters that require them.
    """
    narrow = _narrow_kernels()
    if (narrow is None or block.architecture == 'resnet' or (block.use_fp16 and not force_fp32)
            or _has_hooks(block)):
        return None
    conv0 = block.conv0 if block.in_channels != 0 else None
    torgb = block.torgb if block.is_last or block.architecture == 'skip' else None
    for layer, up in ((conv0, 2), (block.conv1, 1)):
        if layer is None:
            continue
        if (layer.up != up or layer.activation != 'lrelu' or _has_hooks(layer, layer.affine)
                or not narrow.layer_applies(layer.weight, up, layer.resample_filter, block.resolution // up)):
            return None
    if torgb is not None and (_has_hooks(torgb, torgb.affine) or torgb.weight.shape[2:] != (1, 1)):
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in block.parameters()):
        return None
    return conv0, block.conv1, torgb


def _narrow_block_forward(block, layers, styles, x, img, noise_mode, batch_size):
    """SynthesisBlock.forward through the kernels directly: layers from _narrow_block_layers, their styles."""
    narrow = _narrow_kernels()
    conv0, conv1, torgb = layers
    styles = iter(styles)
    if conv0 is None:
        x = block.const.to(torch.float32).unsqueeze(0).repeat([batch_size, 1, 1, 1])
    else:
        x = narrow.modulated_lrelu(x, conv0.weight, next(styles), conv0.bias,
                                   *conv0._narrow_epilogue(x, noise_mode, 1), up=2,
                                   resample_filter=conv0.resample_filter)
    conv1_styles = next(styles)
    epilogue = conv1._narrow_epilogue(x, noise_mode, 1)
    if torgb is None:
        return narrow.modulated_lrelu(x, conv1.weight, conv1_styles, conv1.bias, *epilogue), img
    size = (x.shape[0], block.resolution, block.resolution)
    fused = narrow.rgb_layer_applies(torgb.weight, conv1.weight.shape[0], size, img, block.resample_filter)
    return _layer_and_rgb(narrow, conv1, x, conv1_styles, epilogue, torgb, next(styles), img,
                          block.resample_filter, fused=fused)


def _layer_and_rgb(narrow, layer, x, styles, epilogue, torgb, rgb_styles, img, resample_filter, fused=True):
    """(y, image): a narrow 3x3 layer (its epilogue already drawn), then toRGB plus the upsampled skip image.

    In one pass (narrow_conv.modulated_lrelu_rgb) if `fused` and the kernel takes the filter; otherwise, for
    an image or filter that kernel does not take (a filter that is not separable), as separate steps. Both
    use the same epilogue, so random noise is drawn once either way.
    """
    if fused:
        out = narrow.modulated_lrelu_rgb(x, layer.weight, styles, layer.bias, *epilogue, torgb.weight, rgb_styles,
                                         torgb.weight_gain, torgb.bias, torgb.conv_clamp, img, resample_filter)
        if out is not None:
            return out
    y = narrow.modulated_lrelu(x, layer.weight, styles, layer.bias, *epilogue)
    rgb = torgb._forward_inference(y, rgb_styles * float(torgb.weight_gain))
    if img is None:
        return y, rgb
    separable = getattr(upfirdn2d, 'upsample2d_separable', None)
    up = separable if separable is not None else upfirdn2d.upsample2d
    return y, up(img, resample_filter).add_(rgb)


def _upsample_image(block, img, ws):
    """2x upsampling of the skip image; in CPU inference as shifted adds, cheaper than a 3-channel convolution.

    upsample2d_separable is looked up at call time: the torch_utils of other environments may not have it.
    """
    separable = getattr(upfirdn2d, 'upsample2d_separable', None)
    if separable is not None and _inference_fast_path(img, ws):
        return separable(img, block.resample_filter)
    return upfirdn2d.upsample2d(img, block.resample_filter)


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    def __init__(self,
        in_channels,                        # Number of input channels, 0 = first block.
        out_channels,                       # Number of output channels.
        w_dim,                              # Intermediate latent (W) dimensionality.
        resolution,                         # Resolution of this block.
        img_channels,                       # Number of output color channels.
        is_last,                            # Is this the last block?
        architecture        = 'skip',       # Architecture: 'orig', 'skip', 'resnet'.
        resample_filter     = [1,3,3,1],    # Low-pass filter to apply when resampling activations.
        conv_clamp          = None,         # Clamp the output of convolution layers to +-X, None = disable clamping.
        use_fp16            = False,        # Use FP16 for this block?
        fp16_channels_last  = False,        # Use channels-last memory format with FP16?
        **layer_kwargs,                     # Arguments for SynthesisLayer.
    ):
        assert architecture in ['orig', 'skip', 'resnet']
        super().__init__()
        self.in_channels = in_channels
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
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))

        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                resample_filter=resample_filter, conv_clamp=conv_clamp, channels_last=self.channels_last,
                **layer_kwargs)
            self.num_conv += 1

        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
            conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1

        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim,
                conv_clamp=conv_clamp, channels_last=self.channels_last)
            self.num_torgb += 1

        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            with misc.suppress_tracer_warnings():  # this value will be treated as a constant
                fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)  # (the 3-D const itself has no channels_last form)
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            if not (x.dtype == dtype and _inference_fast_path(x, ws)):  # keep the layers' channels_last output
                x = x.to(dtype=dtype, memory_format=memory_format)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
        if self.in_channels != 0 and self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            x = y.add_(x)
            w_rgb = next(w_iter) if self.is_last else None
        else:
            if self.in_channels != 0:
                x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            w1 = next(w_iter)
            w_rgb = next(w_iter) if self.is_last or self.architecture == 'skip' else None
            fused = None
            if w_rgb is not None:  # conv1, toRGB and the skip image in one pass (None where that does not apply)
                fused = self.conv1.forward_with_rgb(x, w1, self.torgb, w_rgb, img, self.resample_filter,
                                                    **layer_kwargs)
            if fused is not None:
                return fused
            x = self.conv1(x, w1, fused_modconv=fused_modconv, **layer_kwargs)

        combined = None
        if w_rgb is not None:
            combined = self.torgb.forward_with_skip(x, w_rgb, img, self.resample_filter)
        if combined is not None:
            img = combined
        else:
            if img is not None:
                img = _upsample_image(self, img, ws)
            if w_rgb is not None:
                y = self.torgb(x, w_rgb, fused_modconv=fused_modconv)
                y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
                img = img.add_(y) if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self,
        w_dim,                      # Intermediate latent (W) dimensionality.
        img_resolution,             # Output image resolution.
        img_channels,               # Number of color channels.
        channel_base    = 32768,    # Overall multiplier for the number of channels.
        channel_max     = 512,      # Maximum number of channels in any layer.
        num_fp16_res    = 0,        # Use FP16 for the N highest resolutions.
        **block_kwargs,             # Arguments for SynthesisBlock.
    ):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = (res >= fp16_resolution)
            is_last = (res == self.img_resolution)
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res,
                img_channels=img_channels, is_last=is_last, use_fp16=use_fp16, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        block_ws = []
        with _profiled('split_ws'):
            misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
            ws = ws.to(torch.float32)
            w_idx = 0
            for res in self.block_resolutions:
                block = getattr(self, f'b{res}')
                # A block's torgb shares its w with the next block's first conv.
                block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
                w_idx += block.num_conv

        blocks = [getattr(self, f'b{res}') for res in self.block_resolutions]
        _, img = synthesis_blocks_forward(blocks, block_ws, **block_kwargs)
        return img


@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self,
        z_dim,                      # Input latent (Z) dimensionality.
        c_dim,                      # Conditioning label (C) dimensionality.
        w_dim,                      # Intermediate latent (W) dimensionality.
        img_resolution,             # Output resolution.
        img_channels,               # Number of output color channels.
        mapping_kwargs      = {},   # Arguments for MappingNetwork.
        synthesis_kwargs    = {},   # Arguments for SynthesisNetwork.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Synthesis first: parameters() order (synthesis, then mapping) is relied on by EMA updates.
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img = self.synthesis(ws, **synthesis_kwargs)
        return img

#----------------------------------------------------------------------------
# Discriminator.


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    def __init__(self,
        in_channels,                        # Number of input channels, 0 = first block.
        tmp_channels,                       # Number of intermediate channels.
        out_channels,                       # Number of output channels.
        resolution,                         # Resolution of this block.
        img_channels,                       # Number of input color channels.
        first_layer_idx,                    # Index of the first layer.
        architecture        = 'resnet',     # Architecture: 'orig', 'skip', 'resnet'.
        activation          = 'lrelu',      # Activation function: 'relu', 'lrelu', etc.
        resample_filter     = [1,3,3,1],    # Low-pass filter to apply when resampling activations.
        conv_clamp          = None,         # Clamp the output of convolution layers to +-X, None = disable clamping.
        use_fp16            = False,        # Use FP16 for this block?
        fp16_channels_last  = False,        # Use channels-last memory format with FP16?
        freeze_layers       = 0,            # Freeze-D: Number of layers to freeze.
    ):
        assert in_channels in [0, tmp_channels]
        assert architecture in ['orig', 'skip', 'resnet']
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))

        # Every layer takes the next global layer index; the first `freeze_layers` indices are frozen.
        self.num_layers = 0

        def next_trainable():
            layer_idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return layer_idx >= freeze_layers

        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                trainable=next_trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)

        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
            trainable=next_trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)

        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
            trainable=next_trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp,
            channels_last=self.channels_last)

        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                trainable=next_trainable(), resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format

        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        if self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)

        assert x.dtype == dtype
        return x, img


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        with misc.suppress_tracer_warnings():  # the group size is a constant under tracing
            N = int(N)
            G = min(int(self.group_size), N) if self.group_size is not None else N
        F = self.num_channels
        c = C // F

        # Sample i falls into group i mod (N/G): the group index is the slow axis of the view.
        y = x.reshape(G, -1, F, c, H, W)    # [GnFcHW] Minibatch N as n groups of size G, channels C as F groups of c.
        y = y - y.mean(dim=0)               # [GnFcHW] Subtract mean over group.
        y = y.square().mean(dim=0)          # [nFcHW]  Calc variance over group.
        y = (y + 1e-8).sqrt()               # [nFcHW]  Calc stddev over group.
        y = y.mean(dim=[2, 3, 4])           # [nF]     Take average over channels and pixels.
        y = y.reshape(-1, F, 1, 1)          # [nF11]   Add missing dimensions.
        y = y.repeat(G, 1, H, W)            # [NFHW]   Replicate over group and pixels.
        x = torch.cat([x, y], dim=1)        # [NCHW]   Append to input as new channels.
        return x


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Number of input channels.
        cmap_dim,                       # Dimensionality of mapped conditioning label, 0 = no label.
        resolution,                     # Resolution of this block.
        img_channels,                   # Number of input color channels.
        architecture        = 'resnet', # Architecture: 'orig', 'skip', 'resnet'.
        mbstd_group_size    = 4,        # Group size for the minibatch standard deviation layer, None = whole batch.
        mbstd_num_channels  = 1,        # Number of features for the minibatch standard deviation layer, 0 = disable.
        activation          = 'lrelu',  # Activation function: 'relu', 'lrelu', etc.
        conv_clamp          = None,     # Clamp the output of convolution layers to +-X, None = disable clamping.
    ):
        assert architecture in ['orig', 'skip', 'resnet']
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = None
        if mbstd_num_channels > 0:
            self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])  # [NCHW]
        _ = force_fp32  # the epilogue always runs in float32
        dtype = torch.float32
        memory_format = torch.contiguous_format

        x = x.to(dtype=dtype, memory_format=memory_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            x = x + self.fromrgb(img)

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)

        # Conditioning: project the output onto the mapped label.
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))

        assert x.dtype == dtype
        return x


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self,
        c_dim,                          # Conditioning label (C) dimensionality.
        img_resolution,                 # Input resolution.
        img_channels,                   # Number of input color channels.
        architecture        = 'resnet', # Architecture: 'orig', 'skip', 'resnet'.
        channel_base        = 32768,    # Overall multiplier for the number of channels.
        channel_max         = 512,      # Maximum number of channels in any layer.
        num_fp16_res        = 0,        # Use FP16 for the N highest resolutions.
        conv_clamp          = None,     # Clamp the output of convolution layers to +-X, None = disable clamping.
        cmap_dim            = None,     # Dimensionality of mapped conditioning label, None = default.
        block_kwargs        = {},       # Arguments for DiscriminatorBlock.
        mapping_kwargs      = {},       # Arguments for MappingNetwork.
        epilogue_kwargs     = {},       # Arguments for DiscriminatorEpilogue.
    ):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        if cmap_dim is None:
            cmap_dim = channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res] if res < img_resolution else 0
            tmp_channels = channels_dict[res]
            out_channels = channels_dict[res // 2]
            use_fp16 = (res >= fp16_resolution)
            block = DiscriminatorBlock(in_channels, tmp_channels, out_channels, resolution=res,
                first_layer_idx=cur_layer_idx, use_fp16=use_fp16, **block_kwargs, **common_kwargs)
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels_dict[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs,
                                        **common_kwargs)

    def forward(self, img, c, **block_kwargs):
        x = None
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            x, img = block(x, img, **block_kwargs)

        cmap = None
        if self.c_dim > 0:
            cmap = self.mapping(None, c)
        x = self.b4(x, img, cmap)
        return x
