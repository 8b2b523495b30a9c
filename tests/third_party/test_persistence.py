"""torch_utils.persistence: the decorator, the reduce format, and rebuilding from embedded module source."""
import copy
import inspect
import pickle
import pickletools
import sys
import textwrap

import pytest
import torch

import dnnlib
from torch_utils import persistence
from training import networks


def small_fc() -> torch.nn.Module:
    return networks.FullyConnectedLayer(4, 3, activation='lrelu', lr_multiplier=0.5)


def stream_globals(stream: bytes) -> set:
    return {arg for op, arg, _ in pickletools.genops(stream) if op.name == 'GLOBAL'}


@pytest.fixture
def temp_module(tmp_path, monkeypatch):
    """Import a module written from `source` (from a temp dir); the module is dropped again afterwards."""
    created = []

    def make(name: str, source: str):
        (tmp_path / f'{name}.py').write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        module = __import__(name)
        created.append(name)
        return module

    yield make
    for name in created:
        sys.modules.pop(name, None)


def test_decorated_class_identity():
    cls = networks.FullyConnectedLayer
    assert cls.__name__ == 'FullyConnectedLayer'
    assert cls.__module__ == 'torch_utils.persistence'
    assert cls.__qualname__ == 'persistent_class.<locals>.Decorator'
    assert cls.__mro__[1].__module__ == 'training.networks'
    assert cls.__mro__[1].__name__ == 'FullyConnectedLayer'
    assert persistence.persistent_class(cls) is cls  # already persistent: unchanged
    assert persistence.is_persistent(cls) and persistence.is_persistent(small_fc())
    assert not persistence.is_persistent(torch.nn.Linear(2, 2))
    assert not persistence.is_persistent(torch.nn.Linear)
    assert not persistence.is_persistent({})  # unhashable objects are fine


def test_init_args_and_kwargs_are_deep_copies():
    kwargs_in = dict(z_dim=8, w_dim=8, num_ws=2, num_layers=1)
    net = networks.MappingNetwork(c_dim=0, **kwargs_in)
    assert net.init_args == ()
    assert isinstance(net.init_kwargs, dnnlib.EasyDict)
    assert net.init_kwargs == dict(c_dim=0, **kwargs_in)
    got = net.init_kwargs
    got['z_dim'] = 999
    assert net.init_kwargs.z_dim == 8
    kwargs_in['z_dim'] = 123  # the caller's dict is not shared either
    assert net._init_kwargs['z_dim'] == 8
    fc = networks.FullyConnectedLayer(4, 3)
    assert fc.init_args == (4, 3)
    conv = networks.Conv2dLayer(2, 2, 3, resample_filter=[1, 3, 3, 1])
    conv.init_kwargs['resample_filter'].append(7)  # nested values are copies too
    assert conv.init_kwargs['resample_filter'] == [1, 3, 3, 1]


def test_reduce_format():
    fc = small_fc()
    fields = fc.__reduce__()
    assert len(fields) >= 3
    assert fields[0] is persistence._reconstruct_persistent_obj
    assert isinstance(fields[1], tuple) and len(fields[1]) == 1
    assert fields[2] is None
    meta = fields[1][0]
    assert type(meta) is dict
    assert list(meta) == ['type', 'version', 'module_src', 'class_name', 'state']
    assert meta['type'] == 'class' and meta['version'] == 6
    assert meta['class_name'] == 'FullyConnectedLayer'
    assert meta['module_src'] == inspect.getsource(sys.modules['training.networks'])
    assert meta['state']['activation'] == 'lrelu'
    assert set(meta['state']['_parameters']) == {'weight', 'bias'}
    assert meta['state']['_init_args'] == (4, 3)


def test_pickle_names_only_the_reconstruct_function_for_net_objects():
    stream = pickle.dumps(small_fc(), protocol=3)
    found = stream_globals(stream)
    assert 'torch_utils.persistence _reconstruct_persistent_obj' in found
    assert not any(g.startswith('training') for g in found)
    assert not any(op.name == 'BUILD' for op, _, _ in pickletools.genops(stream))  # state travels in meta
    # The module source is stored once even with many objects from the same module.
    G_stream = pickle.dumps(networks.MappingNetwork(z_dim=4, c_dim=0, w_dim=4, num_ws=2, num_layers=3))
    assert G_stream.count(b'normalize_2nd_moment(x, dim=1') == 1


def test_roundtrip_in_process_reuses_loaded_module():
    fc = small_fc()
    loaded = pickle.loads(pickle.dumps(fc))
    assert type(loaded) is networks.FullyConnectedLayer  # the already-imported module is reused
    assert loaded.weight_gain == fc.weight_gain and loaded.activation == 'lrelu'
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), fc(x))
    copied = copy.deepcopy(fc)
    assert type(copied) is type(fc) and torch.equal(copied(x), fc(x))
    assert copied.weight is not fc.weight


def test_reconstruct_executes_unknown_source_once():
    fc = small_fc()
    meta = copy.deepcopy(fc.__reduce__()[1][0])
    meta['module_src'] = meta['module_src'] + '\n# variant\n'  # unknown text: executed in a fresh module
    obj1 = persistence._reconstruct_persistent_obj(copy.deepcopy(meta))
    module_name = type(obj1).__mro__[1].__module__
    assert module_name.startswith('_imported_module_') and module_name in sys.modules
    assert type(obj1).__name__ == 'FullyConnectedLayer' and persistence.is_persistent(obj1)
    # An equal (not identical) source string maps to the same module: nothing is executed again.
    meta2 = copy.deepcopy(meta)
    meta2['module_src'] = ''.join(list(meta['module_src']))
    obj2 = persistence._reconstruct_persistent_obj(meta2)
    assert type(obj2) is type(obj1)
    x = torch.randn(3, 4)
    assert torch.equal(obj1(x), fc(x))
    # Rebuilt without __init__: the stored attributes are the pickled ones.
    assert obj1._init_args == (4, 3) and obj1.weight_gain == fc.weight_gain


def test_reconstruct_checks_version_and_type():
    meta = copy.deepcopy(small_fc().__reduce__()[1][0])
    with pytest.raises(AssertionError):
        persistence._reconstruct_persistent_obj(dict(meta, version=5))
    with pytest.raises(AssertionError):
        persistence._reconstruct_persistent_obj(dict(meta, type='function'))


def test_import_hooks_run_in_order_and_can_patch(monkeypatch):
    monkeypatch.setattr(persistence, '_import_hooks', [])
    calls = []

    def rename(meta):
        calls.append(('rename', meta.class_name))
        assert isinstance(meta, dnnlib.EasyDict) and isinstance(meta.state, dnnlib.EasyDict)
        if meta.class_name == 'OldFullyConnectedLayer':
            meta.class_name = 'FullyConnectedLayer'
        return meta

    def record(meta):
        calls.append(('record', meta.class_name))
        return meta

    persistence.import_hook(rename)
    persistence.import_hook(record)
    meta = copy.deepcopy(small_fc().__reduce__()[1][0])
    meta['class_name'] = 'OldFullyConnectedLayer'
    obj = persistence._reconstruct_persistent_obj(meta)
    assert type(obj) is networks.FullyConnectedLayer
    assert calls == [('rename', 'OldFullyConnectedLayer'), ('record', 'FullyConnectedLayer')]

    persistence.import_hook(lambda meta: None)
    with pytest.raises(AssertionError):
        persistence._reconstruct_persistent_obj(copy.deepcopy(small_fc().__reduce__()[1][0]))
    with pytest.raises(AssertionError):
        persistence.import_hook('not callable')


def test_plain_class_state_goes_to_dict_and_pickleability_check(temp_module):
    mod = temp_module('persist_plain_tmp', '''
        from torch_utils import persistence

        @persistence.persistent_class
        class Box:
            def __init__(self, value, scale=2):
                self.value = value * scale

        @persistence.persistent_class
        class Holder:
            def __init__(self, thing):
                self.thing = thing
    ''')
    box = mod.Box(3, scale=4)
    assert box.init_args == (3,) and box.init_kwargs == {'scale': 4}
    loaded = pickle.loads(pickle.dumps(box))
    assert loaded.value == 12 and loaded.init_kwargs == {'scale': 4}
    assert type(loaded) is mod.Box
    with pytest.raises(Exception):
        mod.Holder(lambda: 1)  # not picklable: refused when constructed, not when saved


def test_fresh_process_loads_class_whose_module_is_not_importable(temp_module, tmp_path):
    mod = temp_module('persist_fresh_tmp', '''
        import torch
        from torch_utils import persistence

        @persistence.persistent_class
        class Doubler(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.arange(n, dtype=torch.float32))

            def forward(self, x):
                return 2 * x * self.weight
    ''')
    pkl = tmp_path / 'doubler.pkl'
    pkl.write_bytes(pickle.dumps([mod.Doubler(3), mod.Doubler(2)]))
    (tmp_path / 'persist_fresh_tmp.py').unlink()  # the loading process cannot import the defining module
    code = textwrap.dedent(f'''
        import pickle, sys, torch
        a, b = pickle.load(open({str(pkl)!r}, 'rb'))
        assert type(a) is type(b)
        name = type(a).__mro__[1].__module__
        assert name.startswith('_imported_module_'), name
        c = pickle.load(open({str(pkl)!r}, 'rb'))[0]
        assert type(c) is type(a)  # loading again reuses the generated module
        print(a(torch.ones(3)).tolist())
    ''')
    import subprocess
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[0.0, 2.0, 4.0]'
