"""load_network_pkl: sources, safe rebuilding without running embedded code, extra keys, force_fp16, registry."""
import copy
import io
import pickle
import sys
import textwrap

import pytest
import torch

import dnnlib
import gan_prune
from gan_prune.errors import GanPruneError
from gan_prune.io import unpickler
from torch_utils import persistence


def small_snapshot() -> dict:
    from training import networks
    torch.manual_seed(1)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                           synthesis_kwargs=dnnlib.EasyDict(channel_base=64, channel_max=16))
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=64, channel_max=16,
                               epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2))
    return dict(G=G, D=D, G_ema=copy.deepcopy(G).eval())


@pytest.fixture
def saved(tmp_path):
    data = small_snapshot()
    path = tmp_path / 'snap.pkl'
    gan_prune.save_network_pkl(data, path)
    return data, path


def render(G) -> torch.Tensor:
    z = torch.randn([2, 8], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return G(z, None, noise_mode='const')


def test_path_forms(saved):
    data, path = saved
    ref = render(data['G_ema'])
    for src in (str(path), path, path.as_uri()):
        loaded = gan_prune.load_network_pkl(src)
        assert set(loaded) == {'G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'}
        assert loaded['training_set_kwargs'] is None and loaded['augment_pipe'] is None
        assert torch.equal(render(loaded['G_ema']), ref)


def test_builtin_source():
    data = gan_prune.load_network_pkl('builtin:tiny32')
    assert isinstance(data['G_ema'], torch.nn.Module) and data['G_ema'].img_resolution == 32
    assert data['training_set_kwargs'] is None and data['augment_pipe'] is None
    with pytest.raises(GanPruneError, match='builtin:tiny32'):
        gan_prune.load_network_pkl('builtin:no-such-net')


def test_safe_loader_uses_our_classes_and_keeps_extra_keys(tmp_path):
    data = small_snapshot()
    data['pruning'] = {'rate': 0.5}
    data['note'] = 'hello'
    gan_prune.save_network_pkl(data, tmp_path / 'x.pkl')
    loaded = gan_prune.load_network_pkl(tmp_path / 'x.pkl')
    from training import networks
    assert type(loaded['G_ema']) is networks.Generator
    assert type(loaded['G_ema'].synthesis.b8.conv0) is networks.SynthesisLayer
    assert loaded['pruning'] == {'rate': 0.5} and loaded['note'] == 'hello'
    assert loaded['G_ema'].init_kwargs == data['G_ema'].init_kwargs


def _meta_with_source(module_src: str) -> dict:
    fc = pickle.loads(pickle.dumps(small_snapshot()['G'].mapping.fc0))
    meta = copy.deepcopy(fc.__reduce__()[1][0])
    meta['module_src'] = module_src
    return meta


class _Carrier:
    """Pickles as a call to the persistence reconstruct function with a meta of our choosing."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return persistence._reconstruct_persistent_obj, (self.meta,)


def test_safe_loader_never_executes_embedded_source(tmp_path):
    marker = tmp_path / 'executed.txt'
    src = f'open({str(marker)!r}, "w").write("ran")\nfrom training.networks import FullyConnectedLayer\n'
    stream = pickle.dumps({'layer': _Carrier(_meta_with_source(src))}, protocol=3)

    obj = unpickler.safe_load(io.BytesIO(stream))
    assert type(obj['layer']).__name__ == 'FullyConnectedLayer'
    assert obj['layer'](torch.ones(1, 8)).shape == (1, 8)
    assert not marker.exists()

    pickle.loads(stream)  # the trusting path does run it: the check above can fail
    assert marker.read_text() == 'ran'


def test_trusting_loader_reports_missing_class(tmp_path):
    data = {'G': _Carrier(_meta_with_source('# nothing here\n'))}
    path = tmp_path / 'placeholder.pkl'
    path.write_bytes(pickle.dumps(data, protocol=3))
    with pytest.raises(GanPruneError, match="does not define class 'FullyConnectedLayer'") as info:
        gan_prune.load_network_pkl(path, trust=True)
    assert '\n' not in str(info.value)
    with pytest.raises(GanPruneError, match="not a StyleGAN2-ADA network pickle: it has no D, G_ema"):
        gan_prune.load_network_pkl(path)  # the safe loader rebuilds it, then finds no D / G_ema


def test_force_fp16(saved):
    data, path = saved
    for trust in (False, True):
        loaded = gan_prune.load_network_pkl(path, trust=trust, force_fp16=True)
        for name in ('G', 'G_ema'):
            assert loaded[name].init_kwargs.synthesis_kwargs.num_fp16_res == 4
            assert loaded[name].init_kwargs.synthesis_kwargs.conv_clamp == 256
            assert loaded[name].synthesis.b16.use_fp16
        assert loaded['D'].init_kwargs.num_fp16_res == 4 and loaded['D'].init_kwargs.conv_clamp == 256
        for name in ('G', 'D', 'G_ema'):
            a, b = data[name].state_dict(), loaded[name].state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_force_fp16_on_shapes_that_disagree_with_init_kwargs(tmp_path):
    data = small_snapshot()
    data['G_ema']._init_kwargs['synthesis_kwargs']['channel_max'] = 8  # like a pruned net with stale kwargs
    gan_prune.save_network_pkl(data, tmp_path / 'p.pkl')
    assert gan_prune.load_network_pkl(tmp_path / 'p.pkl')['G_ema'] is not None  # fine without force_fp16
    with pytest.raises(GanPruneError, match='force_fp16 cannot rebuild G_ema') as info:
        gan_prune.load_network_pkl(tmp_path / 'p.pkl', force_fp16=True)
    assert '\n' not in str(info.value)


def test_tf_pickle_is_converted_by_the_safe_loader(golden_dir):
    data = gan_prune.load_network_pkl(golden_dir / 'tf_legacy_res32.pkl')
    assert type(data['G_ema']).__name__ == 'Generator' and data['G_ema'].img_resolution == 32
    assert data['training_set_kwargs'] is None and data['augment_pipe'] is None


def test_class_registry(monkeypatch, tmp_path):
    (tmp_path / 'registry_net_tmp.py').write_text(textwrap.dedent('''
        import torch
        from torch_utils import persistence

        @persistence.persistent_class
        class Scaler(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer('s', torch.full([2], 3.0))

        class NotPersistent(torch.nn.Module):
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import registry_net_tmp
        stream = pickle.dumps(registry_net_tmp.Scaler())
        with pytest.raises(GanPruneError, match="unknown class 'Scaler'.*--trust-pickle"):
            unpickler.safe_load(io.BytesIO(stream))

        # A module listed in KNOWN_CLASS_MODULES: its persistent Module classes are known by name.
        monkeypatch.setattr(unpickler, 'KNOWN_CLASS_MODULES', ['registry_net_tmp'])
        obj = unpickler.safe_load(io.BytesIO(stream))
        assert type(obj) is registry_net_tmp.Scaler and obj.s.tolist() == [3.0, 3.0]
        with pytest.raises(GanPruneError, match="unknown class 'NotPersistent'"):
            unpickler.resolve_known_class('NotPersistent')

        # An explicit entry, e.g. for a class stored under another name.
        monkeypatch.setattr(unpickler, 'KNOWN_CLASS_MODULES', [])
        monkeypatch.setitem(unpickler.KNOWN_CLASSES, 'Scaler', 'registry_net_tmp:Scaler')
        assert type(unpickler.safe_load(io.BytesIO(stream))) is registry_net_tmp.Scaler
        with pytest.raises(ValueError):
            unpickler.register_class('Bad', 'no_colon_here')
    finally:
        sys.modules.pop('registry_net_tmp', None)


def test_slim_generator_classes_are_known():
    # The pruned generator of gan_prune.generator.slim must load with the safe loader.
    from gan_prune.generator import slim
    known = [name for name in dir(slim) if isinstance(getattr(slim, name), type)
             and persistence.is_persistent(getattr(slim, name))]
    assert known
    for name in known:
        assert unpickler.resolve_known_class(name) is getattr(slim, name)


def test_referenced_globals_follows_memo():
    stream = pickle.dumps({'a': torch.nn.Parameter(torch.ones(2)), 'b': torch.ones(3), 'c': {1, 2}}, protocol=4)
    found = unpickler.referenced_globals(stream)
    assert ('torch._utils', '_rebuild_parameter') in found  # its module name is fetched from the memo
    assert ('torch._utils', '_rebuild_tensor_v2') in found
    assert all(isinstance(m, str) and isinstance(n, str) and '.' not in n for m, n in found)
    stream3 = pickle.dumps({'s': {1}}, protocol=3)
    assert unpickler.referenced_globals(stream3) == [('builtins', 'set')]
