"""Implementation selection, logging, and agreement of the fast paths with the literal op definitions."""
import glob
import logging
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_utils.ops as ops
from torch_utils import custom_ops
from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


# ------------------------------------------------------------------------------------------------------------------
# Literal definitions (slow, obviously correct) to compare the shipped paths against.

def definition_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Zero insertion, explicit pad/crop, a dense per-channel convolution by loops over taps, subsampling."""
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    if isinstance(padding, int):
        padding = [padding] * 4
    if len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    x0, x1, y0, y1 = padding
    if f is None:
        f = torch.ones([1, 1])
    f = (f * gain ** (f.ndim / 2)).to(x.dtype)
    if f.ndim == 1:
        f = torch.outer(f, f)
    if not flip_filter:
        f = f.flip([0, 1])  # correlation with the flipped filter == true convolution
    N, C, H, W = x.shape
    stuffed = x.new_zeros([N, C, H * upy, W * upx])
    stuffed[:, :, ::upy, ::upx] = x
    padded = stuffed.new_zeros([N, C, H * upy + max(y0, 0) + max(y1, 0), W * upx + max(x0, 0) + max(x1, 0)])
    padded[:, :, max(y0, 0): max(y0, 0) + H * upy, max(x0, 0): max(x0, 0) + W * upx] = stuffed
    padded = padded[:, :, max(-y0, 0): padded.shape[2] - max(-y1, 0), max(-x0, 0): padded.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    out_h, out_w = padded.shape[2] - fh + 1, padded.shape[3] - fw + 1
    out = padded.new_zeros([N, C, out_h, out_w])
    for i in range(fh):
        for j in range(fw):
            out = out + f[i, j] * padded[:, :, i: i + out_h, j: j + out_w]
    return out[:, :, ::downy, ::downx]


def definition_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True,
                               flip_filter=False):
    """Pad (total padding), upsample with f, valid conv with w, downsample with f: the spec's definition."""
    fw = fh = 1 if f is None else f.shape[-1]
    if f is not None and f.ndim == 2:
        fh = f.shape[0]
    if isinstance(padding, int):
        padding = [padding] * 4
    if len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1, py0, py1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    x = definition_upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                             flip_filter=flip_filter)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = definition_upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def _max_rel_error(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


# ------------------------------------------------------------------------------------------------------------------
# Dispatch.

def test_invalid_impl_is_rejected():
    x = torch.zeros([1, 2, 4, 4])
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, impl='plugin')
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, upfirdn2d.setup_filter([1, 1]), impl='triton')


def test_cpu_never_compiles_and_both_impls_agree(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('a plugin build was attempted on CPU')
    monkeypatch.setattr(custom_ops, 'get_plugin', refuse)
    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setattr(cpp_extension, 'load', refuse)

    torch.manual_seed(0)
    x = torch.randn([2, 3, 8, 8])
    b = torch.randn([3])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for act in bias_act.activation_funcs:
        assert torch.equal(bias_act.bias_act(x, b, act=act, impl='cuda'), bias_act.bias_act(x, b, act=act, impl='ref'))
    assert torch.equal(upfirdn2d.upsample2d(x, f, impl='cuda'), upfirdn2d.upsample2d(x, f, impl='ref'))
    assert torch.equal(upfirdn2d.downsample2d(x, f, impl='cuda'), upfirdn2d.downsample2d(x, f, impl='ref'))


def test_implementation_is_logged_once_per_op_and_device(monkeypatch, caplog):
    monkeypatch.setattr(ops, '_reported', set())
    x = torch.randn([1, 2, 4, 4])
    with caplog.at_level(logging.INFO, logger='torch_utils.ops'):
        for _ in range(3):
            bias_act.bias_act(x, torch.zeros([2]), act='lrelu')
            upfirdn2d.filter2d(x, upfirdn2d.setup_filter([1, 2, 1]))
    records = [r for r in caplog.records if r.name == 'torch_utils.ops']
    messages = [r.getMessage() for r in records]
    assert len(records) == 2, messages
    assert all(r.levelno == logging.INFO for r in records)
    assert any(m.startswith('bias_act on cpu') for m in messages)
    assert any(m.startswith('upfirdn2d on cpu') for m in messages)


@pytest.mark.parametrize('device_type', ['cpu', 'cuda'])
def test_describe_implementation_names_every_op(device_type):
    description = ops.describe_implementation(device_type)
    assert set(description) == {'bias_act', 'upfirdn2d', 'conv2d_resample', 'fma', 'conv2d_gradfix',
                                'grid_sample_gradfix', 'narrow_conv'}
    assert all(isinstance(v, str) and v for v in description.values())
    if device_type == 'cpu':
        assert 'reference' in description['bias_act'] and 'reference' in description['upfirdn2d']


@needs_cuda
def test_cuda_fast_path_matches_cpu():
    torch.manual_seed(0)
    x = torch.randn([2, 5, 9, 11], dtype=torch.float64)
    b = torch.randn([5], dtype=torch.float64)
    w = torch.randn([4, 5, 3, 3], dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    cpu = [bias_act.bias_act(x, b, act='lrelu', clamp=0.5), upfirdn2d.upsample2d(x, f),
           conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)]
    gpu = [bias_act.bias_act(x.cuda(), b.cuda(), act='lrelu', clamp=0.5), upfirdn2d.upsample2d(x.cuda(), f.cuda()),
           conv2d_resample.conv2d_resample(x.cuda(), w.cuda(), f=f.cuda(), up=2, padding=1, flip_weight=False)]
    for a, b_ in zip(cpu, gpu):
        assert _max_rel_error(b_.cpu(), a) < 1e-12


# ------------------------------------------------------------------------------------------------------------------
# Fast paths against the definitions.

def _random_upfirdn2d_cases(count):
    rnd = np.random.RandomState(123)
    for _ in range(count):
        filter_kind = rnd.choice(['2d', '1d', 'none'])
        fh, fw = rnd.randint(1, 6, size=2)
        if filter_kind == '2d':
            f = torch.from_numpy(rnd.rand(fh, fw).astype(np.float32))
        elif filter_kind == '1d':
            f = torch.from_numpy(rnd.rand(fw).astype(np.float32))
        else:
            f = None
        up = [int(v) for v in rnd.randint(1, 4, size=2)]
        down = [int(v) for v in rnd.randint(1, 4, size=2)]
        padding = [int(v) for v in rnd.randint(-2, 5, size=4)]
        yield dict(f=f, up=up, down=down, padding=padding, flip_filter=bool(rnd.rand() < 0.5),
                   gain=float(rnd.choice([1, 2.5])))


@pytest.mark.parametrize('case_index', range(40))
def test_upfirdn2d_matches_definition(case_index):
    case = list(_random_upfirdn2d_cases(40))[case_index]
    torch.manual_seed(case_index)
    x = torch.randn([2, 3, 7, 6], dtype=torch.float64, requires_grad=True)
    out = upfirdn2d.upfirdn2d(x, **case)
    expected = definition_upfirdn2d(x, **case)
    assert out.shape == expected.shape
    assert _max_rel_error(out, expected) < 1e-12
    r = torch.randn_like(expected)
    grad, = torch.autograd.grad((out * r).sum(), x)
    grad_expected, = torch.autograd.grad((expected * r).sum(), x)
    assert _max_rel_error(grad, grad_expected) < 1e-12


@pytest.mark.parametrize('channels', [3, 8])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_upfirdn2d_float32_paths_keep_layout_and_values(channels, memory_format):
    torch.manual_seed(1)
    x = torch.randn([2, channels, 10, 12]).contiguous(memory_format=memory_format)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for out, expected in [(upfirdn2d.upsample2d(x, f), definition_upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)),
                          (upfirdn2d.downsample2d(x, f), definition_upfirdn2d(x, f, down=2, padding=1)),
                          (upfirdn2d.filter2d(x, f), definition_upfirdn2d(x, f, padding=[2, 1, 2, 1]))]:
        assert _max_rel_error(out, expected) < 2e-6
        assert out.is_contiguous(memory_format=memory_format)


def test_upfirdn2d_output_never_aliases_input():
    x = torch.randn([1, 2, 5, 5])
    out = upfirdn2d.upfirdn2d(x, None, padding=[-1, 0, 0, 0])
    out.zero_()
    assert x.abs().sum() > 0
    out = upfirdn2d.upfirdn2d(x, None)
    assert out.data_ptr() != x.data_ptr() and torch.equal(out, x)


def _random_conv_cases(count):
    rnd = np.random.RandomState(7)
    filters = [None, upfirdn2d.setup_filter([1, 3, 3, 1]), torch.from_numpy(rnd.rand(4, 4).astype(np.float32)),
               torch.from_numpy(rnd.rand(3, 2).astype(np.float32)), upfirdn2d.setup_filter([1, 2, 1], separable=True)]
    for _ in range(count):
        f = filters[rnd.randint(len(filters))]
        up, down = int(rnd.choice([1, 2, 3])), int(rnd.choice([1, 2]))
        if f is None:
            up = down = 1
        kh, kw = [int(v) for v in rnd.choice([1, 2, 3], size=2)]
        if rnd.rand() < 0.3:
            kh = kw = 1
        padding = [int(v) for v in rnd.randint(-1, 3, size=4)] if rnd.rand() < 0.5 else int(rnd.randint(0, 3))
        yield dict(f=f, up=up, down=down, padding=padding, groups=int(rnd.choice([1, 2])), kh=kh, kw=kw,
                   flip_weight=bool(rnd.rand() < 0.5), flip_filter=bool(rnd.rand() < 0.5))


@pytest.mark.parametrize('case_index', range(40))
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_conv2d_resample_matches_definition(case_index, dtype):
    case = dict(list(_random_conv_cases(40))[case_index])
    kh, kw, groups = case.pop('kh'), case.pop('kw'), case['groups']
    torch.manual_seed(case_index)
    x = torch.randn([2, 4, 9, 8], dtype=dtype, requires_grad=True)
    w = torch.randn([6, 4 // groups, kh, kw], dtype=dtype, requires_grad=True)
    expected = definition_conv2d_resample(x, w, **case)
    if min(expected.shape[2:]) <= 0:
        pytest.skip('padding leaves no output pixels')
    out = conv2d_resample.conv2d_resample(x, w, **case)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    assert out.shape == expected.shape
    assert _max_rel_error(out, expected) < tolerance
    r = torch.randn_like(expected)
    grads = torch.autograd.grad((out * r).sum(), [x, w])
    grads_expected = torch.autograd.grad((expected * r).sum(), [x, w])
    for grad, grad_expected in zip(grads, grads_expected):
        assert _max_rel_error(grad, grad_expected) < tolerance * 10


def test_conv2d_resample_cpu_float32_inference_returns_channels_last():
    x = torch.randn([2, 4, 8, 8])
    w = torch.randn([5, 4, 3, 3])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expected = definition_conv2d_resample(x.double(), w.double(), f=f, up=2, padding=1)
    out = conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _max_rel_error(out.double(), expected) < 2e-6
    # With autograd the caller's layout is kept (faster backward); the values are the same.
    trained = conv2d_resample.conv2d_resample(x, w.clone().requires_grad_(True), f=f, up=2, padding=1)
    assert trained.is_contiguous() and not trained.is_contiguous(memory_format=torch.channels_last)
    assert _max_rel_error(trained.double(), expected) < 2e-6


def test_conv2d_resample_second_order_gradients():
    x = torch.randn([1, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    w = torch.randn([2, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for up, down in [(2, 1), (1, 2)]:
        assert torch.autograd.gradgradcheck(
            lambda x, w: conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=1, flip_weight=False),
            (x, w), fast_mode=True)


# ------------------------------------------------------------------------------------------------------------------
# bias_act.

@pytest.mark.parametrize('act', sorted(bias_act.activation_funcs))
def test_bias_act_no_grad_path_matches_autograd_path(act):
    torch.manual_seed(0)
    x = torch.randn([2, 5, 4, 3], dtype=torch.float64)
    b = torch.randn([5], dtype=torch.float64)
    x_before = x.clone()
    with torch.no_grad():
        fast = bias_act.bias_act(x, b, act=act, gain=1.7, clamp=0.9)
    assert torch.equal(x, x_before), 'bias_act modified its input'
    slow = bias_act.bias_act(x.clone().requires_grad_(True), b, act=act, gain=1.7, clamp=0.9)
    spec = bias_act.activation_funcs[act]
    expected = (spec.func(x + b.reshape(1, -1, 1, 1), spec.def_alpha) * 1.7).clamp(-0.9, 0.9)
    assert _max_rel_error(fast, expected) < 1e-14
    assert _max_rel_error(slow.detach(), expected) < 1e-14


def test_bias_act_defaults_dims_and_validation():
    x = torch.randn([3, 4, 5])
    b = torch.randn([5])
    assert torch.allclose(bias_act.bias_act(x, b, dim=-1, act='relu'), F.relu(x + b) * np.sqrt(2), atol=1e-6)
    assert torch.equal(bias_act.bias_act(x), x)
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, b, dim=1)  # wrong length for dim 1
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, clamp=-1)
    with pytest.raises(KeyError):
        bias_act.bias_act(x, act='gelu')


@pytest.mark.parametrize('act', [name for name, spec in bias_act.activation_funcs.items() if spec.has_2nd_grad])
def test_bias_act_second_order_gradients(act):
    x = torch.randn([2, 3, 2, 2], dtype=torch.float64, requires_grad=True)
    b = torch.randn([3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3), (x, b))


# ------------------------------------------------------------------------------------------------------------------
# fma, gradfix convs, grid_sample.

def test_fma_reduces_gradients_to_operand_shapes_and_is_twice_differentiable():
    a = torch.randn([2, 3, 1, 1], dtype=torch.float64, requires_grad=True)
    b = torch.randn([3, 4, 5], dtype=torch.float64, requires_grad=True)
    c = torch.randn([1, 1, 4, 1], dtype=torch.float64, requires_grad=True)
    out = fma.fma(a, b, c)
    assert torch.equal(out, torch.addcmul(c, a, b))
    grads = torch.autograd.grad(out.sum(), [a, b, c])
    assert [g.shape for g in grads] == [a.shape, b.shape, c.shape]
    assert torch.autograd.gradcheck(fma.fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma.fma, (a, b, c))


def test_no_weight_gradients_sets_and_restores_the_flag():
    assert conv2d_gradfix.weight_gradients_disabled is False
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled is True
        with conv2d_gradfix.no_weight_gradients():
            assert conv2d_gradfix.weight_gradients_disabled is True
        assert conv2d_gradfix.weight_gradients_disabled is True
    assert conv2d_gradfix.weight_gradients_disabled is False
    with pytest.raises(RuntimeError):
        with conv2d_gradfix.no_weight_gradients():
            raise RuntimeError('boom')
    assert conv2d_gradfix.weight_gradients_disabled is False


def test_gradfix_convs_match_torch_and_differentiate_twice(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    x = torch.randn([1, 4, 6, 6], dtype=torch.float64, requires_grad=True)
    w = torch.randn([6, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    assert torch.equal(conv2d_gradfix.conv2d(x, w, stride=2, padding=1, groups=2),
                       F.conv2d(x, w, stride=2, padding=1, groups=2))
    wt = torch.randn([4, 3, 3, 3], dtype=torch.float64, requires_grad=True)
    assert torch.equal(conv2d_gradfix.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1, groups=2),
                       F.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1, groups=2))
    # Path-length style: gradient w.r.t. the input only, then differentiate it again w.r.t. the weight.
    with conv2d_gradfix.no_weight_gradients():
        gx, = torch.autograd.grad((conv2d_gradfix.conv2d(x, w, groups=2) ** 2).sum(), [x], create_graph=True)
    gw, = torch.autograd.grad(gx.square().sum(), [w])
    assert gw.shape == w.shape and gw.abs().sum() > 0


def test_grid_sample_matches_torch_and_differentiates_twice(monkeypatch):
    monkeypatch.setattr(grid_sample_gradfix, 'enabled', True)
    x = torch.randn([2, 3, 5, 6], dtype=torch.float64, requires_grad=True)
    grid = torch.rand([2, 4, 4, 2], dtype=torch.float64) * 2.2 - 1.1
    expected = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    assert torch.equal(grid_sample_gradfix.grid_sample(x, grid), expected)
    assert torch.autograd.gradgradcheck(lambda x: grid_sample_gradfix.grid_sample(x, grid), (x,))


# ------------------------------------------------------------------------------------------------------------------
# custom_ops.

def test_get_plugin_reports_missing_sources(tmp_path):
    assert custom_ops.verbosity in ('none', 'brief', 'full')
    with pytest.raises(custom_ops.PluginUnavailableError, match='does not exist'):
        custom_ops.get_plugin('missing_plugin', sources=[str(tmp_path / 'nope.cpp')])


def test_get_plugin_reports_missing_ninja_without_building(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    source = tmp_path / 'op.cpp'
    source.write_text('int answer() { return 42; }\n')
    monkeypatch.setattr(cpp_extension, 'is_ninja_available', lambda: False)
    monkeypatch.setattr(cpp_extension, 'load', lambda *a, **k: pytest.fail('build attempted'))
    with pytest.raises(custom_ops.PluginUnavailableError, match='ninja'):
        custom_ops.get_plugin('no_ninja_plugin', sources=[str(source)])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the behaviour without a CUDA device')
def test_get_plugin_refuses_cuda_sources_without_a_device(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    source = tmp_path / 'op.cu'
    source.write_text('__global__ void k() {}\n')
    monkeypatch.setattr(cpp_extension, 'is_ninja_available', lambda: True)
    monkeypatch.setattr(cpp_extension, 'load', lambda *a, **k: pytest.fail('build attempted'))
    with pytest.raises(custom_ops.PluginUnavailableError, match='cannot build cu_plugin'):
        custom_ops.get_plugin('cu_plugin', sources=[str(source)])


def test_get_plugin_builds_once_into_a_content_addressed_dir(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    source = tmp_path / 'op.cpp'
    source.write_text('int answer() { return 42; }\n')
    calls = []

    def fake_load(name, sources, build_directory, verbose, **kwargs):
        calls.append(dict(name=name, sources=sources, build_directory=build_directory, verbose=verbose, **kwargs))
        return f'module:{name}'

    monkeypatch.setattr(cpp_extension, 'is_ninja_available', lambda: True)
    monkeypatch.setattr(cpp_extension, 'load', fake_load)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    monkeypatch.setattr(custom_ops, 'verbosity', 'none')
    monkeypatch.setattr(custom_ops, '_cached_plugins', {})
    module = custom_ops.get_plugin('answer_plugin', sources=[str(source)], extra_cflags=['-O2'])
    assert module == 'module:answer_plugin'
    assert custom_ops.get_plugin('answer_plugin', sources=[str(source)]) == module  # cached
    assert len(calls) == 1
    assert calls[0]['extra_cflags'] == ['-O2'] and calls[0]['verbose'] is False
    assert calls[0]['build_directory'].startswith(str(tmp_path / 'ext' / 'answer_plugin_'))

    # Changing the source gives a different build directory.
    monkeypatch.setattr(custom_ops, '_cached_plugins', {})
    source.write_text('int answer() { return 43; }\n')
    custom_ops.get_plugin('answer_plugin', sources=[str(source)], extra_cflags=['-O2'])
    assert calls[1]['build_directory'] != calls[0]['build_directory']


def test_get_plugin_turns_build_failures_into_one_clear_error(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    source = tmp_path / 'op.cpp'
    source.write_text('this is not C++\n')

    def failing_load(**kwargs):
        raise RuntimeError('Error building extension\nline 2: expected declaration')

    monkeypatch.setattr(cpp_extension, 'is_ninja_available', lambda: True)
    monkeypatch.setattr(cpp_extension, 'load', failing_load)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    monkeypatch.setattr(custom_ops, 'verbosity', 'none')
    with pytest.raises(custom_ops.PluginUnavailableError, match='expected declaration'):
        custom_ops.get_plugin('broken_plugin', sources=[str(source)])
    assert 'broken_plugin' not in custom_ops._cached_plugins


def test_build_dir_is_keyed_by_the_cpu_instruction_set(tmp_path, monkeypatch):
    source = tmp_path / 'op.cpp'
    source.write_text('int answer() { return 42; }\n')
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    dirs = {}
    for isa in ('x86_64:AVX2:avx,avx2,fma', 'x86_64:AVX512:avx,avx2,avx512f,fma', 'x86_64:AVX2:avx,avx2,fma'):
        monkeypatch.setattr(custom_ops, 'cpu_isa', lambda isa=isa: isa)
        dirs.setdefault(isa, set()).add(custom_ops._build_dir('isa_plugin', [str(source)], {}))
    assert all(len(d) == 1 for d in dirs.values())  # the same machine keeps its key
    assert dirs['x86_64:AVX2:avx,avx2,fma'] != dirs['x86_64:AVX512:avx,avx2,avx512f,fma']
    # An AVX-512 library in the cache is not one an AVX2 machine loads.
    monkeypatch.setattr(custom_ops, 'cpu_isa', lambda: 'x86_64:AVX512:avx,avx2,avx512f,fma')
    built = custom_ops._build_dir('isa_plugin', [str(source)], {})
    os.makedirs(built)
    (tmp_path / 'ext' / os.path.basename(built) / 'isa_plugin.so').write_bytes(b'')
    assert custom_ops.is_built('isa_plugin', [str(source)])
    monkeypatch.setattr(custom_ops, 'cpu_isa', lambda: 'x86_64:AVX2:avx,avx2,fma')
    assert not custom_ops.is_built('isa_plugin', [str(source)])


def test_cpu_isa_names_the_vector_extensions(monkeypatch):
    monkeypatch.setattr(custom_ops, '_cpuinfo_flags', lambda: ['fpu', 'avx2', 'fma', 'ht', 'avx512f'])
    isa = custom_ops.cpu_isa()
    assert 'avx2' in isa and 'avx512f' in isa and 'fma' in isa and 'ht' not in isa.split(':')[-1].split(',')


TINY_EXTENSION = '''
#include <Python.h>
#define JOIN(a, b) a##b
#define INIT(name) JOIN(PyInit_, name)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "tiny", nullptr, -1, methods};
PyMODINIT_FUNC INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&definition); }
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='builds a tiny extension with the system compiler')
def test_leftovers_of_a_killed_build_neither_block_nor_load(tmp_path, monkeypatch):
    import socket
    import subprocess
    import torch.utils.cpp_extension as cpp_extension
    source = tmp_path / 'tiny.cpp'
    source.write_text(TINY_EXTENSION)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    monkeypatch.setattr(custom_ops, 'verbosity', 'none')
    monkeypatch.setattr(custom_ops, '_cached_plugins', {})
    build_dir = custom_ops._build_dir('tiny_plugin', [str(source)], {})
    # What a build killed half-way leaves: the old-style lock file and half the objects in the cache folder, and
    # a private build folder of a process that is gone.
    dead = subprocess.Popen(['true'])
    dead.wait()
    os.makedirs(build_dir)
    (tmp_path / 'ext' / os.path.basename(build_dir) / 'lock').write_bytes(b'')
    (tmp_path / 'ext' / os.path.basename(build_dir) / 'tiny.o').write_bytes(b'half')
    abandoned = f'{build_dir}.build-{socket.gethostname()}-{dead.pid}-x1y2'
    os.makedirs(abandoned)
    open(os.path.join(abandoned, 'lock'), 'w').close()
    if custom_ops._missing_tools([str(source)]) is not None:
        pytest.skip('no build tools here')
    assert not custom_ops.is_built('tiny_plugin', [str(source)])  # objects are not a library
    module = custom_ops.get_plugin('tiny_plugin', sources=[str(source)])
    assert module.answer() == 42
    assert not os.path.exists(abandoned)
    assert custom_ops.is_built('tiny_plugin', [str(source)])
    assert not glob.glob(build_dir + '.build-*')  # the private folder is gone after the rename
    # Next process: loads the cached library, never the build tools.
    monkeypatch.setattr(custom_ops, '_cached_plugins', {})
    monkeypatch.setattr(cpp_extension, 'load', lambda *a, **k: pytest.fail('rebuilt a cached library'))
    monkeypatch.setattr(cpp_extension, 'is_ninja_available', lambda: False)
    assert custom_ops.get_plugin('tiny_plugin', sources=[str(source)]).answer() == 42


# ------------------------------------------------------------------------------------------------------------------
# Replacing the reference path for a while (benchmarks compare their own implementations this way).

def test_replaced_reference_ops_run_inside_the_block_only():
    calls = []

    def counting(name, real):
        def run(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return run

    def lrelu_bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
        assert act == 'lrelu' and b is None and alpha is None and gain is None and clamp is None
        return F.leaky_relu(x, 0.2) * np.sqrt(2)

    x = torch.randn([1, 2, 8, 8])
    w = torch.randn([3, 2, 3, 3])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expected = (bias_act.bias_act(x, act='lrelu'), upfirdn2d.upsample2d(x, f),
                conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1))
    with ops.replaced_reference_ops(bias_act=counting('bias_act', lrelu_bias_act),
                                    upfirdn2d=counting('upfirdn2d', definition_upfirdn2d),
                                    conv2d_resample=counting('conv2d_resample', definition_conv2d_resample)):
        replaced = (bias_act.bias_act(x, act='lrelu'), upfirdn2d.upsample2d(x, f),
                    conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1))
    assert calls == ['bias_act', 'upfirdn2d', 'conv2d_resample']
    for a, b in zip(expected, replaced):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    bias_act.bias_act(x, act='lrelu')
    conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1)
    assert len(calls) == 3 and ops.replacement('bias_act') is None
    with pytest.raises(ValueError, match='replaceable ops'):
        with ops.replaced_reference_ops(fma=lambda *a: None):
            pass
