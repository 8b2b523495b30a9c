"""training.networks against the reference outputs in the golden folder (golden/README.md sections 1, 3 and 5.1).

Each config is rebuilt from its json init kwargs, loaded strictly from the npz state, and every stored call,
gradient and per-block intermediate is recomputed. float32 tolerance: max|a-b| <= 1e-5 * max(1, max|ref|).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import networks

CONFIGS = ['res32_skip_resnet', 'res32_cond', 'res16_orig_orig', 'res64_resnet_skip', 'res32_fp16']
FP32_REL_TOL = 1e-5
FP16_REL_TOL = 2e-3


class Golden:
    """One net_<name>.json/.npz pair, with the networks rebuilt from it (eval mode, no parameter grads)."""

    def __init__(self, golden_dir: Path, name: str):
        self.name = name
        self.meta = json.loads((golden_dir / f'net_{name}.json').read_text())
        with np.load(golden_dir / f'net_{name}.npz') as npz:
            self.arrays = {k: npz[k] for k in npz.files}
        self.G = networks.Generator(**self.meta['G']['init_kwargs'])
        self.D = networks.Discriminator(**self.meta['D']['init_kwargs'])
        for prefix, net in (('G', self.G), ('D', self.D)):
            state = {k[len(prefix) + 1:]: torch.from_numpy(v) for k, v in self.arrays.items()
                     if k.startswith(prefix + '.') and k[len(prefix) + 1:] in set(self.keys(prefix))}
            net.load_state_dict(state, strict=True)
            net.eval().requires_grad_(False)

    def keys(self, prefix: str) -> list:
        return self.meta[prefix]['parameter_keys'] + self.meta[prefix]['buffer_keys']

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.arrays[key].copy())

    def assert_close(self, key: str, actual: torch.Tensor, rel_tol: float = FP32_REL_TOL, scale: float = None):
        ref = self.arrays[key]
        actual = actual.detach().to(torch.float32).numpy()
        assert actual.shape == ref.shape, f'{key}: shape {actual.shape} != {ref.shape}'
        if scale is None:
            scale = max(1.0, self.meta['max_abs'][key])
        err = float(np.abs(actual.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
        assert err <= rel_tol * scale, f'{self.name} {key}: max|diff| {err:.3g} > {rel_tol * scale:.3g}'

    @property
    def z(self):
        return self.tensor('in.z')

    @property
    def c(self):
        return self.tensor('in.c')


_cache = {}


def get_golden(golden_dir: Path, name: str) -> Golden:
    if name not in _cache:
        _cache[name] = Golden(golden_dir, name)
    return _cache[name]


@pytest.fixture(params=CONFIGS)
def golden(request, golden_dir) -> Golden:
    return get_golden(golden_dir, request.param)


def test_state_dict_keys_kinds_and_order(golden):
    for prefix, net in (('G', golden.G), ('D', golden.D)):
        # parameters() order matters: EMA updates and optimizers zip parameters of two nets.
        assert [n for n, _ in net.named_parameters()] == golden.meta[prefix]['parameter_keys']
        assert [n for n, _ in net.named_buffers()] == golden.meta[prefix]['buffer_keys']
        for key in golden.keys(prefix):
            assert tuple(net.state_dict()[key].shape) == golden.arrays[f'{prefix}.{key}'].shape, key


def test_attrs(golden):
    G, D = golden.G, golden.D
    g_attrs, d_attrs = golden.meta['G']['attrs'], golden.meta['D']['attrs']
    for name in ['z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'num_ws']:
        assert getattr(G, name) == g_attrs[name], name
    assert G.mapping.num_ws == G.synthesis.num_ws == g_attrs['num_ws']
    assert list(G.synthesis.block_resolutions) == g_attrs['block_resolutions']
    for block_name, expected in g_attrs['channels'].items():
        block = getattr(G.synthesis, block_name)
        assert block.in_channels == expected['in_channels']
        assert block.conv1.weight.shape[0] == expected['out_channels']
        assert block.num_conv == expected['num_conv']
        assert block.num_torgb == expected['num_torgb']
        assert block.use_fp16 == expected['use_fp16']
    assert list(D.block_resolutions) == d_attrs['block_resolutions']
    assert D.b4.cmap_dim == d_attrs['cmap_dim']
    assert [r for r in D.block_resolutions if getattr(D, f'b{r}').use_fp16] == d_attrs['fp16_blocks']
    for name in ['c_dim', 'img_resolution', 'img_channels']:
        assert getattr(D, name) == d_attrs[name]


def test_mapping(golden):
    G = golden.G
    golden.assert_close('out.G.mapping.ws_psi1', G.mapping(golden.z, golden.c, truncation_psi=1))
    golden.assert_close('out.G.mapping.ws_psi0.7', G.mapping(golden.z, golden.c, truncation_psi=0.7))
    golden.assert_close('out.G.mapping.ws_psi0.7_cutoff3',
                        G.mapping(golden.z, golden.c, truncation_psi=0.7, truncation_cutoff=3))


def test_synthesis_noise_modes_and_paths(golden):
    G = golden.G
    ws = golden.tensor('out.G.mapping.ws_psi1')
    golden.assert_close('out.G.synthesis.img_const', G.synthesis(ws, noise_mode='const', force_fp32=True))
    golden.assert_close('out.G.synthesis.img_none', G.synthesis(ws, noise_mode='none', force_fp32=True))
    if 'out.G.synthesis.img_const_nonfused' in golden.arrays:
        golden.assert_close('out.G.synthesis.img_const_nonfused',
                            G.synthesis(ws, noise_mode='const', force_fp32=True, fused_modconv=False))


def test_generator_truncated(golden):
    img = golden.G(golden.z, golden.c, truncation_psi=0.5, noise_mode='const', force_fp32=True)
    golden.assert_close('out.G.img_psi0.5_const', img)


def test_discriminator_logits(golden):
    D = golden.D
    golden.assert_close('out.D.logits', D(golden.tensor('out.G.synthesis.img_const'), golden.c, force_fp32=True))
    golden.assert_close('out.D.logits_on_G_img_psi0.5',
                        D(golden.tensor('out.G.img_psi0.5_const'), golden.c, force_fp32=True))


class KinkRecorder:
    """Records the outputs of every lrelu layer during a forward pass, and their gradients during backward.

    leaky_relu's derivative jumps at 0 (1 vs alpha). A pre-activation within float rounding of 0 may land on the
    other side in the reference (different summation order), which changes the gradient by
    (ratio - 1) * dL/dy_e * dy_e/dinput for that one element e: a legitimate, isolated difference far larger
    than the rounding tolerance. `explain` checks whether a gradient mismatch is exactly that.
    """

    def __init__(self, net: torch.nn.Module, rel_threshold: float = 1e-5):
        self.rel_threshold = rel_threshold
        self.outputs = []   # (module name, output tensor, [gradient])
        self.handles = []
        for name, module in net.named_modules():
            if getattr(module, 'activation', None) == 'lrelu':
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(_module, _inputs, out):
            slot = [None]
            if out.requires_grad:
                out.register_hook(lambda g, slot=slot: slot.__setitem__(0, g))
            self.outputs.append((name, out, slot))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()

    def candidates(self):
        """(name, output, output grad, flat index) of outputs within rounding distance of the kink."""
        found = []
        for name, out, slot in self.outputs:
            if slot[0] is None:
                continue
            flat = out.detach().reshape(-1)
            threshold = self.rel_threshold * max(1.0, float(flat.abs().max()))
            for idx in torch.nonzero(flat.abs() <= threshold).reshape(-1).tolist():
                found.append((name, out, slot[0].reshape(-1)[idx], idx))
        return found

    def explain(self, leaf: torch.Tensor, ours: np.ndarray, ref: np.ndarray, tol: float, alpha: float = 0.2):
        """Whether flipping the lrelu branch at one or two near-zero outputs turns `ours` into `ref`."""
        deltas = []
        for name, out, out_grad, idx in self.candidates():
            (jac,) = torch.autograd.grad(out.reshape(-1)[idx], [leaf], retain_graph=True)
            ratio = alpha if float(out.detach().reshape(-1)[idx]) > 0 else 1 / alpha
            deltas.append((f'{name}[{idx}]', (ratio - 1) * float(out_grad) * jac.numpy().astype(np.float64)))
        residual = ref.astype(np.float64) - ours.astype(np.float64)
        for i, (name_i, d_i) in enumerate(deltas):
            if np.abs(residual - d_i).max() <= tol:
                return [name_i]
            for name_j, d_j in deltas[i + 1:]:
                if np.abs(residual - d_i - d_j).max() <= tol:
                    return [name_i, name_j]
        return None


def _assert_grad_close(golden: Golden, key: str, net: torch.nn.Module, leaf: torch.Tensor, forward):
    recorder = KinkRecorder(net)
    try:
        out = forward()
        (grad,) = torch.autograd.grad(out, [leaf], retain_graph=True)
        ref = golden.arrays[key]
        tol = FP32_REL_TOL * max(1.0, golden.meta['max_abs'][key])
        err = float(np.abs(grad.numpy().astype(np.float64) - ref).max())
        if err <= tol:
            return
        flipped = recorder.explain(leaf, grad.numpy(), ref, tol)
        assert flipped is not None, \
            f'{golden.name} {key}: max|diff| {err:.3g} > {tol:.3g}, not explained by lrelu kinks'
    finally:
        recorder.close()


def test_grad_synthesis_ws(golden):
    ws = golden.tensor('out.G.mapping.ws_psi1').requires_grad_(True)
    _assert_grad_close(golden, 'grad.G.synthesis.ws', golden.G, ws,
                       lambda: golden.G.synthesis(ws, noise_mode='const', force_fp32=True).square().sum())


def test_grad_discriminator_img(golden):
    img = golden.tensor('out.G.synthesis.img_const').requires_grad_(True)
    _assert_grad_close(golden, 'grad.D.img', golden.D, img,
                       lambda: golden.D(img, golden.c, force_fp32=True).sum())


def test_kink_explanation_rejects_other_differences(golden_fp16):
    """The kink allowance must not excuse an ordinary error: a perturbed gradient stays a failure."""
    G = golden_fp16.G
    ws = golden_fp16.tensor('out.G.mapping.ws_psi1').requires_grad_(True)
    recorder = KinkRecorder(G)
    try:
        loss = G.synthesis(ws, noise_mode='const', force_fp32=True).square().sum()
        (grad,) = torch.autograd.grad(loss, [ws], retain_graph=True)
        ref = golden_fp16.arrays['grad.G.synthesis.ws']
        tol = FP32_REL_TOL * max(1.0, golden_fp16.meta['max_abs']['grad.G.synthesis.ws'])
        wrong = grad.numpy() * 1.001
        assert recorder.explain(ws, wrong, ref, tol) is None
    finally:
        recorder.close()


def _record_block_outputs(blocks: dict, call):
    outputs = {}
    handles = [block.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
               for name, block in blocks.items()]
    try:
        result = call()
    finally:
        for h in handles:
            h.remove()
    return outputs, result


def _check_block_outputs(golden, outputs: dict, prefix: str):
    for name, (x, img) in outputs.items():
        golden.assert_close(f'{prefix}.{name}.x', x[:1])
        if f'{prefix}.{name}.img' in golden.arrays:
            golden.assert_close(f'{prefix}.{name}.img', img[:1])
        else:
            assert img is None, f'{prefix}.{name} returned an image where the reference returns None'


# Config (e) stores no intermediates (golden README section 1).
@pytest.mark.parametrize('name', [name for name in CONFIGS if name != 'res32_fp16'])
def test_per_block_intermediates(golden_dir, name):
    golden = get_golden(golden_dir, name)
    assert golden.meta['intermediates']['stored_G'] or golden.meta['intermediates']['stored_D']
    G, D = golden.G, golden.D
    if golden.meta['intermediates']['stored_G']:
        blocks = {f'b{r}': getattr(G.synthesis, f'b{r}') for r in G.synthesis.block_resolutions}
        ws = golden.tensor('out.G.mapping.ws_psi1')
        outputs, _ = _record_block_outputs(blocks, lambda: G.synthesis(ws, noise_mode='const', force_fp32=True))
        assert set(outputs) == set(blocks)
        _check_block_outputs(golden, outputs, 'G.synthesis')
    if golden.meta['intermediates']['stored_D']:
        blocks = {f'b{r}': getattr(D, f'b{r}') for r in D.block_resolutions}
        img = golden.tensor('out.G.synthesis.img_const')
        outputs, _ = _record_block_outputs(blocks, lambda: D(img, golden.c, force_fp32=True))
        assert set(outputs) == set(blocks)
        _check_block_outputs(golden, outputs, 'D')


@pytest.fixture
def golden_fp16(golden_dir) -> Golden:
    return get_golden(golden_dir, 'res32_fp16')


def _dtype_name(t):
    return None if t is None else str(t.dtype).replace('torch.', '')


def test_fp16_path_generator(golden_fp16):
    G = golden_fp16.G
    expected = golden_fp16.meta['fp16_on_cpu']
    ws = golden_fp16.tensor('out.G.mapping.ws_psi1')
    blocks = {f'G.synthesis.b{r}': getattr(G.synthesis, f'b{r}') for r in G.synthesis.block_resolutions}
    for force_fp32, key in ((False, 'g_block_dtypes_default'), (True, 'g_block_dtypes_force_fp32')):
        outputs, img = _record_block_outputs(blocks, lambda: G.synthesis(ws, noise_mode='const', force_fp32=force_fp32))
        seen = {name: {'x': _dtype_name(x), 'img': _dtype_name(i)} for name, (x, i) in outputs.items()}
        assert seen == expected[key]
        assert img.dtype == torch.float32
    # fp16 blocks really compute in float16 on CPU, so the result matches the reference's fp16 path closely
    # and differs measurably from the float32 result.
    img16 = G.synthesis(ws, noise_mode='const')
    ref_max = golden_fp16.meta['max_abs']['out.G.synthesis.img_const_fp16path']
    golden_fp16.assert_close('out.G.synthesis.img_const_fp16path', img16, rel_tol=FP16_REL_TOL, scale=ref_max)
    img32 = golden_fp16.tensor('out.G.synthesis.img_const')
    assert float((img16 - img32).abs().max()) > 1e-4


def test_fp16_path_discriminator(golden_fp16):
    D = golden_fp16.D
    expected = golden_fp16.meta['fp16_on_cpu']
    img = golden_fp16.tensor('out.G.synthesis.img_const')
    blocks = {f'D.b{r}': getattr(D, f'b{r}') for r in D.block_resolutions}
    for force_fp32, key in ((False, 'd_block_dtypes_default'), (True, 'd_block_dtypes_force_fp32')):
        outputs, logits = _record_block_outputs(blocks, lambda: D(img, golden_fp16.c, force_fp32=force_fp32))
        seen = {name: {'x': _dtype_name(x), 'img': _dtype_name(i)} for name, (x, i) in outputs.items()}
        assert seen == expected[key]
        assert logits.dtype == torch.float32
    logits16 = D(img, golden_fp16.c)
    ref_max = golden_fp16.meta['max_abs']['out.D.logits_fp16path']
    golden_fp16.assert_close('out.D.logits_fp16path', logits16, rel_tol=FP16_REL_TOL, scale=ref_max)


def test_conv_clamp_probes(golden_fp16):
    G, D = golden_fp16.G, golden_fp16.D
    ws = golden_fp16.tensor('out.G.mapping.ws_psi1')
    golden_fp16.assert_close('out.G.synthesis.img_const_ws_x1000',
                             G.synthesis(ws * 1000, noise_mode='const', force_fp32=True))
    img = golden_fp16.tensor('out.G.synthesis.img_const')
    golden_fp16.assert_close('out.D.logits_img_x300', D(img * 300, golden_fp16.c, force_fp32=True))


def test_unscaled_outputs_do_not_reach_the_clamp(golden_fp16):
    # The reference reports that conv_clamp=256 leaves the unscaled outputs unchanged; so must we.
    G = golden_fp16.G
    ws = golden_fp16.tensor('out.G.mapping.ws_psi1')
    kwargs = dict(golden_fp16.meta['G']['init_kwargs'])
    kwargs['synthesis_kwargs'] = dict(kwargs['synthesis_kwargs'], conv_clamp=None)
    unclamped = networks.Generator(**kwargs).eval().requires_grad_(False)
    unclamped.load_state_dict(G.state_dict())
    a = G.synthesis(ws, noise_mode='const', force_fp32=True)
    b = unclamped.synthesis(ws, noise_mode='const', force_fp32=True)
    assert torch.equal(a, b)
    big_a = G.synthesis(ws * 1000, noise_mode='const', force_fp32=True)
    big_b = unclamped.synthesis(ws * 1000, noise_mode='const', force_fp32=True)
    assert float((big_a - big_b).abs().max()) > 1.0


@pytest.mark.parametrize('name', CONFIGS)
def test_initialisation_matches_reference_seeding(golden_dir, name):
    """Same seed, same constructors, same perturbation => the stored state: creation order and init match."""
    meta = json.loads((golden_dir / f'net_{name}.json').read_text())
    seed = meta['config']['seed']
    torch.manual_seed(seed)
    G = networks.Generator(**meta['G']['init_kwargs'])
    D = networks.Discriminator(**meta['D']['init_kwargs'])
    perturb = torch.Generator().manual_seed(10000 + seed)
    with np.load(golden_dir / f'net_{name}.npz') as npz:
        for prefix, net in (('G', G), ('D', D)):
            for key, t in net.state_dict().items():
                t = t + 0.1 * torch.randn(t.shape, generator=perturb)
                ref = npz[f'{prefix}.{key}']
                assert np.abs(t.numpy() - ref).max() <= 1e-6 * max(1.0, float(np.abs(ref).max())), f'{prefix}.{key}'


# Module-level functions and MinibatchStdLayer against the ops golden cases.

def _ops_cases(golden_dir: Path, ops: set):
    meta = json.loads((golden_dir / 'ops.json').read_text())
    return [c for c in meta['cases'] if c['op'] in ops]


def _run_ops_case(golden_dir: Path, case: dict):
    with np.load(golden_dir / 'ops.npz') as npz:
        arrays = {k: npz[k] for k in npz.files}
    inputs = [torch.from_numpy(arrays[k].copy()).requires_grad_(True) for k in case['inputs']]
    kwargs = {k: (torch.from_numpy(arrays[v].copy()) if isinstance(v, str) and v in arrays else v)
              for k, v in case['kwargs'].items()}
    if case['op'] == 'modulated_conv2d':
        out = networks.modulated_conv2d(*inputs, **kwargs)
    elif case['op'] == 'MinibatchStdLayer':
        out = networks.MinibatchStdLayer(**kwargs)(*inputs)
    else:
        out = networks.normalize_2nd_moment(*inputs, **kwargs)
    ref = arrays[case['out']]
    scale = max(1.0, float(np.abs(ref).max()))
    assert tuple(out.shape) == ref.shape
    assert float(np.abs(out.detach().numpy() - ref).max()) <= 2e-6 * scale, case['id']
    r = torch.from_numpy(arrays['in.r_pool'][:out.numel()].reshape(out.shape).copy())
    grads = torch.autograd.grad((out * r).sum(), inputs)
    for (name, key), grad in zip(case['grads'].items(), grads):
        ref = arrays[key]
        scale = max(1.0, float(np.abs(ref).max()))
        assert float(np.abs(grad.numpy() - ref).max()) <= 2e-6 * scale, f"{case['id']} grad {name}"


@pytest.mark.parametrize('op', ['modulated_conv2d', 'MinibatchStdLayer', 'normalize_2nd_moment'])
def test_layer_functions_against_ops_golden(golden_dir, op):
    cases = _ops_cases(golden_dir, {op})
    assert cases
    for case in cases:
        _run_ops_case(golden_dir, case)
