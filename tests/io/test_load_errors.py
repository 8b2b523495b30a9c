"""Every kind of bad input to load_network_pkl is one clear GanPruneError line, never a traceback."""
import io
import os
import pickle
import pickletools
import socket
import sys
import types
import zipfile

import pytest
import torch

import dnnlib
import gan_prune
from gan_prune import defaults
from gan_prune.errors import GanPruneError
from gan_prune.io import unpickler


def small_snapshot_bytes(tmp_path) -> bytes:
    from training import networks
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_base': 32, 'channel_max': 8})
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=32, channel_max=8)
    gan_prune.save_network_pkl(dict(G=G, D=D, G_ema=G), tmp_path / 'good.pkl')
    return (tmp_path / 'good.pkl').read_bytes()


def load_error(src, **kwargs) -> str:
    with pytest.raises(GanPruneError) as info:
        gan_prune.load_network_pkl(src, **kwargs)
    message = str(info.value)
    assert message and '\n' not in message, message
    assert info.value.__suppress_context__ or info.value.__context__ is None
    return message


def test_missing_file_and_directory(tmp_path):
    assert 'not found' in load_error(str(tmp_path / 'nope.pkl'))
    assert 'not found' in load_error(f'file://{tmp_path}/nope.pkl')
    assert 'is a directory' in load_error(tmp_path)


def test_empty_and_non_pickle_files(tmp_path):
    (tmp_path / 'empty.pkl').write_bytes(b'')
    assert 'is empty' in load_error(tmp_path / 'empty.pkl')
    (tmp_path / 'text.pkl').write_text('this is a text file, not a network\n')
    assert 'not a pickle' in load_error(tmp_path / 'text.pkl')
    with zipfile.ZipFile(tmp_path / 'model.pt', 'w') as z:
        z.writestr('archive/data.pkl', b'x')
    assert 'zip file' in load_error(tmp_path / 'model.pt')
    torch.save({'w': torch.ones(2)}, tmp_path / 'ckpt.pt')
    assert 'zip file' in load_error(tmp_path / 'ckpt.pt')


@pytest.mark.parametrize('trust', [False, True])
def test_truncated_pickle(tmp_path, trust):
    good = small_snapshot_bytes(tmp_path)
    for cut in (len(good) // 2, len(good) - 1, 40):
        (tmp_path / 'cut.pkl').write_bytes(good[:cut])
        message = load_error(tmp_path / 'cut.pkl', trust=trust)
        assert 'truncated' in message or 'corrupt' in message, message


def test_corrupt_pickle(tmp_path):
    good = small_snapshot_bytes(tmp_path)
    ops = list(pickletools.genops(good))
    # (a) an invalid opcode in the middle of the stream; (b) a damaged tensor storage blob (its zip header).
    opcode_pos = ops[len(ops) // 2][2]
    blob_pos = next(pos for op, arg, pos in ops if op.name == 'BINBYTES' and arg[:2] == b'\x80\x02') + 5
    for pos in (opcode_pos, blob_pos):
        bad = bytearray(good)
        bad[pos:pos + 4] = b'\xff\xfe\xfd\xfc'
        (tmp_path / 'bad.pkl').write_bytes(bytes(bad))
        message = load_error(tmp_path / 'bad.pkl')
        assert 'bad.pkl' in message and 'corrupt' in message, message


@pytest.mark.parametrize('obj, expected', [
    ([1, 2, 3], 'holds a list'),
    ({'weights': 1}, 'it has no G, D, G_ema'),
    ({'G': 1, 'D': 2, 'G_ema': 3}, 'G is a int, not a torch Module'),
])
def test_unknown_formats(tmp_path, obj, expected):
    (tmp_path / 'other.pkl').write_bytes(pickle.dumps(obj))
    message = load_error(tmp_path / 'other.pkl')
    assert 'other.pkl' in message and expected in message


def test_bad_training_set_kwargs_and_augment_pipe(tmp_path):
    good = pickle.loads(small_snapshot_bytes(tmp_path))
    (tmp_path / 'x.pkl').write_bytes(pickle.dumps(dict(good, training_set_kwargs=[1])))
    assert 'training_set_kwargs is a list' in load_error(tmp_path / 'x.pkl')
    (tmp_path / 'y.pkl').write_bytes(pickle.dumps(dict(good, augment_pipe='p')))
    assert 'augment_pipe is a str' in load_error(tmp_path / 'y.pkl')


class _Evil:
    def __reduce__(self):
        return os.system, ('echo should-never-run',)


def test_refused_global_names_it_and_suggests_trust(tmp_path):
    (tmp_path / 'evil.pkl').write_bytes(pickle.dumps({'G': _Evil()}))
    message = load_error(tmp_path / 'evil.pkl')
    assert 'refusing' in message and '.system' in message and '--trust-pickle' in message
    (tmp_path / 'mod.pkl').write_bytes(pickle.dumps({'G': torch.nn.Linear(2, 2)}))
    assert 'torch.nn.modules.linear.Linear' in load_error(tmp_path / 'mod.pkl')


def test_unknown_persistent_class_is_refused(tmp_path):
    from torch_utils import persistence
    meta = dict(type='class', version=6, module_src='# none', class_name='MysteryNet',
                state={'_parameters': {}, '_buffers': {}, '_modules': {}})

    class Carrier:
        def __reduce__(self):
            return persistence._reconstruct_persistent_obj, (meta,)

    (tmp_path / 'm.pkl').write_bytes(pickle.dumps({'G': Carrier()}))
    message = load_error(tmp_path / 'm.pkl')
    assert "'MysteryNet'" in message and '--trust-pickle' in message
    meta['version'] = 7
    (tmp_path / 'v.pkl').write_bytes(pickle.dumps({'G': Carrier()}))
    assert 'version 7' in load_error(tmp_path / 'v.pkl')
    meta.update(version=6, class_name='Generator', state={'_parameters': 5})
    (tmp_path / 's.pkl').write_bytes(pickle.dumps({'G': Carrier()}))
    assert 'malformed Generator' in load_error(tmp_path / 's.pkl')


def test_storage_blob_with_code_is_refused():
    # A tensor storage blob is a nested torch.save file; it is read with weights_only, so code in it is refused.
    buf = io.BytesIO()
    torch.save(_Evil(), buf, _use_new_zipfile_serialization=False)  # the format storages use
    with pytest.raises(GanPruneError, match=r'tensor storage in the pickle references \w+\.system'):
        unpickler._load_storage_from_bytes(buf.getvalue())


def test_tf_pickle_with_unknown_kwarg(tmp_path, golden_dir, monkeypatch):
    with open(golden_dir / 'tf_legacy_res32.pkl', 'rb') as f:
        tf_G, tf_D, tf_Gs = unpickler.safe_load(f)
    # Write it back under the TF class path, with one unknown option.
    fake = types.ModuleType('dnnlib.tflib.network')

    class Network(dict):
        pass
    Network.__module__ = 'dnnlib.tflib.network'
    Network.__qualname__ = 'Network'
    fake.Network = Network
    monkeypatch.setitem(sys.modules, 'dnnlib.tflib', types.ModuleType('dnnlib.tflib'))
    monkeypatch.setitem(sys.modules, 'dnnlib.tflib.network', fake)

    def as_network(stub):
        net = Network()
        net.__dict__.update(stub.__dict__)
        net.components = {k: as_network(v) for k, v in stub.components.items()}
        return net

    nets = [as_network(n) for n in (tf_G, tf_D, tf_Gs)]
    nets[2].static_kwargs = dict(nets[2].static_kwargs, fancy_option=1)
    (tmp_path / 'tf.pkl').write_bytes(pickle.dumps(tuple(nets), protocol=3))
    monkeypatch.delitem(sys.modules, 'dnnlib.tflib.network')
    message = load_error(tmp_path / 'tf.pkl')
    assert 'Unknown TensorFlow kwarg fancy_option' in message


def test_unsupported_scheme_and_bad_source_types():
    assert 'unsupported URL scheme' in load_error('ftp://example.com/net.pkl')
    assert 'must be a path' in load_error(None)
    assert 'must be a path' in load_error('')


def test_http_errors(tmp_path, monkeypatch, serve_http):
    monkeypatch.setitem(defaults.DOWNLOAD, 'retry_delay', 0.0)
    monkeypatch.setitem(defaults.DOWNLOAD, 'num_attempts', 2)
    server = serve_http({})  # every path answers 404
    message = load_error(server.base + '/missing.pkl', cache_dir=tmp_path)
    assert 'HTTP 404' in message and '/missing.pkl' in message

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    message = load_error(f'http://127.0.0.1:{port}/net.pkl', cache_dir=tmp_path)
    assert 'could not download' in message


def test_trusting_check_is_switched_off_after_a_failed_load(tmp_path):
    from gan_prune.io import pickles
    from torch_utils import persistence
    (tmp_path / 'cut.pkl').write_bytes(small_snapshot_bytes(tmp_path)[:100])
    load_error(tmp_path / 'cut.pkl', trust=True)
    assert pickles._trusting_state['active'] is False
    # Plain unpickling elsewhere behaves as without gan_prune: a placeholder source fails in its own way.
    meta = dnnlib.EasyDict(type='class', version=6, module_src='# placeholder', class_name='Generator', state={})

    class Carrier:
        def __reduce__(self):
            return persistence._reconstruct_persistent_obj, (dict(meta),)

    with pytest.raises(KeyError):
        pickle.loads(pickle.dumps(Carrier()))
