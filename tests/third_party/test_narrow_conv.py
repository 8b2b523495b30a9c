"""The compiled narrow-layer kernels agree with the PyTorch paths, are used where they apply, and fall back."""
import os
import subprocess
import sys
import textwrap

import numpy as np
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


def reference(x, weights, bias, noise, alpha, clamp, up):
    out = []
    for n in range(x.shape[0]):
        if up == 1:
            out.append(F.conv2d(x[n:n + 1], weights[n], padding=1))
        else:
            f = upfirdn2d.setup_filter([1, 3, 3, 1])
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
    (1, 3, 1, 16), (2, 13, 13, 32), (3, 26, 17, 16), (2, 7, 33, 32), (1, 40, 40, 48)])
@pytest.mark.parametrize('noise_kind', ['none', 'shared', 'per_sample'])
def test_kernels_match_the_pytorch_definition(up, batch, in_ch, out_ch, size, noise_kind):
    """Tiles of 1-16 channels and several tiles, edge columns, noise broadcasting, both clamps."""
    g = torch.Generator().manual_seed(batch * 1000 + in_ch * 10 + out_ch)
    x = torch.randn([batch, in_ch, size, size], generator=g)
    weights = torch.randn([batch, out_ch, in_ch, 3, 3], generator=g) / np.sqrt(in_ch * 9)
    bias = torch.randn([out_ch], generator=g)
    out_size = size * up
    noise = {'none': None, 'shared': torch.randn([out_size, out_size], generator=g),
             'per_sample': torch.randn([batch, out_size, out_size], generator=g)}[noise_kind]
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for clamp in (None, 0.5):
        got = narrow_conv.modulated_lrelu(x, weights, bias, noise, 0.2, clamp, up=up, resample_filter=f)
        want = reference(x, weights, bias, noise, 0.2, clamp, up)
        assert got.shape == want.shape == (batch, out_ch, out_size, out_size)
        assert close(got, want)
    if clamp is not None:
        assert float(want.max()) == pytest.approx(0.5)  # the clamp was active


@needs_kernels
def test_plain_kernel_handles_widths_that_are_not_whole_vectors():
    """The 3x3 kernel itself accepts any width (edge columns gathered); applies() keeps such layers off it."""
    x = torch.randn([2, 5, 9, 21])
    weights = torch.randn([2, 4, 5, 3, 3])
    bias = torch.randn([4])
    got = plugin.conv3x3_lrelu(x, weights.permute(0, 2, 3, 4, 1).contiguous(), bias, torch.empty([0]), 0.2,
                               float('inf'))
    assert close(got, reference(x, weights, bias, None, 0.2, None, 1))
    layer_weight = torch.randn([4, 5, 3, 3])
    assert not narrow_conv.applies(x, layer_weight, 1, None)


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
    assert not narrow_conv.applies(x, torch.randn([4, 8, 3, 3]), 2, upfirdn2d.setup_filter([1, 2, 3, 4]))
    assert not narrow_conv.applies(x, torch.randn([4, 8, 3, 3]), 4, f)


def _layer(in_ch, out_ch, resolution, up, seed=0):
    torch.manual_seed(seed)
    layer = networks.SynthesisLayer(in_ch, out_ch, w_dim=16, resolution=resolution, up=up, conv_clamp=0.4).eval()
    layer.noise_strength.data.fill_(0.3)
    layer.bias.data.normal_()
    return layer


def _without_kernels(monkeypatch):
    monkeypatch.setattr(networks, '_narrow_module', [None])


@needs_kernels
@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('noise_mode', ['const', 'random', 'none'])
def test_synthesis_layer_renders_the_same_with_and_without_kernels(up, noise_mode, monkeypatch):
    resolution = 2 * narrow_conv.vector_width() * up
    layer = _layer(12, 10, resolution, up)
    x = torch.randn([3, 12, resolution // up, resolution // up])
    w = torch.randn([3, 16])
    calls = []
    original = narrow_conv.modulated_lrelu
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        torch.manual_seed(5)
        fast = layer(x, w, noise_mode=noise_mode, gain=np.sqrt(0.5))
        assert calls, 'the kernel path was not taken'
        _without_kernels(monkeypatch)
        torch.manual_seed(5)  # the same noise draws on both paths
        slow = layer(x, w, noise_mode=noise_mode, gain=np.sqrt(0.5))
    assert close(fast, slow)
    assert float(slow.abs().max()) == pytest.approx(0.4 * np.sqrt(0.5))  # conv_clamp * gain reached


@needs_kernels
def test_layers_that_need_gradients_or_are_wide_do_not_use_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1))
    size = narrow_conv.vector_width()
    layer = _layer(4, 4, size, 1)
    out = layer(torch.randn([2, 4, size, size]), torch.randn([2, 16]))  # parameters require grad
    out.sum().backward()
    assert layer.weight.grad is not None
    wide = _layer(4, narrow_conv.MAX_CHANNELS + 1, size, 1)
    with torch.no_grad():
        wide(torch.randn([1, 4, size, size]), torch.randn([1, 16]))
    assert calls == []


@needs_kernels
def test_enabled_switch_turns_the_kernels_off_within_its_block(monkeypatch):
    calls = []
    original = narrow_conv.modulated_lrelu
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1) or original(*a, **k))
    size = narrow_conv.vector_width()
    layer = _layer(4, 4, size, 1)
    x, w = torch.randn([1, 4, size, size]), torch.randn([1, 16])
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            with narrow_conv.enabled(False):
                layer(x, w)
                assert calls == []
                raise RuntimeError('leaving the block early')
        layer(x, w)
    assert calls == [1]  # on again after the block, even though it raised


@needs_kernels
def test_generator_images_agree_with_and_without_kernels(monkeypatch):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, conv_clamp=256)).eval()
    for name, buf in G.named_buffers():
        if name.endswith('noise_const'):
            buf.normal_()
    for p in G.parameters():
        p.requires_grad_(False)
    z = torch.randn([3, 16])
    fast = G(z, None, noise_mode='const')
    _without_kernels(monkeypatch)
    slow = G(z, None, noise_mode='const')
    assert close(fast, slow)


@needs_kernels
def test_output_buffers_are_reused_only_after_release():
    narrow_conv.clear_cache()
    assert plugin.cached_bytes() == 0
    x = torch.randn([2, 4, 16, 16])
    weights = torch.randn([2, 6, 4, 3, 3])
    bias = torch.zeros([6])
    a = narrow_conv.modulated_lrelu(x, weights, bias, None, 0.2, None)
    b = narrow_conv.modulated_lrelu(x, weights, bias, None, 0.2, None)
    assert a.data_ptr() != b.data_ptr()  # both alive: distinct memory
    kept = a.clone()
    pointer = b.data_ptr()
    del b
    assert plugin.cached_bytes() == 2 * 6 * 16 * 16 * 4
    c = narrow_conv.modulated_lrelu(2 * x, weights, bias, None, 0.2, None)
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


def test_networks_work_without_the_kernels_module(monkeypatch):
    """The original torch_utils has no narrow_conv: the layers then keep the PyTorch paths."""
    def missing(name, *args, **kwargs):
        raise ImportError(name)
    monkeypatch.setattr(networks, '_narrow_module', [])
    monkeypatch.setattr(networks.importlib, 'import_module', missing)
    assert networks._narrow_kernels() is None
    layer = _layer(4, 4, 16, 2)
    with torch.no_grad():
        assert layer(torch.randn([1, 4, 8, 8]), torch.randn([1, 16]), noise_mode='const').shape == (1, 4, 16, 16)


def test_environment_switch_disables_the_kernels():
    script = textwrap.dedent('''
        from torch_utils.ops import narrow_conv
        from training import networks
        assert narrow_conv.kernels() is None
        assert networks._narrow_kernels() is None
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
    bias = torch.zeros([8])
    one = 8 * 16 * 16 * 4  # bytes of one [1, 8, 16, 16] output
    try:
        plugin.set_cache_limit(3 * one)
        a, b, c = (narrow_conv.modulated_lrelu(x, torch.randn([1, 8, 1, 3, 3]), bias, None, 0.2, None)
                   for _ in range(3))
        last = c.data_ptr()
        del a, b, c  # released in this order
        assert plugin.cached_bytes() == 3 * one
        wide = narrow_conv.modulated_lrelu(torch.randn([1, 1, 16, 32]), torch.randn([1, 8, 1, 3, 3]), bias, None,
                                           0.2, None)  # a new size, twice as large
        del wide
        assert plugin.cached_bytes() == 3 * one  # the two oldest small buffers were freed for it
        again = narrow_conv.modulated_lrelu(x, torch.randn([1, 8, 1, 3, 3]), bias, None, 0.2, None)
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
    for batch, in_ch, out_ch, size in [(2, 5, 13, 24), (1, 30, 25, 8), (3, 2, 1, 16)]:
        x = torch.randn([batch, in_ch, size, size], generator=g)
        weights = torch.randn([batch, out_ch, in_ch, 3, 3], generator=g) / np.sqrt(in_ch * 9)
        packed = weights.permute(0, 2, 3, 4, 1).contiguous()
        bias = torch.randn([out_ch], generator=g)
        noise = torch.randn([batch, 2 * size, 2 * size], generator=g)
        got = avx2.conv3x3_lrelu(x, packed, bias, torch.empty([0]), 0.2, 0.7)
        assert close(got, reference(x, weights, bias, None, 0.2, 0.7, 1))
        got = avx2.up3x3_fir_lrelu(x, packed, (f * 4).contiguous(), bias, noise, 0.2, float('inf'))
        assert close(got, reference(x, weights, bias, noise, 0.2, None, 2))
