"""Inference backends render what the reference model renders, and say clearly what they cannot do."""
import warnings

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.generator.slim import SlimGenerator
from gan_prune.runtime.backends import BACKENDS, COMPILE_TOLERANCE

CHANNELS = {'b4.const': 7, 'b4.out': 6, 'b8.mid': 5, 'b8.out': 9, 'b16.mid': 4, 'b16.out': 3}


def kernels_available() -> bool:
    from torch_utils.ops import narrow_conv
    return narrow_conv.kernels() is not None


needs_kernels = pytest.mark.skipif(not kernels_available(), reason='the compiled CPU kernels cannot be built here')


def student(architecture='skip', c_dim=0, num_fp16_res=0, conv_clamp=None, seed=0):
    """A small slim generator with non-zero noise strengths and biases, as in a trained network."""
    torch.manual_seed(seed)
    G = SlimGenerator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3, channels=CHANNELS,
                      mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(architecture=architecture, num_fp16_res=num_fp16_res,
                                            conv_clamp=conv_clamp)).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
    return G.requires_grad_(False)


def teacher(architecture='skip', c_dim=0):
    """A standard Generator whose widest layers (32 channels) are wider than a test's kernel limit."""
    from training import networks
    torch.manual_seed(1)
    G = networks.Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture=architecture))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
    return G.eval().requires_grad_(False)


def reference(G, z, c, truncation_psi=1.0, noise_mode='const'):
    with torch.no_grad():
        return G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, force_fp32=True)


def close(a, b):
    return a.shape == b.shape and float((a - b).abs().max()) <= 2e-5 * max(1.0, float(b.abs().max()))


def test_registry_lists_the_backends_and_rejects_unknown_names():
    assert {'eager', 'compile', 'cpu-kernels', 'onnxruntime', 'openvino', 'torchscript'} <= set(BACKENDS.names())
    with pytest.raises(GanPruneError, match="unknown backend 'cpu-kernel'; did you mean 'cpu-kernels'"):
        BACKENDS.build('cpu-kernel', student())


@needs_kernels
@pytest.mark.parametrize('architecture', ['skip', 'orig', 'resnet'])
@pytest.mark.parametrize('noise_mode', ['const', 'none'])
def test_cpu_kernels_render_the_reference_images(architecture, noise_mode):
    G = student(architecture, conv_clamp=0.5)
    z = torch.randn([3, 12])
    run = BACKENDS.build('cpu-kernels', G)
    for psi in (1.0, 0.6):
        assert close(run(z, truncation_psi=psi, noise_mode=noise_mode), reference(G, z, None, psi, noise_mode))


@needs_kernels
@pytest.mark.parametrize('architecture', ['skip', 'resnet'])
def test_cpu_kernels_with_wide_layers_and_labels_render_the_reference_images(architecture, monkeypatch):
    """Layers wider than the kernels' limit take the reference layers, in the same network; labels are mapped."""
    from torch_utils.ops import narrow_conv
    monkeypatch.setattr(narrow_conv, 'MAX_CHANNELS', 16)
    G = teacher(architecture, c_dim=4)
    assert G.synthesis.b8.conv1.weight.shape[0] > 16 >= G.synthesis.b16.conv1.weight.shape[0]
    calls = []
    original = narrow_conv.modulated_lrelu
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1) or original(*a, **k))
    z, c = torch.randn([2, 12]), torch.eye(4)[:2]
    img = BACKENDS.build('cpu-kernels', G)(z, c, truncation_psi=0.7)
    assert close(img, reference(G, z, c, 0.7))
    assert len(calls) == 4  # b16's and b32's layers; b4 and b8 (32 channels) take the reference layers


@needs_kernels
def test_cpu_kernels_random_noise_is_drawn_from_the_torch_generator():
    G = student()
    z = torch.randn([2, 12])
    run = BACKENDS.build('cpu-kernels', G)
    torch.manual_seed(5)
    a = run(z, noise_mode='random')
    torch.manual_seed(5)
    b = run(z, noise_mode='random')
    assert torch.equal(a, b) and not torch.equal(a, run(z, noise_mode='const'))


@needs_kernels
def test_cpu_kernels_run_fp16_students_in_float32_without_a_warning():
    G = student(num_fp16_res=2, conv_clamp=256)
    z = torch.randn([2, 12])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        img = BACKENDS.build('cpu-kernels', G)(z)
    assert img.dtype == torch.float32 and close(img, reference(G, z, None))


@needs_kernels
def test_kernel_ops_are_torch_ops_with_fake_kernels():
    """compile and export see the kernels as single ops whose output shapes are known without running them."""
    from gan_prune.runtime import cpu_kernels
    from torch_utils.ops import upfirdn2d
    x, weight, styles, bias = torch.randn([2, 4, 8, 8]), torch.randn([5, 4, 3, 3]), torch.randn([2, 4]), torch.zeros(5)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    checks = ('test_schema', 'test_faketensor')
    torch.library.opcheck(cpu_kernels.modulated_lrelu, (x, weight, styles, bias, None, 0.0, 1.0, 0.2, 0.5, 2, f),
                          test_utils=checks)
    torch.library.opcheck(cpu_kernels.rgb_skip, (x, torch.randn([3, 4, 1, 1]), styles, 0.5, torch.zeros(3),
                                                 float('inf'), torch.randn([2, 3, 4, 4]), f), test_utils=checks)
    torch.library.opcheck(cpu_kernels.small_batch_linear, (torch.randn([2, 8]), torch.randn([6, 8]), None, 0.3,
                                                           1.0, 'lrelu', 1.4), test_utils=checks)
    assert torch.ops.gan_prune.modulated_lrelu.default is not None


def test_cpu_kernels_refuse_other_devices():
    with pytest.raises(GanPruneError, match='CPU only'):
        BACKENDS.build('cpu-kernels', student(), device='meta')


def test_eager_backend_runs_fp16_students_in_float32():
    G = student(num_fp16_res=2, conv_clamp=256)
    z = torch.randn([2, 12])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        img = BACKENDS.build('eager', G)(z)
    assert close(img, reference(G, z, None))


def test_fp16_student_called_directly_on_the_cpu_warns_with_the_remedy():
    G = student(num_fp16_res=2, conv_clamp=256)
    with pytest.warns(UserWarning, match='force_fp32=True'):
        G(torch.randn([1, 12]), None, noise_mode='const')


@pytest.mark.slow
def test_compile_backend_never_returns_images_that_differ_from_eager(monkeypatch):
    """Either inductor's images agree with eager within the tolerance, or the backend says so and runs eager."""
    G = student()
    z = torch.randn([2, 12])
    run = BACKENDS.build('compile', G)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        img = run(z, truncation_psi=0.8)
    expected = reference(G, z, None, 0.8)
    assert float((img - expected).abs().max()) <= COMPILE_TOLERANCE
    if run.fallback_reason is not None:
        assert any(run.fallback_reason in str(w.message) for w in caught)
        assert torch.equal(run(z, truncation_psi=0.8), run._reference(z, torch.zeros([2, 0]), 0.8, 'const'))


def test_compile_backend_falls_back_in_one_line_when_the_compiled_images_are_wrong(monkeypatch):
    G = student()
    z = torch.randn([2, 12])
    run = BACKENDS.build('compile', G)
    run.compiled = lambda z, c, psi, noise_mode: run._reference(z, c, psi, noise_mode) + 0.5  # a miscompiled graph
    with pytest.warns(RuntimeWarning, match='torch.compile rendered images 0.5 away from eager ones'):
        img = run(z)
    assert close(img, reference(G, z, None))
    assert run.fallback_reason is not None and '\n' not in run.fallback_reason
    assert close(run(z), reference(G, z, None))  # from then on eager
