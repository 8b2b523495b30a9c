"""Crafted pickles that try to crash, hang, exhaust memory or change the process: each is refused with one
line, quickly, and without the effect it was built for."""
import io
import pickle
import struct
import time
import tracemalloc
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

import dnnlib
import gan_prune
from gan_prune.errors import GanPruneError
from gan_prune.io import pickle_scan, unpickler


# ------------------------------------------------------------------------------------------------------------
# A tiny pickle assembler: each helper returns the bytes of one or more opcodes.

def proto(n=2):
    return b'\x80' + bytes([n])


def glob(module, name):
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def text(s):
    raw = s.encode('utf-8')
    return b'X' + struct.pack('<I', len(raw)) + raw


def num(n):
    if 0 <= n < 2 ** 31:
        return b'J' + struct.pack('<i', n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(raw)]) + raw


def raw_bytes(b):
    return b'B' + struct.pack('<I', len(b)) + b


def tup(*items):
    return b'(' + b''.join(items) + b't'


def call(func, *args):
    return func + tup(*args) + b'R'


def build(state):
    return state + b'b'


def empty_dict():
    return b'}'


def dict_of(**items):
    return b'}(' + b''.join(text(k) + v for k, v in items.items()) + b'u'


STOP = b'.'


def load_file(tmp_path, stream, name='crafted.pkl'):
    path = tmp_path / name
    path.write_bytes(stream)
    return path


def load_error(tmp_path, stream, name='crafted.pkl', within_s=20.0):
    """The one-line GanPruneError of loading `stream`, which must come quickly."""
    path = load_file(tmp_path, stream, name)
    started = time.monotonic()
    with pytest.raises(GanPruneError) as info:
        gan_prune.load_network_pkl(path)
    assert time.monotonic() - started < within_s
    message = str(info.value)
    assert message and '\n' not in message and '\x1b' not in message, message
    assert name in message
    return message


def storage_blob_of(tensor):
    # What a tensor storage is inside a network pickle: a nested legacy torch.save stream.
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # TypedStorage is what network pickles hold
        torch.save(tensor.storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------
# Nesting, memo expansion, declared lengths (the pre-scan)

def test_deep_tuple_is_refused_not_a_crash(tmp_path):
    deep = proto(4) + b')' + b'\x85' * 200_000 + STOP  # 200,000 nested 1-tuples
    assert 'levels deep' in load_error(tmp_path, deep)


def test_deep_marks_are_refused(tmp_path):
    assert 'nested MARKs' in load_error(tmp_path, proto(2) + b'(' * 200_000 + b'N' + STOP)


def test_deep_chain_built_through_the_memo_is_refused_after_loading(tmp_path):
    # 5,000 lists stored in the memo, then each appended into the previous one: the stream never nests, the
    # loaded value is 5,000 levels deep. The walk after loading catches it.
    n = 5000
    stream = proto(4) + b''.join(b']\x94' + b'0' for _ in range(n))
    for i in range(n - 1):
        stream += b'j' + struct.pack('<I', i) + b'j' + struct.pack('<I', i + 1) + b'a0'
    stream += b'j' + struct.pack('<I', 0) + STOP
    assert 'levels deep' in load_error(tmp_path, stream)


def test_billion_laughs_is_refused_quickly(tmp_path):
    stream = proto(2) + b'(' + text('lol') * 10 + b'l' + b'q\x00'
    for level in range(1, 30):
        stream += b'(' + (b'h' + bytes([level - 1])) * 10 + b'l' + b'q' + bytes([level])
    stream += STOP
    assert 'expands to more than' in load_error(tmp_path, stream, within_s=5)


def test_expansion_through_later_appends_is_bounded_after_loading():
    # Lists filled only after they were stored: the scan cannot see the expansion; the walk after loading can.
    stream = proto(4) + b''.join(b']\x940' for _ in range(12))
    for level in range(11, 0, -1):  # outermost first, while the inner lists are still empty
        stream += b'j' + struct.pack('<I', level) + b'(' + (b'j' + struct.pack('<I', level - 1)) * 10 + b'e0'
    stream += b'j' + struct.pack('<I', 11) + STOP
    limits = pickle_scan.ScanLimits(max_expanded=100_000)
    pickle_scan.scan_pickle(io.BytesIO(stream), limits)  # passes the scan...
    with pytest.raises(GanPruneError, match='expands to more than 100,000'):
        unpickler.safe_load(io.BytesIO(stream), limits)  # ...not the walk


@pytest.mark.parametrize('opcode, width', [(b'B', '<I'), (b'\x8e', '<Q'), (b'X', '<I'), (b'\x8d', '<Q'),
                                           (b'\x96', '<Q')])
def test_declared_lengths_beyond_the_file_allocate_nothing(tmp_path, opcode, width):
    # BINBYTES, BINBYTES8, BINUNICODE, BINUNICODE8, BYTEARRAY8 claiming 3 GB in a file of a few bytes.
    stream = proto(5) + opcode + struct.pack(width, 3_000_000_000) + b'x' * 20 + STOP
    tracemalloc.start()
    try:
        message = load_error(tmp_path, stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 'declares a 3,000,000,000-byte' in message
    assert peak < 50_000_000


def test_scan_passes_standard_networks_with_room_to_spare(golden_dir):
    for name in ('snapshot_format_res32.pkl', 'tf_legacy_res32.pkl'):
        with open(golden_dir / name, 'rb') as f:
            report = pickle_scan.scan_pickle(f)
        assert report.max_depth < pickle_scan.DEFAULT_LIMITS.max_depth // 2
        assert report.max_expanded < pickle_scan.DEFAULT_LIMITS.max_expanded // 100


# ------------------------------------------------------------------------------------------------------------
# Sizes in call arguments

def test_bytearray_of_a_size_is_refused(tmp_path):
    stream = proto(2) + call(glob('builtins', 'bytearray'), num(3_000_000_000)) + STOP
    assert 'not allocate a size' in load_error(tmp_path, stream)


def test_numpy_array_larger_than_the_file_is_refused(tmp_path):
    stream = proto(2) + call(glob('numpy.core.multiarray', '_reconstruct'), glob('numpy', 'ndarray'),
                             tup(num(1_000_000), num(1_000_000)), b'C\x01b') + STOP
    assert 'numpy array of 1,000,000,000,000 elements' in load_error(tmp_path, stream)


def test_numpy_array_whose_data_does_not_match_its_shape_is_refused(tmp_path):
    array = call(glob('numpy.core.multiarray', '_reconstruct'), glob('numpy', 'ndarray'), tup(num(0)), b'C\x01b')
    dtype = call(glob('numpy', 'dtype'), text('f4'), b'\x89', b'\x88')
    state = tup(num(1), tup(num(1000), num(1000)), dtype, b'\x89', raw_bytes(b'\0' * 16))
    assert 'does not match its 16 bytes' in load_error(tmp_path, proto(2) + build_on(array, state) + STOP)


def build_on(obj, state):
    return obj + state + b'b'


@pytest.mark.filterwarnings('ignore:TypedStorage is deprecated')
def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    class HugeView:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (torch.ones(2).storage(), 0, (1_000_000_000,), (1,), False,
                                                     OrderedDict())

    (tmp_path / 'view.pkl').write_bytes(pickle.dumps({'G': HugeView()}, protocol=4))
    with pytest.raises(GanPruneError, match=r'reaches element 999,999,999 of a storage that holds 2'):
        gan_prune.load_network_pkl(tmp_path / 'view.pkl')


def test_storage_declaring_more_elements_than_its_bytes_is_refused():
    import pickletools
    blob = storage_blob_of(torch.ones(2))
    f = io.BytesIO(blob)
    for _ in range(3):
        list(pickletools.genops(f))
    start = f.tell()
    list(pickletools.genops(f))  # the fourth pickle: the storage's persistent id, with its element count
    end = f.tell()
    forged_pid = blob[start:end].replace(b'K\x02N', b'J' + struct.pack('<i', 2 ** 31 - 1) + b'N')
    assert forged_pid != blob[start:end]
    forged = blob[:start] + forged_pid + blob[end:]
    with pytest.raises(GanPruneError, match='declares 2,147,483,647 elements'):
        unpickler._load_storage_from_bytes(forged)
    assert unpickler._load_storage_from_bytes(blob).tolist() == [1.0, 1.0]


def test_tensor_new_with_a_size_is_refused(tmp_path):
    # NEWOBJ torch.Tensor(10**10) would allocate; only plain containers may be created that way.
    stream = proto(2) + glob('torch', 'Tensor') + tup(num(10 ** 10)) + b'\x81' + STOP
    assert 'never creates that way' in load_error(tmp_path, stream)


# ------------------------------------------------------------------------------------------------------------
# numpy dtypes: never objects, records or forged flags

@pytest.mark.parametrize('spec', ['O', 'O8', 'V16', '(2,)f4'])
def test_object_and_record_dtypes_are_refused(tmp_path, spec):
    stream = proto(2) + call(glob('numpy', 'dtype'), text(spec), b'\x89', b'\x88') + STOP
    assert 'refusing' in load_error(tmp_path, stream)


def test_forged_scalar_pointer_is_refused(tmp_path):
    # The classic: an object scalar whose "value" is 8 bytes from the file, read as a pointer.
    dtype = call(glob('numpy', 'dtype'), text('O8'), b'\x89', b'\x88')
    stream = proto(2) + call(glob('numpy.core.multiarray', 'scalar'), dtype, raw_bytes(b'\x41' * 8)) + STOP
    assert 'object and structured dtypes' in load_error(tmp_path, stream)


MINUS_ONE = b'J\xff\xff\xff\xff'


def dtype_state(fields=None, names=None, flags=0, endian='<'):
    # (version, byte order, subarray, names, fields, itemsize, alignment, flags)
    return tup(num(3), text(endian), b'N', names or b'N', fields or b'N', MINUS_ONE, MINUS_ONE, num(flags))


def test_dtype_state_with_object_fields_or_flags_is_refused(tmp_path):
    base = call(glob('numpy', 'dtype'), text('f8'), b'\x89', b'\x88')
    object_dtype = call(glob('numpy', 'dtype'), text('O8'), b'\x89', b'\x88')
    with_fields = dtype_state(names=tup(text('p')), fields=b'}' + text('p') + tup(object_dtype, num(0)) + b's')
    assert 'refusing' in load_error(tmp_path, proto(2) + build_on(base, with_fields) + STOP, 'a.pkl')
    # flags claiming the dtype holds Python objects: the array's bytes would be read as pointers
    assert 'forges numpy dtype' in load_error(tmp_path, proto(2) + build_on(base, dtype_state(flags=63)) + STOP,
                                              'b.pkl')


def test_a_dtype_state_never_changes_numpy_shared_dtypes(tmp_path):
    # copy=False would hand back numpy's own float32 dtype; a byte-order change would then apply process-wide.
    shared = call(glob('numpy', 'dtype'), text('f4'), b'\x89', b'\x89')
    stream = proto(2) + build_on(shared, dtype_state(endian='>')) + STOP
    value = unpickler.safe_load(io.BytesIO(stream))
    assert value.byteorder == '>' and value is not np.dtype('f4')
    assert np.dtype('f4').byteorder == '='


# ------------------------------------------------------------------------------------------------------------
# A loaded file cannot change our classes or call what it put in a dict

@pytest.mark.parametrize('state', [dict_of(planted=num(1)), tup(b'N', dict_of(planted=num(1)))])
def test_build_on_a_class_is_refused(tmp_path, state):
    stream = proto(2) + build_on(glob('dnnlib.util', 'EasyDict'), state) + STOP
    assert 'set attributes on EasyDict itself' in load_error(tmp_path, stream)
    assert not hasattr(dnnlib.util.EasyDict, 'planted')


def test_build_on_a_function_or_module_class_is_refused(tmp_path):
    stream = proto(2) + build_on(glob('torch._utils', '_rebuild_tensor_v2'), dict_of(planted=num(1))) + STOP
    assert 'itself' in load_error(tmp_path, stream)
    assert not hasattr(torch._utils._rebuild_tensor_v2, 'planted')


def test_build_never_calls_a_setstate_stored_in_the_object(tmp_path):
    # EasyDict answers any attribute from its items, so getattr(obj, '__setstate__') would find bytearray here.
    easy = glob('dnnlib.util', 'EasyDict') + b')\x81' + b'(' + text('__setstate__') + glob('builtins', 'bytearray') + b'u'
    stream = proto(2) + build_on(easy, num(3_000_000_000)) + STOP
    assert 'not a dict of attribute names' in load_error(tmp_path, stream)
    ok = proto(2) + build_on(easy, dict_of(extra=num(1))) + STOP
    value = unpickler.safe_load(io.BytesIO(ok))
    assert value.__dict__ == {'extra': 1} and value['__setstate__'] is bytearray


def test_appends_never_call_methods_of_other_objects(tmp_path):
    # APPENDS on an EasyDict would look up `extend` in its items.
    easy = glob('dnnlib.util', 'EasyDict') + b')\x81' + b'(' + text('extend') + glob('builtins', 'bytearray') + b'u'
    stream = proto(2) + easy + b'(' + num(3_000_000_000) + b'e' + STOP
    assert 'APPENDS on a EasyDict' in load_error(tmp_path, stream)


def test_calling_an_object_that_is_not_an_allowed_function_is_refused(tmp_path):
    # A torch dtype is allowed as a value, never as something to call.
    stream = proto(2) + call(glob('torch', 'float32')) + STOP
    assert 'calls torch.float32 directly' in load_error(tmp_path, stream)


# ------------------------------------------------------------------------------------------------------------
# Protocols 0-5 of the standard networks, including the Python 2 spellings

def small_networks():
    from training import networks
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3,
                           mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_base': 16, 'channel_max': 4})
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=16, channel_max=4)
    return G, D


@pytest.mark.parametrize('protocol', [0, 1, 2, 3, 4, 5])
def test_every_pickle_protocol_of_a_standard_network_loads(tmp_path, protocol):
    G, D = small_networks()
    gan_prune.save_network_pkl(dict(G=G, D=D, G_ema=G, training_set_kwargs=dnnlib.EasyDict(resolution=8, xflip=True),
                                    augment_pipe=None), tmp_path / 'saved.pkl')
    original = pickle.loads((tmp_path / 'saved.pkl').read_bytes())  # our own file: trusting is fine here
    stream = pickle.dumps(original, protocol=protocol)
    if protocol < 2:
        assert b'__builtin__' in stream and b'copy_reg' in stream  # the Python 2 spellings
    (tmp_path / 'p.pkl').write_bytes(stream)
    loaded = gan_prune.load_network_pkl(tmp_path / 'p.pkl')
    assert loaded['training_set_kwargs'] == {'resolution': 8, 'xflip': True}
    assert isinstance(loaded['training_set_kwargs'], dnnlib.EasyDict)
    for name, tensor in G.state_dict().items():
        assert torch.equal(loaded['G'].state_dict()[name], tensor), name


# ------------------------------------------------------------------------------------------------------------
# Names from the file are printed escaped

def test_names_from_the_file_are_escaped_in_the_error(tmp_path):
    hostile = 'os\x1b[2J\nerror: all good, exit 0\r'
    stream = proto(4) + text(hostile) + text('system') + b'\x93' + STOP  # STACK_GLOBAL: any text is a name
    message = load_error(tmp_path, stream)
    assert '\\x1b[2J\\nerror: all good, exit 0\\r.system' in message


def test_cli_prints_escaped_names(tmp_path, capsys):
    from gan_prune import cli
    hostile = 'Net\x1b]0;owned\x07\u202eworld\nfake line'
    meta = dict(type='class', version=6, module_src='', class_name=hostile,
                state={'_parameters': {}, '_buffers': {}, '_modules': {}})
    stream = pickle.dumps({'G': _Carrier(meta)}, protocol=4)
    (tmp_path / 'n.pkl').write_bytes(stream)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['info', '--pkl', str(tmp_path / 'n.pkl')])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '\x1b' not in err and '\x07' not in err and '\u202e' not in err
    assert 'Net\\x1b]0;owned\\x07\\u202eworld\\nfake line' in err


def test_untrusted_text_helpers():
    from gan_prune.errors import untrusted_repr, untrusted_text
    assert untrusted_text('plain name') == 'plain name'
    assert untrusted_text('a\nb\x1b[0m\u2028c') == 'a\\nb\\x1b[0m\\u2028c'
    assert untrusted_text('x' * 500).endswith('...') and len(untrusted_text('x' * 500)) == 200
    deep = ()
    for _ in range(10_000):
        deep = (deep,)
    assert len(untrusted_repr(deep)) <= 200
    assert untrusted_repr('q\x1bz') == "'q\\x1bz'"


class _Carrier:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        from torch_utils import persistence
        return persistence._reconstruct_persistent_obj, (self.meta,)


def test_damaged_storage_key_is_one_line(tmp_path):
    # Found by fuzzing: torch's reader asserts when a storage blob's key does not match its data.
    blob = bytearray(storage_blob_of(torch.ones(2)))
    key_end = blob.index(b'q\x02X\x03\x00\x00\x00cpu')  # the key string sits just before the location
    blob[key_end - 1] = 48 + (blob[key_end - 1] - 47) % 10  # its last digit changed
    stream = proto(2) + b'}' + text('G') + call(glob('torch.storage', '_load_from_bytes'), raw_bytes(bytes(blob)))
    stream += b's' + STOP
    assert 'damaged tensor storage (AssertionError)' in load_error(tmp_path, stream)


def test_listing_the_globals_of_a_forged_file_allocates_nothing(tmp_path):
    path = load_file(tmp_path, proto(4) + b'\x8e' + struct.pack('<Q', 3_000_000_000) + b'x' * 20 + STOP)
    tracemalloc.start()
    try:
        with open(path, 'rb') as f, pytest.raises(ValueError):
            unpickler.referenced_globals(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000


def test_keys_from_the_file_are_escaped(tmp_path):
    message = load_error(tmp_path, pickle.dumps({'weights\x1b[31m\nG': 1}))
    assert 'weights\\x1b[31m\\nG' in message
