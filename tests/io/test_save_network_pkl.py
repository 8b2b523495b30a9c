"""save_network_pkl: NVIDIA's snapshot format, checks before writing, and loading the result where only the
compatibility layer (no gan_prune) is importable."""
import inspect
import json
import os
import pickle
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch

import gan_prune
from gan_prune.errors import GanPruneError
from gan_prune.io import pickles, unpickler


def small_snapshot(seed: int = 0) -> dict:
    from training import networks
    import dnnlib
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                           synthesis_kwargs=dnnlib.EasyDict(channel_base=64, channel_max=16))
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=64, channel_max=16,
                               epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2))
    with torch.no_grad():  # non-trivial biases and noise strengths, so a lost value shows in the outputs
        for p in list(G.parameters()) + list(D.parameters()):
            p.add_(0.1 * torch.randn(p.shape))
    G_ema = pickle.loads(pickle.dumps(G)).eval()
    return dict(G=G, D=D, G_ema=G_ema, training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset',
                                                                 path='data.zip', resolution=16, use_labels=False))


def outputs(data: dict) -> tuple:
    z = torch.randn([4, 8], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        img = data['G_ema'](z, None, noise_mode='const', force_fp32=True)
        logits = data['D'](img, None)
    return img, logits


class MetaRecorder(pickle.Unpickler):
    """Reads a snapshot without rebuilding networks: every persistent object becomes its raw meta dict."""

    def find_class(self, module, name):
        if (module, name) == unpickler.PERSISTENT_RECONSTRUCT:
            return lambda meta: {'__meta__': meta}
        return super().find_class(module, name)


def test_roundtrip_safe_and_trusting_is_bit_exact(tmp_path):
    data = small_snapshot()
    data['G'].train()  # the saved copy must be in eval mode; the caller's module must not change
    ref_img, ref_logits = outputs(data)
    path = tmp_path / 'snap.pkl'
    gan_prune.save_network_pkl(data, path)
    assert data['G'].training and data['G'].mapping.fc0.weight.requires_grad
    for trust in (False, True):
        loaded = gan_prune.load_network_pkl(path, trust=trust)
        img, logits = outputs(loaded)
        assert torch.equal(img, ref_img) and torch.equal(logits, ref_logits)
        for name in ('G', 'D', 'G_ema'):
            a, b = data[name].state_dict(), loaded[name].state_dict()
            assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
            assert not loaded[name].training
            assert all(not p.requires_grad and p.device.type == 'cpu' for p in loaded[name].parameters())
        assert loaded['augment_pipe'] is None
        assert loaded['training_set_kwargs'] == data['training_set_kwargs']


def test_one_module_under_two_keys_is_stored_once(tmp_path):
    data = small_snapshot()
    gan_prune.save_network_pkl(data, tmp_path / 'separate.pkl')
    data['G_ema'] = data['G']
    gan_prune.save_network_pkl(data, tmp_path / 'shared.pkl')
    g_bytes = sum(p.numel() * 4 for p in data['G'].parameters())
    saved = os.path.getsize(tmp_path / 'separate.pkl') - os.path.getsize(tmp_path / 'shared.pkl')
    assert saved >= g_bytes  # the second copy of G's weights is gone
    for trust in (False, True):
        loaded = gan_prune.load_network_pkl(tmp_path / 'shared.pkl', trust=trust)
        assert loaded['G'] is loaded['G_ema']
        assert all(torch.equal(a, b) for a, b in zip(loaded['G'].state_dict().values(),
                                                     data['G'].state_dict().values()))


def test_stream_references_only_allowed_globals(tmp_path):
    path = tmp_path / 'snap.pkl'
    gan_prune.save_network_pkl(small_snapshot(), path)
    with open(path, 'rb') as f:
        found = set(unpickler.referenced_globals(f))
    assert found <= {
        ('torch_utils.persistence', '_reconstruct_persistent_obj'), ('dnnlib.util', 'EasyDict'),
        ('collections', 'OrderedDict'), ('builtins', 'set'), ('torch._utils', '_rebuild_tensor_v2'),
        ('torch._utils', '_rebuild_parameter'), ('torch.storage', '_load_from_bytes')}
    assert ('torch_utils.persistence', '_reconstruct_persistent_obj') in found
    assert ('dnnlib.util', 'EasyDict') in found  # the EasyDict init kwargs stay EasyDicts
    raw = path.read_bytes()
    assert raw[:2] == b'\x80\x04'  # protocol 4: readable by Python 3.7
    assert b'gan_prune' not in raw


def test_snapshot_layout_matches_nvidia_format(tmp_path):
    path = tmp_path / 'snap.pkl'
    data = small_snapshot()
    data['pruning'] = {'rate': np.float64(0.5), 'channels': {'b4.out': np.int64(8)}, 'note': 'x'}
    gan_prune.save_network_pkl(data, path)
    with open(path, 'rb') as f:
        raw = MetaRecorder(f).load()
    assert type(raw) is dict
    assert list(raw) == ['training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe', 'pruning']
    assert raw['augment_pipe'] is None and type(raw['training_set_kwargs']) is dict
    assert raw['pruning'] == {'rate': 0.5, 'channels': {'b4.out': 8}, 'note': 'x'}
    assert type(raw['pruning']['rate']) is float and type(raw['pruning']['channels']['b4.out']) is int
    meta = raw['G_ema']['__meta__']
    assert list(meta) == ['type', 'version', 'module_src', 'class_name', 'state']
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'Generator'
    assert meta['module_src'] == inspect.getsource(sys.modules['training.networks'])
    assert meta['state']['training'] is False
    layer = meta['state']['_modules']['synthesis']['__meta__']['state']['_modules']['b4']['__meta__']
    conv1_state = layer['state']['_modules']['conv1']['__meta__']['state']
    assert type(conv1_state['act_gain']) is float  # numpy scalars became Python floats
    assert conv1_state['act_gain'] == pytest.approx(np.sqrt(2))


def test_numpy_scalars_become_python_numbers_without_changing_values(tmp_path):
    data = small_snapshot()
    # Networks loaded from official snapshots carry numpy float64 gains; those pickle as numpy._core globals
    # under numpy 2, which numpy 1.x environments cannot read.
    conv1 = data['G_ema'].synthesis.b4.conv1
    conv1.act_gain = np.float64(conv1.act_gain)
    data['G_ema'].mapping.fc0.weight_gain = np.float64(data['G_ema'].mapping.fc0.weight_gain)
    data['G_ema']._init_kwargs['synthesis_kwargs']['channel_base'] = np.int64(64)
    ref_img, _ = outputs(data)
    gan_prune.save_network_pkl(data, tmp_path / 'snap.pkl')
    assert isinstance(conv1.act_gain, np.floating)  # the caller's network is untouched
    loaded = gan_prune.load_network_pkl(tmp_path / 'snap.pkl')['G_ema']
    assert type(loaded.synthesis.b4.conv1.act_gain) is float
    assert loaded.synthesis.b4.conv1.act_gain == float(conv1.act_gain)
    assert type(loaded.mapping.fc0.weight_gain) is float
    channel_base = loaded.init_kwargs.synthesis_kwargs.channel_base
    assert type(channel_base) is int and channel_base == 64
    assert type(loaded.init_kwargs.synthesis_kwargs).__name__ == 'EasyDict'
    assert torch.equal(outputs(dict(data, G_ema=loaded))[0], ref_img)
    with open(tmp_path / 'snap.pkl', 'rb') as f:
        assert not any(m.startswith('numpy') for m, _ in unpickler.referenced_globals(f))


def test_fresh_interpreter_without_gan_prune_loads_and_renders(tmp_path, repo_root):
    data = small_snapshot()
    data['pruning'] = {'rate': 0.25}
    path = tmp_path / 'snap.pkl'
    gan_prune.save_network_pkl(data, path)
    ref_img, _ = outputs(data)
    paths = sorted({sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']})
    script = textwrap.dedent(f'''
        import sys
        sys.path[:0] = {paths + [str(repo_root / 'third_party' / 'stylegan2_ada')]!r}
        try:
            import gan_prune
        except ImportError:
            pass
        else:
            raise SystemExit('gan_prune must not be importable here')
        import torch, legacy
        with open({str(path)!r}, 'rb') as f:
            data = legacy.load_network_pkl(f)
        G = data['G_ema']
        assert type(G).__mro__[1].__module__.startswith('_imported_module_'), type(G).__mro__[1].__module__
        assert data['pruning'] == {{'rate': 0.25}}
        z = torch.randn([4, 8], generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            img = G(z, None, noise_mode='const', force_fp32=True)
        torch.save(dict(img=img, state=G.state_dict()), {str(tmp_path / 'out.pt')!r})
    ''')
    result = subprocess.run([sys.executable, '-S', '-c', script], capture_output=True, text=True, timeout=300,
                            cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert result.returncode == 0, result.stderr[-2000:]
    out = torch.load(tmp_path / 'out.pt')
    ref_state = data['G_ema'].state_dict()
    assert set(out['state']) == set(ref_state) and all(torch.equal(out['state'][k], ref_state[k]) for k in ref_state)
    # Another process may pick other CPU kernels, so the image is compared at float32 reordering level.
    assert (out['img'] - ref_img).abs().max().item() <= 1e-5 * max(1.0, ref_img.abs().max().item())


def test_refuses_module_source_importing_other_packages(tmp_path, monkeypatch):
    (tmp_path / 'foreign_net_tmp.py').write_text(textwrap.dedent('''
        import torch
        from torch_utils import persistence
        import gan_prune.errors

        @persistence.persistent_class
        class ForeignNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(2))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import foreign_net_tmp  # noqa: E402
    try:
        data = small_snapshot()
        data['D'] = foreign_net_tmp.ForeignNet()
        target = tmp_path / 'out' / 'snap.pkl'
        target.parent.mkdir()
        target.write_bytes(b'previous')
        with pytest.raises(GanPruneError, match='imports gan_prune.errors') as info:
            gan_prune.save_network_pkl(data, target)
        assert 'ForeignNet' in str(info.value) and '\n' not in str(info.value)
        assert target.read_bytes() == b'previous'  # nothing written, no temp file left
        assert os.listdir(target.parent) == ['snap.pkl']
    finally:
        sys.modules.pop('foreign_net_tmp', None)


@pytest.mark.parametrize('source, message', [
    ('from . import sibling\nclass A: pass\n', 'relative import'),
    ('import gan_prune\nclass A: pass\n', 'imports gan_prune'),
    ('import importlib\nX = importlib.import_module("gan_prune.io")\nclass A: pass\n', 'imports gan_prune.io'),
    ('import torch\n', "does not define class 'A'"),
    ('def broken(:\n', 'not valid Python'),
])
def test_check_module_src_refusals(source, message):
    with pytest.raises(GanPruneError, match=message):
        pickles.check_module_src(source, 'A')


def test_check_module_src_accepts_allowed_imports():
    pickles.check_module_src('import os, math\nimport numpy as np\nimport scipy.signal\nfrom torch_utils.ops import '
                             'bias_act\nimport dnnlib\nclass A:\n    def f(self):\n        from training import '
                             'networks\n', 'A')


def test_refuses_non_persistent_modules_and_non_plain_extras(tmp_path):
    data = small_snapshot()
    data['G_ema'].extra_head = torch.nn.Linear(2, 2)  # a plain torch module inside a network
    with pytest.raises(GanPruneError, match='torch.nn.modules.linear.Linear'):
        gan_prune.save_network_pkl(data, tmp_path / 'a.pkl')
    data = small_snapshot()
    data['pruning'] = {'scores': torch.ones(3)}
    with pytest.raises(GanPruneError, match=r"data\['pruning'\]\['scores'\] is a torch.Tensor"):
        gan_prune.save_network_pkl(data, tmp_path / 'b.pkl')
    data = small_snapshot()
    del data['D']
    with pytest.raises(GanPruneError, match='missing or not a Module: D'):
        gan_prune.save_network_pkl(data, tmp_path / 'c.pkl')
    with pytest.raises(GanPruneError, match='does not exist'):
        gan_prune.save_network_pkl(small_snapshot(), tmp_path / 'no_dir' / 'd.pkl')
    assert sorted(os.listdir(tmp_path)) == []


def test_saved_pickle_is_json_describable_metadata(tmp_path):
    # Extra plain-data keys survive both loaders unchanged.
    data = small_snapshot()
    data['pruning'] = {'criterion': 'content-aware', 'rate': 0.7, 'kept': {'b4.out': [0, 2, 5]}}
    gan_prune.save_network_pkl(data, tmp_path / 's.pkl')
    for trust in (False, True):
        loaded = gan_prune.load_network_pkl(tmp_path / 's.pkl', trust=trust)
        assert json.dumps(loaded['pruning'], sort_keys=True) == json.dumps(data['pruning'], sort_keys=True)
