"""legacy: TensorFlow pickle conversion against the golden files, kwarg rules, force_fp16 and the CLI."""
import copy
import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import legacy
from gan_prune.io import unpickler


@pytest.fixture(scope='module')
def tf_golden(golden_dir):
    expected = np.load(golden_dir / 'tf_legacy_res32_expected.npz')
    info = json.loads((golden_dir / 'tf_legacy_res32_expected.json').read_text())
    return golden_dir / 'tf_legacy_res32.pkl', {k: expected[k] for k in expected.files}, info


def _load_with(loader: str, pkl_path):
    if loader == 'legacy':
        with open(pkl_path, 'rb') as f:
            return legacy.load_network_pkl(f)
    import gan_prune
    return gan_prune.load_network_pkl(str(pkl_path))


def _tf_stubs(pkl_path):
    with open(pkl_path, 'rb') as f:
        return copy.deepcopy(unpickler.safe_load(f))


def _close(actual: torch.Tensor, ref: np.ndarray, max_abs: float) -> float:
    diff = (actual.detach().float() - torch.from_numpy(ref)).abs().max().item()
    assert diff <= 1e-5 * max(1.0, max_abs), diff
    return diff


@pytest.mark.parametrize('loader', ['legacy', 'safe'])
def test_tf_conversion_matches_golden(loader, tf_golden):
    pkl_path, ref, info = tf_golden
    data = _load_with(loader, pkl_path)
    assert data['training_set_kwargs'] is None and data['augment_pipe'] is None
    for name in ('G', 'D', 'G_ema'):
        net = data[name]
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())

    # State, key by key (the converted training G is only checked through its outputs below).
    for name in ('G_ema', 'D'):
        state = data[name].state_dict()
        ref_keys = {k[len(name) + 1:] for k in ref if k.startswith(name + '.')}
        assert set(state) == ref_keys
        for key in ref_keys:
            assert torch.equal(state[key], torch.from_numpy(ref[f'{name}.{key}'])), key
    assert state['b32.resample_filter'].sum().item() == pytest.approx(1.0)

    # Init kwargs (the converter fills in every mapped kwarg).
    for name in ('G_ema', 'G', 'D'):
        assert data[name].init_kwargs == info['converted'][name]['init_kwargs'], name
    assert type(data['G_ema']).__name__ == 'Generator' and type(data['D']).__name__ == 'Discriminator'

    # Outputs.
    z, c = torch.from_numpy(ref['in.z']), torch.from_numpy(ref['in.c'])
    max_abs = info['max_abs']
    with torch.no_grad():
        G_ema, G, D = data['G_ema'], data['G'], data['D']
        _close(G_ema.mapping(z, c, truncation_psi=1), ref['out.G_ema.mapping.ws_psi1'],
               max_abs['out.G_ema.mapping.ws_psi1'])
        _close(G_ema.mapping(z, c, truncation_psi=0.7), ref['out.G_ema.mapping.ws_psi0.7'],
               max_abs['out.G_ema.mapping.ws_psi0.7'])
        img = G_ema(z, c, truncation_psi=1, noise_mode='const', force_fp32=True)
        _close(img, ref['out.G_ema.img_const'], max_abs['out.G_ema.img_const'])
        _close(D(img, c), ref['out.D.logits'], max_abs['out.D.logits'])
        _close(G.mapping(z, c, truncation_psi=1), ref['out.G.mapping.ws_psi1'], max_abs['out.G.mapping.ws_psi1'])
        img_G = G(z, c, truncation_psi=1, noise_mode='const', force_fp32=True)
        _close(img_G, ref['out.G.img_const'], max_abs['out.G.img_const'])
        assert (img_G - img).abs().max().item() > 1e-2  # G and Gs were not swapped


def test_tf_kwargs_defaults_ignored_and_unknown(tf_golden):
    pkl_path, _, _ = tf_golden
    tf_G, tf_D, _ = _tf_stubs(pkl_path)
    assert {'style_mixing_prob', 'truncation_psi'} <= set(tf_G.static_kwargs)  # accepted and ignored

    tf_G.static_kwargs = dict(tf_G.static_kwargs, w_avg_beta=None)
    G = legacy.convert_tf_generator(tf_G)
    assert G.init_kwargs.mapping_kwargs.w_avg_beta == 1  # an explicit None becomes 1
    assert G.init_kwargs.synthesis_kwargs.channel_base == 2 * tf_G.static_kwargs['fmap_base']

    tf_G.static_kwargs = dict(tf_G.static_kwargs, no_such_option=3)
    with pytest.raises(ValueError) as info:
        legacy.convert_tf_generator(tf_G)
    assert info.value.args == ('Unknown TensorFlow kwarg', 'no_such_option')

    tf_D.static_kwargs = dict(tf_D.static_kwargs, style_mixing_prob=0.9)  # a G-only option is unknown to D
    with pytest.raises(ValueError, match='Unknown TensorFlow kwarg'):
        legacy.convert_tf_discriminator(tf_D)


def test_tf_version_too_low(tf_golden):
    pkl_path, _, _ = tf_golden
    tf_G, tf_D, _ = _tf_stubs(pkl_path)
    tf_G.version = 3
    tf_D.version = 3
    with pytest.raises(ValueError, match='TensorFlow pickle version too low'):
        legacy.convert_tf_generator(tf_G)
    with pytest.raises(ValueError, match='TensorFlow pickle version too low'):
        legacy.convert_tf_discriminator(tf_D)


def test_tf_missing_variable_is_an_error(tf_golden):
    pkl_path, _, _ = tf_golden
    tf_G, _, _ = _tf_stubs(pkl_path)
    synthesis = tf_G.components['synthesis']
    synthesis.variables = [(n, v) for n, v in synthesis.variables if n != '16x16/Conv1/bias']
    with pytest.raises(KeyError):
        legacy.convert_tf_generator(tf_G)


def test_tf_progressive_fromrgb_names_become_orig_discriminator(tf_golden):
    pkl_path, _, _ = tf_golden
    _, tf_D, _ = _tf_stubs(pkl_path)
    # Rename the top FromRGB layer to its progressive-growing name (lod 0 = full resolution).
    tf_D.variables = [(n.replace('32x32/FromRGB/', 'FromRGB_lod0/'), v) for n, v in tf_D.variables]
    tf_D.static_kwargs = dict(tf_D.static_kwargs, architecture='resnet')
    D = legacy.convert_tf_discriminator(tf_D)
    assert D.init_kwargs.architecture == 'orig'
    ref = dict(tf_D.variables)['FromRGB_lod0/weight']
    assert torch.equal(D.b32.fromrgb.weight, torch.from_numpy(ref.transpose(3, 2, 0, 1).copy()))


def test_force_fp16_rebuilds_with_same_weights(tf_golden):
    pkl_path, _, _ = tf_golden
    with open(pkl_path, 'rb') as f:
        plain = legacy.load_network_pkl(f)
    with open(pkl_path, 'rb') as f:
        fp16 = legacy.load_network_pkl(f, force_fp16=True)
    for name in ('G', 'G_ema'):
        assert fp16[name].init_kwargs.synthesis_kwargs.num_fp16_res == 4
        assert fp16[name].init_kwargs.synthesis_kwargs.conv_clamp == 256
        assert fp16[name].synthesis.b32.use_fp16 and not fp16[name].synthesis.b4.use_fp16
    assert fp16['D'].init_kwargs.num_fp16_res == 4 and fp16['D'].init_kwargs.conv_clamp == 256
    for name in ('G', 'D', 'G_ema'):
        a, b = plain[name].state_dict(), fp16[name].state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert not fp16[name].training


def test_cli_converts_to_snapshot(tf_golden, tmp_path):
    pkl_path, ref, _ = tf_golden
    dest = tmp_path / 'converted.pkl'
    result = CliRunner().invoke(legacy.convert_network_pickle, ['--source', str(pkl_path), '--dest', str(dest)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ['converted.pkl']  # no temp file left behind
    with open(dest, 'rb') as f:
        data = pickle.load(f)
    assert set(data) == {'G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'}
    z, c = torch.from_numpy(ref['in.z']), torch.from_numpy(ref['in.c'])
    img = data['G_ema'](z, c, noise_mode='const', force_fp32=True)
    _close(img, ref['out.G_ema.img_const'], float(np.abs(ref['out.G_ema.img_const']).max()))

    result = CliRunner().invoke(legacy.convert_network_pickle, ['--source', str(pkl_path), '--dest',
                                                                str(tmp_path / 'fp16.pkl'), '--force-fp16', 'True'])
    assert result.exit_code == 0, result.output
    with open(tmp_path / 'fp16.pkl', 'rb') as f:
        assert pickle.load(f)['G_ema'].init_kwargs.synthesis_kwargs.num_fp16_res == 4
