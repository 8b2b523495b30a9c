"""The fused Triton bias_act / upfirdn2d kernels against the PyTorch reference path.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 must be set before
Triton is imported, hence in tests/conftest.py; TORCH_UTILS_TRITON_ON_CPU=1 lets the dispatch pick them for CPU
tensors). Tests marked `cuda` run the same comparisons on a real GPU.
"""
import logging
import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
pytest.importorskip('triton', reason='Triton is not installed with this torch')

from torch_utils.ops import bias_act, fused, upfirdn2d  # noqa: E402

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason='needs a CUDA device (tools/device_check.sh runs these)')
ACTIVATIONS = list(bias_act.activation_funcs)
DEVICE = 'cuda' if HAS_CUDA else 'cpu'


@pytest.fixture(autouse=True)
def fused_on_this_device(monkeypatch):
    """The kernels for DEVICE tensors: CUDA ones where there is a GPU, else CPU ones under the interpreter."""
    if HAS_CUDA:
        monkeypatch.delenv(fused.CPU_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(fused.CPU_VARIABLE, '1')
    monkeypatch.delenv(fused.GPU_OPS_VARIABLE, raising=False)
    if not HAS_CUDA:
        assert os.environ.get('TRITON_INTERPRET') == '1', 'tests/conftest.py sets TRITON_INTERPRET=1 without a GPU'
    assert fused.load() is not None, f'fused kernels did not load: {fused.status(DEVICE)}'


def _grads(outputs, inputs, grad_outputs, create_graph=False):
    """torch.autograd.grad with zeros (not None) for inputs the output does not depend on."""
    if not outputs.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    found = torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, found)]


def _close(actual, expected, tol):
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = max(1.0, float(expected.abs().max()))
    error = float((actual - expected).abs().max()) / scale
    assert error <= tol, f'max error {error:.3g} > {tol:.3g}'


def _first_and_second_order(op, x, b, grad_out, grad_grad):
    """Output, (dx, db), and the gradient of <dx, grad_grad> + <db, 1> with respect to (x, b, grad_out)."""
    y = op(x, b)
    dx, db = _grads(y, [x, b], grad_out, create_graph=True)
    target = (dx * grad_grad).sum() + db.sum()
    second = _grads(target, [x, b], None) if target.requires_grad else [torch.zeros_like(x), torch.zeros_like(b)]
    return y, (dx, db), second


def _compare_bias_act(shape, dim, act, dtype, tol, **kwargs):
    gen = torch.Generator().manual_seed(len(shape) * 31 + dim + ACTIVATIONS.index(act))
    x0 = torch.randn(shape, generator=gen, dtype=torch.float32) * 2
    b0 = torch.randn([shape[dim]], generator=gen, dtype=torch.float32)
    grad_out = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    grad_grad = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    results = {}
    for impl in ('cuda', 'ref'):
        # The reference runs in float32 even for half inputs: the kernels compute in float32 too.
        ref_dtype = torch.float32 if impl == 'ref' else dtype
        x = x0.to(DEVICE, dtype).to(ref_dtype).requires_grad_()
        b = b0.to(DEVICE, dtype).to(ref_dtype).requires_grad_()

        def op(x, b, impl=impl):
            return bias_act.bias_act(x, b, dim=dim, act=act, impl=impl, **kwargs)
        results[impl] = _first_and_second_order(op, x, b, grad_out.to(ref_dtype), grad_grad.to(ref_dtype))
    (y, (dx, db), (ddx, ddb)), (ry, (rdx, rdb), (rddx, rddb)) = results['cuda'], results['ref']
    assert y.dtype == dtype and y.shape == ry.shape
    for actual, expected in ((y, ry), (dx, rdx), (db, rdb), (ddx, rddx), (ddb, rddb)):
        _close(actual, expected, tol)


@pytest.mark.parametrize('act', ACTIVATIONS)
def test_bias_act_matches_reference_first_and_second_order(act):
    _compare_bias_act([3, 5, 7, 9], 1, act, torch.float32, 2e-5)
    _compare_bias_act([3, 5, 7, 9], 1, act, torch.float32, 2e-5, gain=0.7, clamp=0.8)


@pytest.mark.parametrize('act', ACTIVATIONS)
def test_bias_act_half_precision(act):
    _compare_bias_act([2, 6, 5, 3], 1, act, torch.float16, 1e-2, clamp=256)


@pytest.mark.parametrize('shape, dim', [([7, 13], 1), ([11], 0), ([4, 3, 5], -1), ([2, 3, 4, 5], 2)])
def test_bias_act_other_shapes_and_dims(shape, dim):
    _compare_bias_act(shape, dim, 'lrelu', torch.float32, 2e-5, alpha=0.1, clamp=1.5)
    _compare_bias_act(shape, dim, 'swish', torch.float32, 2e-5)


def test_bias_act_channels_last_keeps_layout_and_values():
    x = torch.randn([2, 5, 3, 4], device=DEVICE).contiguous(memory_format=torch.channels_last)
    b = torch.randn([5], device=DEVICE)
    y = bias_act.bias_act(x, b, act='lrelu', clamp=0.5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, bias_act.bias_act(x, b, act='lrelu', clamp=0.5, impl='ref'), 1e-6)


def test_bias_act_without_bias_and_with_expanded_gradient():
    x = torch.randn([3, 4, 5], device=DEVICE, requires_grad=True)
    y = bias_act.bias_act(x, None, act='tanh', gain=2)
    y.sum().backward()  # the incoming gradient is an expanded (stride 0) tensor
    expected = 2 * (1 - torch.tanh(x.detach()) ** 2)
    _close(x.grad, expected, 1e-5)


def test_bias_act_third_order_is_refused():
    x = torch.randn([2, 3], device=DEVICE, requires_grad=True)
    y = bias_act.bias_act(x, None, act='sigmoid')
    (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(ddx.sum(), x)


UPFIRDN_CASES = [
    dict(up=2, padding=[2, 1, 2, 1]),
    dict(down=2, padding=1),
    dict(up=[2, 1], down=[1, 3], padding=[1, -1, 3, 0], flip_filter=True, gain=3),
    dict(up=3, down=2, padding=[-2, 4, 0, -1]),
    dict(padding=[1, 2, 2, 1]),
]


@pytest.mark.parametrize('case', range(len(UPFIRDN_CASES)))
@pytest.mark.parametrize('taps', [[1, 3, 3, 1], [1, 2, 1], 'separable'])
def test_upfirdn2d_matches_reference_with_gradients(case, taps):
    kwargs = UPFIRDN_CASES[case]
    if taps == 'separable':
        f = upfirdn2d.setup_filter([1, 2, 5, 6, 6, 5, 2, 1], separable=True)
    else:
        f = upfirdn2d.setup_filter(taps)
    f = f.to(DEVICE)
    gen = torch.Generator().manual_seed(case)
    x0 = torch.randn([2, 3, 9, 11], generator=gen).to(DEVICE)
    outputs = {}
    for impl in ('cuda', 'ref'):
        x = x0.clone().requires_grad_()
        y = upfirdn2d.upfirdn2d(x, f, impl=impl, **kwargs)
        # Second order: the gradient as a function of a parameterised output gradient (what R1 differentiates).
        scale = torch.ones([], device=DEVICE, requires_grad=True)
        grad_out = torch.linspace(-1, 1, y.numel(), device=DEVICE).reshape(y.shape) * scale
        (dx,) = torch.autograd.grad(y, x, grad_out, create_graph=True)
        (dscale,) = torch.autograd.grad((dx * x0).sum(), scale)
        outputs[impl] = (y, dx, dscale)
    for actual, expected in zip(outputs['cuda'], outputs['ref']):
        assert actual.shape == expected.shape
        _close(actual, expected, 2e-5)


def test_upfirdn2d_half_precision_and_channels_last():
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=DEVICE)
    x = torch.randn([2, 4, 7, 6], device=DEVICE).to(torch.float16).contiguous(memory_format=torch.channels_last)
    y = upfirdn2d.upsample2d(x, f)
    assert y.dtype == torch.float16 and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, upfirdn2d.upsample2d(x.float(), f, impl='ref'), 5e-3)
    _close(upfirdn2d.downsample2d(x, f), upfirdn2d.downsample2d(x.float(), f, impl='ref'), 5e-3)


def test_r1_penalty_gradient_through_a_small_discriminator_matches_reference():
    """R1: the weight gradient of |dD/dx|^2 needs the second order of both ops."""
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn([8, 3, 3, 3], generator=gen), torch.randn([8, 8, 3, 3], generator=gen)]
    biases = [torch.randn([8], generator=gen), torch.randn([8], generator=gen)]
    image = torch.randn([2, 3, 12, 12], generator=gen).to(DEVICE)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=DEVICE)
    grads = {}
    for impl in ('cuda', 'ref'):
        params = [p.to(DEVICE).requires_grad_() for p in weights + biases]
        x = image.clone().requires_grad_()
        h = bias_act.bias_act(torch.nn.functional.conv2d(x, params[0], padding=1), params[2], act='lrelu',
                              clamp=2.0, impl=impl)
        h = upfirdn2d.downsample2d(h, f, impl=impl)
        h = bias_act.bias_act(torch.nn.functional.conv2d(h, params[1], padding=1), params[3], act='softplus',
                              impl=impl)
        (dx,) = torch.autograd.grad(h.sum(), x, create_graph=True)
        grads[impl] = torch.autograd.grad(dx.square().sum(), params)
    for actual, expected in zip(grads['cuda'], grads['ref']):
        _close(actual, expected, 5e-5)


# ------------------------------------------------------------------------------------------------------------------
# Dispatch, switches and fallback.

def test_dispatch_switches(monkeypatch):
    x = torch.zeros([2, 2], device=DEVICE)
    assert fused.kernels_for(x) is not None
    assert fused.kernels_for(x.double()) is None  # float64 stays on the PyTorch path
    monkeypatch.setenv(fused.GPU_OPS_VARIABLE, 'torch')
    assert fused.kernels_for(x) is None
    assert fused.status(DEVICE)['implementation'] == 'torch'
    monkeypatch.delenv(fused.GPU_OPS_VARIABLE)
    if not HAS_CUDA:
        monkeypatch.delenv(fused.CPU_VARIABLE)
        assert fused.kernels_for(x) is None
        assert 'CUDA tensors only' in fused.status('cpu')['reason']


def test_ref_impl_never_uses_the_kernels(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the fused kernel was called')
    module = fused.load()
    monkeypatch.setattr(module, 'bias_act_op', refuse)
    monkeypatch.setattr(module, 'upfirdn2d', refuse)
    x = torch.randn([1, 2, 4, 4], device=DEVICE)
    bias_act.bias_act(x, act='relu', impl='ref')
    upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=DEVICE), impl='ref')
    monkeypatch.setenv(fused.GPU_OPS_VARIABLE, 'torch')
    bias_act.bias_act(x, act='relu')


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget what fused.load() found, and restore it afterwards."""
    saved = (fused._module, fused._load_problem, fused._load_attempted)
    fused._module, fused._load_problem, fused._load_attempted = None, None, False
    yield
    fused._module, fused._load_problem, fused._load_attempted = saved


def test_missing_triton_logs_one_line_and_uses_pytorch(monkeypatch, caplog, fresh_loader):
    import torch_utils.ops as ops_package
    monkeypatch.delattr(ops_package, 'fused_triton', raising=False)
    monkeypatch.setitem(sys.modules, 'torch_utils.ops.fused_triton', None)  # makes the import fail
    x = torch.randn([2, 3, 4, 4], device=DEVICE)
    with caplog.at_level(logging.WARNING, logger='torch_utils.ops'):
        y = bias_act.bias_act(x, act='lrelu')
        bias_act.bias_act(x, act='lrelu')
    warnings = [r.getMessage() for r in caplog.records if r.name == 'torch_utils.ops']
    assert len(warnings) == 1 and 'using the PyTorch ops' in warnings[0] and '\n' not in warnings[0]
    assert torch.equal(y, bias_act.bias_act(x, act='lrelu', impl='ref'))
    status = fused.status(DEVICE)
    assert status['implementation'] == 'torch' and status['triton'] == 'failed'


def test_kernel_compile_failure_disables_the_kernels(monkeypatch, caplog, fresh_loader):
    import torch_utils.ops.fused_triton as module
    fused._module, fused._load_attempted = module, True

    class CompilationError(RuntimeError):
        pass
    CompilationError.__module__ = 'triton.compiler.errors'  # how Triton's own errors look to the dispatch

    def broken(*args, **kwargs):
        raise CompilationError('unsupported operation')
    monkeypatch.setattr(module, 'upfirdn2d', broken)
    x = torch.randn([1, 2, 5, 5], device=DEVICE)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=DEVICE)
    with caplog.at_level(logging.WARNING, logger='torch_utils.ops'):
        y = upfirdn2d.upsample2d(x, f)
    assert torch.equal(y, upfirdn2d.upsample2d(x, f, impl='ref'))
    assert fused.kernels_for(x) is None
    assert any('failed to compile' in r.getMessage() for r in caplog.records)


def test_describe_names_the_fused_kernels():
    assert 'fused Triton kernels' in bias_act.describe(DEVICE)
    assert 'fused Triton kernels' in upfirdn2d.describe(DEVICE)


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernels_are_used_by_default_and_match_cpu():
    x = torch.randn([4, 16, 33, 17])
    b = torch.randn([16])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert fused.kernels_for(x.cuda()) is not None
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)):
        xc, bc = x.cuda().to(dtype), b.cuda().to(dtype)
        _close(bias_act.bias_act(xc, bc, act='lrelu', clamp=0.5), bias_act.bias_act(x, b, act='lrelu', clamp=0.5),
               tol)
        _close(upfirdn2d.upsample2d(xc, f.cuda()), upfirdn2d.upsample2d(x, f), tol)
        _close(upfirdn2d.downsample2d(xc, f.cuda()), upfirdn2d.downsample2d(x, f), tol)
