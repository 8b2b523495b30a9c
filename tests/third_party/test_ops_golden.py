"""Every case of the golden ops data (golden/ops.json + ops.npz): outputs and gradients, float32 and float64.

Tolerances (golden/README.md section 3): float32 max|a-b| <= 2e-6 * max(1, max|ref|), float64 1e-12 * ...,
setup_filter 1e-7 * .... Gradients are d/d input of sum(out * r), r = in.r_pool[:out.size] in the case dtype.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

GOLDEN = Path(__file__).resolve().parents[1] / 'golden'

# Network-level functions whose golden cases live in ops.json too; they come from training.networks.
_NETWORK_OPS = {'modulated_conv2d', 'MinibatchStdLayer', 'normalize_2nd_moment'}

_TOLERANCE = {'float32': 2e-6, 'float64': 1e-12}
_SETUP_FILTER_TOLERANCE = 1e-7


def _case_ids():
    """Case ids read at collection time (golden_dir is a fixture, so fall back to the conventional location)."""
    import os
    root = Path(os.environ['GAN_PRUNE_GOLDEN']) if os.environ.get('GAN_PRUNE_GOLDEN') else GOLDEN
    path = root / 'ops.json'
    if not path.is_file():
        return ['<golden data missing>']
    return [case['id'] for case in json.loads(path.read_text())['cases']]


@pytest.fixture(scope='module')
def golden(golden_dir):
    spec = json.loads((golden_dir / 'ops.json').read_text())
    with np.load(golden_dir / 'ops.npz') as npz:
        arrays = {key: npz[key] for key in npz.files}
    return {case['id']: case for case in spec['cases']}, arrays, spec


def _assert_close(actual: torch.Tensor, expected: np.ndarray, tolerance: float, what: str) -> None:
    actual = actual.detach().cpu().numpy()
    assert actual.shape == expected.shape, f'{what}: shape {actual.shape}, expected {expected.shape}'
    assert actual.dtype == expected.dtype, f'{what}: dtype {actual.dtype}, expected {expected.dtype}'
    error = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if actual.size else 0.0
    limit = tolerance * max(1.0, float(np.max(np.abs(expected))) if expected.size else 0.0)
    assert error <= limit, f'{what}: max|diff| {error:.3g} > {limit:.3g}'


def _network_function(op: str):
    networks = pytest.importorskip('training.networks', reason='training.networks is not available yet')
    if op == 'MinibatchStdLayer':
        return lambda x, **kw: networks.MinibatchStdLayer(**kw)(x)
    if not hasattr(networks, op):
        pytest.skip(f'training.networks has no {op} yet')
    return getattr(networks, op)


def _call(case: dict, inputs: list, arrays: dict, dtype: torch.dtype):
    """Run one case's op; `inputs` are the positional tensors (None where the case says null)."""
    op, kwargs = case['op'], dict(case['kwargs'])
    if op == 'upfirdn2d':
        return upfirdn2d.upfirdn2d(*inputs, **kwargs)
    if op in ('upsample2d', 'downsample2d', 'filter2d'):
        return getattr(upfirdn2d, op)(*inputs, **kwargs)
    if op == 'bias_act':
        return bias_act.bias_act(*inputs, **kwargs)
    if op == 'conv2d_resample':
        x, w, f = inputs
        return conv2d_resample.conv2d_resample(x, w, f=f, **kwargs)
    if op == 'fma':
        return fma.fma(*inputs)
    function = _network_function(op)
    if op == 'modulated_conv2d':
        for key, value in list(kwargs.items()):
            if isinstance(value, str) and value.startswith('in.'):
                # Filters stay float32; other named arrays follow the case dtype.
                tensor = torch.from_numpy(arrays[value])
                kwargs[key] = tensor if key == 'resample_filter' else tensor.to(dtype)
        x, weight, styles = inputs
        return function(x=x, weight=weight, styles=styles, **kwargs)
    return function(*inputs, **kwargs)


def _is_filter(key: str) -> bool:
    return key.startswith('in.f_')


@pytest.mark.parametrize('case_id', _case_ids())
def test_golden_case(golden, case_id):
    cases, arrays, _ = golden
    case = cases[case_id]
    dtype = getattr(torch, case['dtype'])
    expected = arrays[case['out']]

    if case['op'] == 'setup_filter':
        out = upfirdn2d.setup_filter(**case['kwargs'])
        assert out.dtype == torch.float32
        _assert_close(out, expected, _SETUP_FILTER_TOLERANCE, f'{case_id} out')
        return

    inputs = []
    for key in case['inputs']:
        if key is None:
            inputs.append(None)
        elif _is_filter(key):
            inputs.append(torch.from_numpy(arrays[key]))  # filters stay float32
        else:
            inputs.append(torch.from_numpy(arrays[key]).to(dtype).requires_grad_(True))

    out = _call(case, inputs, arrays, dtype)
    _assert_close(out, expected, _TOLERANCE[case['dtype']], f'{case_id} out')

    grads = case.get('grads', {})
    if not grads:
        return
    r = torch.from_numpy(arrays['in.r_pool'][:out.numel()].reshape(out.shape)).to(dtype)
    names = list(grads)
    # Gradient inputs are the positional non-filter tensors, in order, named as in the case's grad keys.
    differentiable = [t for key, t in zip(case['inputs'], inputs) if t is not None and not _is_filter(key)]
    assert len(differentiable) >= len(names), f'{case_id}: fewer tensor inputs than gradients'
    targets = differentiable[:len(names)]
    computed = torch.autograd.grad((out * r).sum(), targets, allow_unused=True)
    for name, target, grad in zip(names, targets, computed):
        assert grad is not None, f'{case_id}: no gradient for {name}'
        _assert_close(grad, arrays[grads[name]], _TOLERANCE[case['dtype']], f'{case_id} grad_{name}')


def test_case_count(golden):
    cases, _, _ = golden
    assert len(cases) == 113


def test_activation_funcs_match_golden(golden):
    _, _, spec = golden
    expected = spec['activation_funcs']
    assert sorted(bias_act.activation_funcs) == sorted(expected)
    for name, fields in expected.items():
        entry = bias_act.activation_funcs[name]
        assert entry.def_alpha == pytest.approx(fields['def_alpha'], abs=1e-15), name
        assert entry.def_gain == pytest.approx(fields['def_gain'], abs=1e-15), name
        assert entry.cuda_idx == fields['cuda_idx'], name
        assert entry.ref == fields['ref'], name
        assert entry.has_2nd_grad == fields['has_2nd_grad'], name
        assert callable(entry.func), name
        # Item access works as well as attribute access (an EasyDict).
        assert entry['def_gain'] == entry.def_gain
