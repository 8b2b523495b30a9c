"""SlimGenerator: standard structure and call, rebuildable from init_kwargs, loadable without gan_prune."""
import ast
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from gan_prune.generator import slim
from gan_prune.generator.slim import SlimGenerator, feature_map_names

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPAT = os.path.join(REPO, 'third_party', 'stylegan2_ada')

# Uneven counts on purpose: mid and out of a block differ, so every slicing rule is exercised by the shapes.
CHANNELS = {'b4.const': 5, 'b4.out': 6, 'b8.mid': 7, 'b8.out': 4, 'b16.mid': 3, 'b16.out': 5}
GAINS = {'b4.const': 8, 'b4.out': 8, 'b8.mid': 8, 'b8.out': 8, 'b16.mid': 8, 'b16.out': 8}


def make_slim(architecture='skip', c_dim=0, num_fp16_res=0, seed=0):
    torch.manual_seed(seed)
    G = SlimGenerator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3, channels=CHANNELS,
                      gain_channels=GAINS, mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(architecture=architecture, num_fp16_res=num_fp16_res,
                                            conv_clamp=256 if num_fp16_res else None)).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, as in a trained network
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
    return G.requires_grad_(False)


def standard(architecture='skip', c_dim=0):
    from training import networks
    return networks.Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=64, channel_max=8, architecture=architecture))


def discriminator(c_dim=0):
    from training import networks
    return networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=64, channel_max=8,
                                  epilogue_kwargs=dict(mbstd_group_size=2)).eval().requires_grad_(False)


def test_feature_map_names():
    assert feature_map_names(16) == list(CHANNELS)


@pytest.mark.parametrize('architecture', ['skip', 'resnet', 'orig'])
def test_same_names_and_attributes_as_standard_generator(architecture):
    S, T = make_slim(architecture), standard(architecture)
    assert set(S.state_dict()) == set(T.state_dict())
    for attr in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'num_ws'):
        assert getattr(S, attr) == getattr(T, attr), attr
    assert S.synthesis.block_resolutions == T.synthesis.block_resolutions
    assert S.mapping.num_ws == T.mapping.num_ws and S.mapping.w_avg.shape == (10,)
    for res in S.synthesis.block_resolutions:
        sb, tb = getattr(S.synthesis, f'b{res}'), getattr(T.synthesis, f'b{res}')
        for attr in ('num_conv', 'num_torgb', 'architecture', 'is_last', 'resolution', 'use_fp16'):
            assert getattr(sb, attr) == getattr(tb, attr), (res, attr)
    shapes = {k: tuple(v.shape) for k, v in S.state_dict().items()}
    assert shapes['synthesis.b4.const'] == (5, 4, 4)
    assert shapes['synthesis.b8.conv0.weight'] == (7, 6, 3, 3)
    assert shapes['synthesis.b8.conv1.weight'] == (4, 7, 3, 3)
    assert shapes['synthesis.b8.conv0.affine.weight'] == (6, 10)
    assert shapes['synthesis.b16.torgb.weight'] == (3, 5, 1, 1)
    noise = [n for n, _ in S.synthesis.named_buffers() if n.endswith('noise_const')]
    assert len(noise) == 5


@pytest.mark.parametrize('architecture,c_dim', [('skip', 0), ('resnet', 4), ('orig', 0)])
def test_call_signature_and_outputs(architecture, c_dim):
    S = make_slim(architecture, c_dim)
    z = torch.from_numpy(np.random.RandomState(0).randn(2, 12))  # float64, as NVIDIA's tools pass it
    c = torch.eye(4)[:2] if c_dim else None
    img = S(z, c, truncation_psi=0.7, truncation_cutoff=2, noise_mode='const')
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    ws = S.mapping(z, c)
    assert ws.shape == (2, S.num_ws, 10)
    assert torch.equal(S.synthesis(ws, noise_mode='const', force_fp32=True), S(z, c, noise_mode='const'))
    assert not torch.equal(S(z, c, noise_mode='none'), S(z, c, noise_mode='const'))


def test_rebuild_from_init_kwargs_reproduces_function():
    S = make_slim('resnet')
    assert S.synthesis.b16.torgb.weight_gain == pytest.approx(1 / np.sqrt(8))  # teacher fan-in, not 5
    assert S.synthesis.b16.skip.weight_gain == pytest.approx(1 / np.sqrt(8))
    R = type(S)(**S.init_kwargs).eval().requires_grad_(False)
    R.load_state_dict(S.state_dict())
    z = torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(R(z, None, noise_mode='const'), S(z, None, noise_mode='const'))
        assert torch.equal(copy.deepcopy(S)(z, None, noise_mode='const'), S(z, None, noise_mode='const'))


def test_fp16_blocks_run_and_force_fp32_matches_fp32_rebuild():
    S = make_slim(num_fp16_res=2)
    assert [getattr(S.synthesis, f'b{r}').use_fp16 for r in (4, 8, 16)] == [False, True, True]
    z = torch.randn(1, 12)
    fp16 = S(z, None, noise_mode='const')
    fp32 = S(z, None, noise_mode='const', force_fp32=True)
    assert fp16.dtype == fp32.dtype == torch.float32
    assert (fp16 - fp32).abs().max() < 2e-2 * max(1, float(fp32.abs().max()))


def test_module_imports_only_what_nvidia_environment_has():
    tree = ast.parse(open(slim.__file__, encoding='utf-8').read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module.split('.')[0])
    assert top <= {'numpy', 'torch', 'torch_utils', 'dnnlib', 'warnings'}, top
    assert 'gan_prune' not in open(slim.__file__, encoding='utf-8').read().split('"""', 2)[2]


FRESH_PROCESS = r'''
import importlib.abc, pickle, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'gan_prune':
            raise ImportError('gan_prune must not be needed')
        return None
sys.meta_path.insert(0, _Block())
sys.path.insert(0, sys.argv[2])
import numpy as np, torch
import legacy
with open(sys.argv[1], 'rb') as f:
    G = pickle.load(f)['G_ema']
z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim))
img = G(z, torch.zeros([1, G.c_dim]), truncation_psi=0.8, noise_mode='const')
with open(sys.argv[1], 'rb') as f:
    G16 = legacy.load_network_pkl(f, force_fp16=True)['G_ema']  # rebuilds type(G)(**init_kwargs)
assert G16.synthesis.b16.use_fp16
img16 = G16(z, torch.zeros([1, G.c_dim]), truncation_psi=0.8, noise_mode='const', force_fp32=True)
np.save(sys.argv[3], np.stack([img.detach().numpy(), img16.detach().numpy()]))
print(type(G).__name__, [m for m in sys.modules if m.startswith('gan_prune')])
'''


def test_pickle_loads_and_renders_in_fresh_process_without_gan_prune(tmp_path):
    from gan_prune import save_network_pkl
    S = make_slim('skip').requires_grad_(False)
    path = tmp_path / 'slim.pkl'
    save_network_pkl(dict(G=S, G_ema=S, D=discriminator(), training_set_kwargs=None, augment_pipe=None), path)
    script = tmp_path / 'fresh.py'
    script.write_text(FRESH_PROCESS)
    out = tmp_path / 'img.npy'
    env = dict(os.environ, PYTHONPATH=COMPAT)
    proc = subprocess.run([sys.executable, str(script), str(path), COMPAT, str(out)], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'SlimGenerator []'
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 12))
    with torch.no_grad():
        expected = S(z, torch.zeros([1, 0]), truncation_psi=0.8, noise_mode='const').numpy()
    imgs = np.load(out)
    assert np.array_equal(imgs[0], expected)
    assert np.abs(imgs[1] - expected).max() <= 1e-5 * max(1, np.abs(expected).max())


def test_safe_loader_rebuilds_slim_classes(tmp_path):
    from gan_prune import load_network_pkl, save_network_pkl
    S = make_slim('resnet', c_dim=4).requires_grad_(False)
    path = tmp_path / 'slim.pkl'
    save_network_pkl(dict(G=S, G_ema=S, D=discriminator(c_dim=4), training_set_kwargs=None, augment_pipe=None), path)
    G = load_network_pkl(str(path))['G_ema']
    assert type(G).__name__ == 'SlimGenerator' and G.init_kwargs['channels'] == CHANNELS
    z, c = torch.randn(2, 12), torch.eye(4)[:2]
    assert torch.equal(G(z, c, noise_mode='const'), S(z, c, noise_mode='const'))
    with open(path, 'rb') as f:
        assert b'_reconstruct_persistent_obj' in f.read()
    assert pickle.loads(pickle.dumps(S.init_kwargs)) == S.init_kwargs  # plain data
