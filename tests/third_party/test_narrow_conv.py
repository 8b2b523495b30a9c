"""The compiled narrow-layer kernels agree with the PyTorch definitions and decline what they cannot do."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.ops import conv2d_resample, narrow_conv, upfirdn2d
from training import networks

plugin = narrow_conv.kernels()
needs_kernels = pytest.mark.skipif(plugin is None, reason='the kernels cannot be built here (no C++ compiler/ninja)')


def close(a, b, scale=None):
    """float32 agreement: max|a - b| <= 2e-5 * max(1, max|b|)."""
    scale = max(1.0, float(b.abs().max())) if scale is None else scale
    return float((a - b).abs().max()) <= 2e-5 * scale


def _kernel_args(layer):
    """A FullyConnectedLayer's (weight, bias, weight_gain, bias_gain, activation, act_gain) for the linear kernels."""
    from torch_utils.ops import bias_act
    return (layer.weight, layer.bias, layer.weight_gain, layer.bias_gain, layer.activation,
            bias_act.activation_funcs[layer.activation].def_gain)


def modulation(batch, in_ch, out_ch, g):
    """A layer's shared weight and per-sample styles, as the layers pass them to the kernels."""
    weight = torch.randn([out_ch, in_ch, 3, 3], generator=g)
    styles = torch.randn([batch, in_ch], generator=g)
    return weight, styles


def per_sample(weight, styles, gain):
    """[N, O, I, 3, 3]: the modulated, demodulated weights the kernels form, times gain."""
    w = weight.unsqueeze(0) * styles[:, None, :, None, None]
    return w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt() * gain


def reference(x, weights, bias, noise, alpha, clamp, up, f=None):
    out = []
    for n in range(x.shape[0]):
        if up == 1:
            out.append(F.conv2d(x[n:n + 1], weights[n], padding=1))
        else:
            f = upfirdn2d.setup_filter([1, 3, 3, 1]) if f is None else f
            out.append(conv2d_resample.conv2d_resample(x[n:n + 1], weights[n], f=f, up=2, padding=1,
                                                       flip_weight=False))
    y = torch.cat(out) + bias.reshape(1, -1, 1, 1)
    if noise is not None:
        y = y + (noise.unsqueeze(1) if noise.ndim == 3 else noise)
    y = F.leaky_relu(y, alpha)
    return y.clamp(-clamp, clamp) if clamp is not None else y


@needs_kernels
@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('batch, in_ch, out_ch, size', [
    (1, 3, 1, 16), (2, 13, 13, 32), (3, 26, 17, 16), (2, 7, 33, 32), (1, 40, 40, 48),
    (2, 20, 18, 4), (3, 9, 16, 8), (1, 5, 7, 12)])  # 4-16 px rows: vectors of 4 or 8 lanes
@pytest.mark.parametrize('noise_kind', ['none', 'shared', 'per_sample'])
def test_kernels_match_the_pytorch_definition(up, batch, in_ch, out_ch, size, noise_kind):
    """Tiles of 1-16 channels and several tiles, edge columns, noise broadcasting, both clamps."""
    g = torch.Generator().manual_seed(batch * 1000 + in_ch * 10 + out_ch)
    x = torch.randn([batch, in_ch, size, size], generator=g)
    weight, styles = modulation(batch, in_ch, out_ch, g)
    bias = torch.randn([out_ch], generator=g)
    out_size = size * up
    noise = {'none': None, 'shared': torch.randn([out_size, out_size], generator=g),
             'per_sample': torch.randn([batch, out_size, out_size], generator=g)}[noise_kind]
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for clamp in (None, 0.5):
        got = narrow_conv.modulated_lrelu(x, weight, styles, bias, noise, 0.7, 1.3, 0.2, clamp, up=up,
                                          resample_filter=f)
        want = reference(x, per_sample(weight, styles, 1.3), 1.3 * bias, None if noise is None else 0.91 * noise,
                         0.2, clamp, up)
        assert got.shape == want.shape == (batch, out_ch, out_size, out_size)
        assert close(got, want)
    if clamp is not None:
        assert float(want.max()) == pytest.approx(0.5)  # the clamp was active


@needs_kernels
@pytest.mark.parametrize('size', [4, 8, 32])
def test_upsampling_kernel_takes_any_4x4_filter(size):
    """Asymmetric and non-separable filters too: the kernel convolves, as upfirdn2d does."""
    g = torch.Generator().manual_seed(size)
    x = torch.randn([2, 6, size, size], generator=g)
    weight, styles = modulation(2, 6, 5, g)
    bias = torch.randn([5], generator=g)
    for f in (upfirdn2d.setup_filter([1, 2, 3, 4]), torch.rand([4, 4], generator=g)):
        assert narrow_conv.applies(x, weight, 2, f)
        got = narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, 0.2, None, up=2, resample_filter=f)
        assert close(got, reference(x, per_sample(weight, styles, 1.0), bias, None, 0.2, None, 2, f=f))


@needs_kernels
def test_upsampling_kernel_with_large_inputs():
    """Inputs over 2 MiB per sample are tiled wider (up to 16 channels, even and odd columns in two passes)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn([1, 40, 128, 128], generator=g)  # 2.5 MiB
    weight, styles = modulation(1, 40, 33, g)  # tiles of 11 channels here, 10 for small inputs
    bias = torch.randn([33], generator=g)
    noise = torch.randn([256, 256], generator=g)
    got = narrow_conv.modulated_lrelu(x, weight, styles, bias, noise, 0.5, 1.0, 0.2, 0.8, up=2,
                                      resample_filter=upfirdn2d.setup_filter([1, 3, 3, 1]))
    assert close(got, reference(x, per_sample(weight, styles, 1.0), bias, 0.5 * noise, 0.2, 0.8, 2))


@needs_kernels
@pytest.mark.parametrize('alpha', [0.0, 1.0, 1.5, -0.3])
def test_kernels_take_any_leaky_slope(alpha):
    """Slopes in [0, 1] take lrelu as max(v, alpha * v); others the general form."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn([2, 6, 16, 16], generator=g)
    weight, styles = modulation(2, 6, 5, g)
    bias = torch.randn([5], generator=g)
    for up in (1, 2):
        got = narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, alpha, None, up=up,
                                          resample_filter=upfirdn2d.setup_filter([1, 3, 3, 1]))
        assert close(got, reference(x, per_sample(weight, styles, 1.0), bias, None, alpha, None, up))


@needs_kernels
def test_plain_kernel_handles_widths_that_are_not_whole_vectors():
    """The 3x3 kernel itself accepts any width (edge columns gathered); applies() keeps such layers off it."""
    x = torch.randn([2, 5, 9, 21])
    weight, styles = modulation(2, 5, 4, torch.Generator().manual_seed(1))
    bias = torch.randn([4])
    got = plugin.conv3x3_lrelu(x, weight, styles, bias, torch.empty([0]), 0.0, 1.0, 0.2, float('inf'))
    assert close(got, reference(x, per_sample(weight, styles, 1.0), bias, None, 0.2, None, 1))
    assert not narrow_conv.applies(x, weight, 1, None)


@needs_kernels
def test_applies_only_to_float32_cpu_3x3_layers_up_to_the_channel_limit():
    width = narrow_conv.vector_width()
    assert width in (8, 16)
    x = torch.randn([1, 8, width, width])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert narrow_conv.applies(x, torch.randn([narrow_conv.MAX_CHANNELS, 8, 3, 3]), 1, None)
    assert narrow_conv.applies(x, torch.randn([4, 8, 3, 3]), 2, f)
    assert not narrow_conv.applies(x, torch.randn([narrow_conv.MAX_CHANNELS + 1, 8, 3, 3]), 1, None)
    assert not narrow_conv.applies(x.double(), torch.randn([4, 8, 3, 3]).double(), 1, None)
    assert not narrow_conv.applies(x, torch.randn([4, 8, 1, 1]), 1, None)
    assert not narrow_conv.applies(x, torch.randn([4, 8, 3, 3]), 2, upfirdn2d.setup_filter([1, 3, 1]))
    assert not narrow_conv.applies(x, torch.randn([4, 8, 3, 3]), 4, f)
    assert narrow_conv.applies(torch.randn([1, 8, 4, 4]), torch.randn([4, 8, 3, 3]), 2, f)  # 4-lane rows
    assert not narrow_conv.applies(torch.randn([1, 8, 6, 6]), torch.randn([4, 8, 3, 3]), 1, None)


@needs_kernels
@pytest.mark.parametrize('batch, channels, size, image_channels', [
    (4, 13, 32, 3), (2, 40, 16, 3), (1, 7, 4, 3), (3, 5, 8, 1), (2, 9, 6, 4), (2, 3, 10, 2)])
@pytest.mark.parametrize('with_skip', [True, False])
def test_block_output_kernel_matches_the_separate_steps(batch, channels, size, image_channels, with_skip):
    """toRGB (1x1 modulated conv, bias, clamp) plus the upsampled skip image, widths of any size."""
    g = torch.Generator().manual_seed(size * 10 + channels)
    x = torch.randn([batch, channels, size, size], generator=g)
    weight = torch.randn([image_channels, channels, 1, 1], generator=g)
    styles = torch.randn([batch, channels], generator=g)
    bias = torch.randn([image_channels], generator=g)
    img = torch.randn([batch, image_channels, size // 2, size // 2], generator=g) if with_skip else None
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert narrow_conv.rgb_applies(x, weight, img, f)
    for clamp in (None, 0.5):
        want = torch.einsum('kc,nc,nchw->nkhw', weight[:, :, 0, 0], styles * 0.3, x) + bias.reshape(1, -1, 1, 1)
        want = want.clamp(-clamp, clamp) if clamp is not None else want
        if with_skip:
            want = want + upfirdn2d.upsample2d(img, f)
        got = narrow_conv.rgb_skip(x, weight, styles, 0.3, bias, clamp, img, f)
        assert got.shape == want.shape and close(got, want)


@needs_kernels
def test_block_output_kernel_declines_what_it_cannot_do():
    x, img = torch.randn([1, 4, 8, 8]), torch.randn([1, 3, 4, 4])
    weight, styles, bias = torch.randn([3, 4, 1, 1]), torch.randn([1, 4]), torch.zeros([3])
    not_separable = torch.eye(4) + 0.1
    assert narrow_conv.rgb_skip(x, weight, styles, 1.0, bias, None, img, not_separable) is None
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert not narrow_conv.rgb_applies(x, torch.randn([5, 4, 1, 1]), None, f)  # more than 4 image channels
    assert not narrow_conv.rgb_applies(x, weight, torch.randn([1, 3, 8, 8]), f)  # image of the wrong size
    assert not narrow_conv.rgb_applies(x.double(), weight, None, f)


@needs_kernels
@pytest.mark.parametrize('activation', ['linear', 'lrelu', 'relu'])
@pytest.mark.parametrize('rows, in_features, out_features', [(1, 512, 13), (4, 512, 512), (16, 37, 20), (3, 8, 3)])
def test_small_batch_linear_matches_the_matmul(activation, rows, in_features, out_features):
    torch.manual_seed(rows + in_features)
    layer = networks.FullyConnectedLayer(in_features, out_features, activation=activation, lr_multiplier=0.01,
                                         bias_init=1).eval().requires_grad_(False)
    layer.bias.data.normal_()
    x = torch.randn([rows, in_features])
    assert narrow_conv.linear_applies(x, layer.weight, activation)
    got = narrow_conv.small_batch_linear(x, *_kernel_args(layer))
    want = layer(x)
    assert got.shape == want.shape and close(got, want)
    assert not narrow_conv.linear_applies(torch.randn([17, in_features]), layer.weight, activation)
    assert not narrow_conv.linear_applies(x, layer.weight, 'tanh')


@needs_kernels
@pytest.mark.parametrize('chain', [False, True])
def test_several_linear_layers_in_one_call_match_the_layers(chain):
    torch.manual_seed(3)
    sizes = [(24, 24, 'lrelu'), (24, 24, 'linear'), (24, 9, 'relu')]
    layers = [networks.FullyConnectedLayer(i, o, activation=a, lr_multiplier=0.1, bias_init=0.5).requires_grad_(False)
              for i, o, a in sizes]
    layers[1].bias = None
    ws = torch.randn([3, 4, 24])
    xs = [ws[:, 0]] if chain else [ws[:, 1], ws[:, 2], ws[:, 3]]  # strided views, as the affines get them
    got = narrow_conv.small_batch_linears(xs, [_kernel_args(layer) for layer in layers], chain=chain)
    want, x = [], xs[0]
    for i, layer in enumerate(layers):
        x = layer(x if chain else xs[i])
        want.append(x)
    assert len(got) == 3 and all(g.shape == w.shape and close(g, w) for g, w in zip(got, want))
    with pytest.raises(RuntimeError, match='one weight'):
        narrow_conv.small_batch_linears(xs[:1] * 2, [_kernel_args(layer) for layer in layers], chain=True)


@needs_kernels
def test_output_buffers_are_reused_only_after_release():
    narrow_conv.clear_cache()
    assert plugin.cached_bytes() == 0
    x = torch.randn([2, 4, 16, 16])
    weight, styles = modulation(2, 4, 6, torch.Generator().manual_seed(2))
    bias = torch.zeros([6])
    a = narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, 0.2, None)
    b = narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, 0.2, None)
    assert a.data_ptr() != b.data_ptr()  # both alive: distinct memory
    kept = a.clone()
    pointer = b.data_ptr()
    del b
    assert plugin.cached_bytes() == 2 * 6 * 16 * 16 * 4
    c = narrow_conv.modulated_lrelu(2 * x, weight, styles, bias, None, 0.0, 1.0, 0.2, None)
    assert c.data_ptr() == pointer  # the released buffer came back
    assert torch.equal(a, kept)  # and the live output was not touched
    del a, c
    narrow_conv.clear_cache()
    assert plugin.cached_bytes() == 0


@needs_kernels
def test_built_library_is_found_without_rebuilding():
    sources, build_kwargs = narrow_conv._build_args()
    assert custom_ops.is_built('narrow_conv_plugin', sources, **build_kwargs)
    assert not custom_ops.is_built('narrow_conv_plugin', sources, extra_cflags=['-O0'])


def test_environment_switch_disables_the_kernels():
    script = textwrap.dedent('''
        from torch_utils.ops import narrow_conv
        assert narrow_conv.kernels() is None
        assert 'unavailable' in narrow_conv.describe('cpu')
        print('ok')
    ''')
    env = dict(os.environ, TORCH_UTILS_CPU_KERNELS='0')
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@needs_kernels
def test_buffer_cache_keeps_the_most_recently_released_within_its_limit():
    """Released buffers of one network's sizes make way for another network's, least recent first."""
    x = torch.randn([1, 1, 16, 16])
    weight, styles = modulation(1, 1, 8, torch.Generator().manual_seed(3))
    bias = torch.zeros([8])
    one = 8 * 16 * 16 * 4  # bytes of one [1, 8, 16, 16] output
    try:
        plugin.set_cache_limit(3 * one)
        a, b, c = (narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, 0.2, None) for _ in range(3))
        last = c.data_ptr()
        del a, b, c  # released in this order
        assert plugin.cached_bytes() == 3 * one
        wide = narrow_conv.modulated_lrelu(torch.randn([1, 1, 16, 32]), weight, styles, bias, None, 0.0, 1.0, 0.2,
                                           None)  # a new size, twice as large
        del wide
        assert plugin.cached_bytes() == 3 * one  # the two oldest small buffers were freed for it
        again = narrow_conv.modulated_lrelu(x, weight, styles, bias, None, 0.0, 1.0, 0.2, None)
        assert again.data_ptr() == last  # the most recently released small buffer is the one left
    finally:
        plugin.set_cache_limit(256 * 2 ** 20)


@pytest.mark.skipif(plugin is None or not sys.platform.startswith('linux') or os.uname().machine != 'x86_64',
                    reason='cross-checks the AVX2 build on x86-64 Linux, where the kernels build')
def test_avx2_build_matches_the_definition_too(tmp_path):
    """Machines without AVX-512 compile the 8-lane variant (other lane shifts, 12-channel tiles): check it here."""
    sources, build_kwargs = narrow_conv._build_args()
    flags = [f for f in build_kwargs['extra_cflags'] if not f.startswith('-march')] + ['-march=x86-64-v3']
    try:
        avx2 = custom_ops.get_plugin('narrow_conv_avx2_check', sources, extra_cflags=flags,
                                     extra_ldflags=build_kwargs['extra_ldflags'])
    except custom_ops.PluginUnavailableError as error:
        pytest.skip(f'no AVX2 build here: {error}')
    assert avx2.vector_width() == 8
    g = torch.Generator().manual_seed(3)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for batch, in_ch, out_ch, size in [(2, 5, 13, 24), (1, 30, 25, 8), (3, 2, 1, 16), (2, 6, 5, 4), (1, 40, 13, 128)]:
        x = torch.randn([batch, in_ch, size, size], generator=g)
        weight, styles = modulation(batch, in_ch, out_ch, g)
        weights = per_sample(weight, styles, 1.0)
        bias = torch.randn([out_ch], generator=g)
        noise = torch.randn([batch, 2 * size, 2 * size], generator=g)
        got = avx2.conv3x3_lrelu(x, weight, styles, bias, torch.empty([0]), 0.0, 1.0, 0.2, 0.7)
        assert close(got, reference(x, weights, bias, None, 0.2, 0.7, 1))
        got = avx2.up3x3_fir_lrelu(x, weight, styles, f, bias, noise, 1.0, 1.0, 0.2, float('inf'))
        assert close(got, reference(x, weights, bias, noise, 0.2, None, 2))
