"""Safe unpickling of StyleGAN2-ADA network pickles: no code from the file is ever executed.

A native snapshot names `torch_utils.persistence._reconstruct_persistent_obj` for every network object and
carries the source of the defining module, which the original loader executes. Here that global is mapped to
`rebuild_persistent_obj`, which ignores the embedded source and rebuilds the object from `class_name` and
`state` with our own classes (looked up in KNOWN_CLASSES). Every other global the stream names must be on
ALLOWED_GLOBALS (tensor and numpy rebuild functions, a few containers, EasyDict, the TF Network stub);
anything else is refused with a GanPruneError naming it.

Other modules can make their own persistent classes loadable with `register_class`, or by listing their
module in KNOWN_CLASS_MODULES (every persistent torch Module class defined there is then known by name).
"""
from __future__ import annotations

import _compat_pickle
import collections
import importlib
import io
import os
import pickle
import pickletools
import re
import types
import warnings
from typing import Any, BinaryIO, Callable, ClassVar, Iterable, cast

from gan_prune.errors import GanPruneError, untrusted_repr, untrusted_text
from gan_prune.io import pickle_scan

PERSISTENT_RECONSTRUCT = ('torch_utils.persistence', '_reconstruct_persistent_obj')
TF_NETWORK = ('dnnlib.tflib.network', 'Network')
PERSISTENCE_VERSION = 6

_NETWORK_CLASSES = ('FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer',
                    'SynthesisBlock', 'SynthesisNetwork', 'Generator', 'DiscriminatorBlock', 'MinibatchStdLayer',
                    'DiscriminatorEpilogue', 'Discriminator')

# meta.class_name -> 'module:attribute' of the class that rebuilds it. Extend with register_class().
KNOWN_CLASSES: dict[str, str] = {name: f'training.networks:{name}' for name in _NETWORK_CLASSES}
KNOWN_CLASSES['AugmentPipe'] = 'training.augment:AugmentPipe'

# Modules whose persistent torch Module classes are all known by their name (imported when first needed).
KNOWN_CLASS_MODULES: list[str] = ['gan_prune.generator.slim']


def register_class(class_name: str, target: str) -> None:
    """Make persistent objects stored with `class_name` load as the class at `target` ('module:attribute')."""
    if ':' not in target:
        raise ValueError(f"target must look like 'package.module:ClassName', got {target!r}")
    KNOWN_CLASSES[class_name] = target


# ------------------------------------------------------------------------------------------------------------
# Allowed globals


class TFNetworkStub(dict):
    """Stands in for a TensorFlow-era dnnlib.tflib.network.Network; its pickled state lands in __dict__."""


def _load_storage_from_bytes(data: bytes) -> Any:
    # The stream holds each tensor storage as a nested torch.save blob; read it without executing anything,
    # after checking that the size it declares fits in it.
    import torch
    _check_storage_blob(data)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
    except pickle.UnpicklingError as e:
        named = re.search(r'GLOBAL ([\w.]+)', str(e))
        if named or 'global' in str(e).lower():
            what = named.group(1) if named else 'a global'
            raise GanPruneError(f'refusing to load: a tensor storage in the pickle references {untrusted_text(what)} instead of '
                                f'holding tensor data; {refusal_hint()}') from None
        raise pickle.UnpicklingError('damaged tensor storage') from None
    except GanPruneError:
        raise
    except Exception as e:  # pylint: disable=broad-except  (torch's reader asserts, too, on damaged blobs)
        raise pickle.UnpicklingError(f'damaged tensor storage ({type(e).__name__})') from None


def _attr(module: str, name: str) -> Callable[[], Any]:
    def resolve() -> Any:
        return getattr(importlib.import_module(module), name)
    return resolve


def _numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    # numpy 2 moved numpy.core to numpy._core; both spellings occur in real files.
    def resolve() -> Any:
        try:
            module = importlib.import_module(f'numpy._core.{submodule}')
        except ImportError:
            module = importlib.import_module(f'numpy.core.{submodule}')
        return getattr(module, name)
    return resolve


def _persistent_rebuilder() -> Any:
    return rebuild_persistent_obj


def _tf_stub() -> Any:
    return TFNetworkStub


def _storage_loader() -> Any:
    return _load_storage_from_bytes


def _torch_dtypes() -> dict[tuple[str, str], Callable[[], Any]]:
    names = ['float16', 'float32', 'float64', 'bfloat16', 'uint8', 'int8', 'int16', 'int32', 'int64', 'bool',
             'complex64', 'complex128', 'half', 'float', 'double', 'long', 'int', 'short']
    return {('torch', name): _attr('torch', name) for name in names}


ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    PERSISTENT_RECONSTRUCT: _persistent_rebuilder,
    TF_NETWORK: _tf_stub,
    ('torch.storage', '_load_from_bytes'): _storage_loader,
    ('torch._utils', '_rebuild_tensor'): _attr('torch._utils', '_rebuild_tensor'),
    ('torch._utils', '_rebuild_tensor_v2'): _attr('torch._utils', '_rebuild_tensor_v2'),
    ('torch._utils', '_rebuild_parameter'): _attr('torch._utils', '_rebuild_parameter'),
    ('torch._utils', '_rebuild_parameter_with_state'): _attr('torch._utils', '_rebuild_parameter_with_state'),
    ('torch._tensor', '_rebuild_from_type_v2'): _attr('torch._tensor', '_rebuild_from_type_v2'),
    ('torch', 'Tensor'): _attr('torch', 'Tensor'),
    ('torch.nn.parameter', 'Parameter'): _attr('torch.nn.parameter', 'Parameter'),
    ('torch', 'Size'): _attr('torch', 'Size'),
    ('torch', 'device'): _attr('torch', 'device'),
    **_torch_dtypes(),
    # Plain torch containers, in case a network keeps submodules in them.
    ('torch.nn.modules.container', 'ModuleList'): _attr('torch.nn.modules.container', 'ModuleList'),
    ('torch.nn.modules.container', 'ModuleDict'): _attr('torch.nn.modules.container', 'ModuleDict'),
    ('torch.nn.modules.container', 'Sequential'): _attr('torch.nn.modules.container', 'Sequential'),
    ('torch.nn.modules.container', 'ParameterList'): _attr('torch.nn.modules.container', 'ParameterList'),
    ('torch.nn.modules.container', 'ParameterDict'): _attr('torch.nn.modules.container', 'ParameterDict'),
    ('collections', 'OrderedDict'): _attr('collections', 'OrderedDict'),
    ('builtins', 'set'): _attr('builtins', 'set'),
    ('builtins', 'frozenset'): _attr('builtins', 'frozenset'),
    ('builtins', 'bytearray'): _attr('builtins', 'bytearray'),
    ('builtins', 'complex'): _attr('builtins', 'complex'),
    ('builtins', 'bytes'): _attr('builtins', 'bytes'),  # empty bytes in protocol-0-2 streams
    ('copyreg', '_reconstructor'): _attr('copyreg', '_reconstructor'),  # plain instances in protocols 0 and 1
    ('builtins', 'object'): _attr('builtins', 'object'),  # ... and the base classes it names
    ('builtins', 'dict'): _attr('builtins', 'dict'),
    ('_codecs', 'encode'): _attr('_codecs', 'encode'),  # bytes in protocol-2 streams
    ('numpy', 'dtype'): _attr('numpy', 'dtype'),
    ('numpy', 'ndarray'): _attr('numpy', 'ndarray'),
    ('numpy.core.multiarray', 'scalar'): _numpy_core('multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'): _numpy_core('multiarray', 'scalar'),
    ('numpy.core.multiarray', '_reconstruct'): _numpy_core('multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'): _numpy_core('multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'): _numpy_core('numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'): _numpy_core('numeric', '_frombuffer'),
    ('dnnlib.util', 'EasyDict'): _attr('dnnlib.util', 'EasyDict'),
    ('dnnlib', 'EasyDict'): _attr('dnnlib.util', 'EasyDict'),
}


def refusal_hint() -> str:
    return 'if you trust this file, load it with --trust-pickle (trust=True), which runs the code it contains'


# ------------------------------------------------------------------------------------------------------------
# Persistent objects


def resolve_known_class(class_name: str) -> type:
    """The persistent class that rebuilds objects stored under `class_name`, or a GanPruneError."""
    from torch_utils import persistence

    target = KNOWN_CLASSES.get(class_name)
    if target is not None:
        module_name, attr = target.split(':', 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise GanPruneError(f'cannot rebuild {class_name}: its class lives in {module_name}, which failed to '
                                f'import ({_one_line(e)})') from None
        cls = getattr(module, attr, None)
        if not isinstance(cls, type):
            raise GanPruneError(f'cannot rebuild {class_name}: {module_name} has no class {attr}')
        return persistence.persistent_class(cls)

    import torch
    for module_name in KNOWN_CLASS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and persistence.is_persistent(cls):
            return cls
    raise GanPruneError(f'refusing to load a network object of unknown class {untrusted_repr(class_name)} (the toolkit can '
                        f'only rebuild the standard StyleGAN2-ADA classes and its own); {refusal_hint()}')


def rebuild_persistent_obj(meta: Any) -> Any:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: rebuild from class_name + state.

    The embedded module source is never looked at; the object gets its pickled state exactly (stored
    attributes are not recomputed), like the original mechanism does.
    """
    import dnnlib
    import torch
    from torch_utils import persistence

    if not isinstance(meta, dict) or not {'type', 'version', 'class_name', 'state'} <= set(meta):
        raise GanPruneError('malformed network object in the pickle (its metadata is not a dict with '
                            'type, version, class_name and state); is the file corrupt?')
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state) if isinstance(meta.state, dict) else meta.state
    for hook in getattr(persistence, '_import_hooks', []):
        meta = hook(meta)
    if meta.version != PERSISTENCE_VERSION:
        raise GanPruneError(f'unsupported network object format version {untrusted_repr(meta.version)} '
                            f'(expected {PERSISTENCE_VERSION}); was the file written by a newer toolkit?')
    if meta.type != 'class':
        raise GanPruneError(f'unsupported network object type {untrusted_repr(meta.type)} (expected class)')
    if not isinstance(meta.class_name, str) or not isinstance(meta.state, dict):
        raise GanPruneError('malformed network object in the pickle (class_name or state has the wrong type)')

    cls: Any = resolve_known_class(meta.class_name)  # Any: the checker reads cls.__new__ as type.__new__
    if issubclass(cls, torch.nn.Module):
        _check_module_state(meta.class_name, meta.state)
    obj = cls.__new__(cls)  # no __init__: the state holds everything
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(dict(meta.state))
    else:
        obj.__dict__.update(meta.state)
    return obj


def _check_module_state(class_name: str, state: dict) -> None:
    import torch
    for key in ('_parameters', '_buffers', '_modules'):
        if not isinstance(state.get(key), dict):
            raise GanPruneError(f'malformed {class_name} in the pickle: its state has no {key} dict; '
                                f'is the file corrupt?')
    for key in ('_parameters', '_buffers'):
        for name, value in state[key].items():
            if value is not None and not isinstance(value, torch.Tensor):
                raise GanPruneError(f'malformed {class_name} in the pickle: {key[1:-1]} {untrusted_repr(name)} is a '
                                    f'{type(value).__name__}, not a tensor')
    for name, value in state['_modules'].items():
        if value is not None and not isinstance(value, torch.nn.Module):
            raise GanPruneError(f'malformed {class_name} in the pickle: submodule {untrusted_repr(name)} is a '
                                f'{type(value).__name__}, not a torch Module')


# ------------------------------------------------------------------------------------------------------------
# What a stream may call, build and change
#
# The stream can only name ALLOWED_GLOBALS, but it chooses their arguments. Each callable is therefore called
# only after its check below has looked at the arguments: sizes against the file's size before anything is
# allocated, dtypes without Python objects in them, tensors that fit their storage. A check returns the
# arguments to call with (it may pin one, e.g. numpy.dtype's copy flag) or raises.

_Check = Callable[['SafeUnpickler', tuple], tuple]


def _refuse(label: str, why: str) -> GanPruneError:
    return GanPruneError(f'refusing to load: the pickle calls {label} {why}; it is forged or corrupt')


def _any_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    return args


def _not_callable(label: str) -> _Check:
    def check(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
        raise _refuse(label, 'directly, which a network pickle never does')
    return check


def _plain_sequence_args(label: str) -> _Check:
    # set, frozenset, OrderedDict, torch.Size, torch containers: build from one list/tuple (or nothing).
    def check(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, dict))):
            raise _refuse(label, f'with {untrusted_repr(args)} instead of a list')
        return args
    return check


def _bytes_args(label: str) -> _Check:
    # bytes() and bytearray(): from bytes, or from a str with the latin-1 codec (protocols 0-2); never a size.
    def check(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
        if args == () or (len(args) == 1 and isinstance(args[0], (bytes, bytearray))):
            return args
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ('latin-1', 'latin1'):
            return args
        raise _refuse(label, f'with {untrusted_repr(args)}; it may only copy bytes, not allocate a size')
    return check


def _codecs_encode_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ('latin1', 'latin-1'):
        return args
    raise _refuse('_codecs.encode', f'with {untrusted_repr(args)} (only latin-1 text is used for bytes)')


def _complex_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) <= 2 and all(type(a) in (int, float) for a in args):
        return args
    raise _refuse('complex', f'with {untrusted_repr(args)}')


def _device_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if 1 <= len(args) <= 2 and isinstance(args[0], str) and all(type(a) is int for a in args[1:]):
        return args
    raise _refuse('torch.device', f'with {untrusted_repr(args)}')


def _parameter_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    import torch
    if 1 <= len(args) <= 2 and isinstance(args[0], torch.Tensor) and all(type(a) is bool for a in args[1:]):
        return args
    raise _refuse('torch.nn.Parameter', 'with something other than a tensor')


# --- numpy

_NUMPY_KINDS = 'biufcSU'  # booleans, numbers, bytes and text; never objects ('O') or raw records ('V')


def _check_dtype(dtype: Any, where: str) -> None:
    import numpy as np
    if not isinstance(dtype, np.dtype):
        raise _refuse(where, f'with a {type(dtype).__name__} where a numpy dtype belongs')
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _NUMPY_KINDS:
        raise GanPruneError(f'refusing to load: the pickle holds numpy data of dtype {untrusted_text(str(dtype))}; '
                            f'object and structured dtypes are never part of a network pickle (a forged dtype '
                            f'can turn file bytes into pointers)')


def _dtype_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    import numpy as np
    if not 1 <= len(args) <= 3 or not isinstance(args[0], str) or len(args[0]) > 16:
        raise _refuse('numpy.dtype', f'with {untrusted_repr(args)} (a network pickle names simple dtypes only)')
    try:
        dtype = np.dtype(args[0])
    except (TypeError, ValueError) as e:
        raise _refuse('numpy.dtype', f'with {untrusted_repr(args[0])} ({_one_line(e)})') from None
    _check_dtype(dtype, 'numpy.dtype')
    align = bool(args[1]) if len(args) > 1 else False
    return (args[0], align, True)  # always a copy: a later BUILD must never touch numpy's shared dtypes


def _count(shape: Any, where: str) -> int:
    if not isinstance(shape, (tuple, list)) or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise _refuse(where, f'with shape {untrusted_repr(shape)}')
    count = 1
    for n in shape:
        count *= n
    return count


def _reconstruct_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    import numpy as np
    if len(args) != 3 or args[0] is not np.ndarray or not isinstance(args[2], (bytes, str)):
        raise _refuse('numpy _reconstruct', f'with {untrusted_repr(args)}')
    unpickler.check_allocation(_count(args[1], 'numpy _reconstruct'), 'a numpy array')
    _check_dtype(np.dtype(args[2] if isinstance(args[2], str) else args[2].decode('latin-1')), 'numpy _reconstruct')
    return args


def _scalar_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) != 2:
        raise _refuse('numpy scalar', f'with {len(args)} arguments')
    dtype, data = args
    _check_dtype(dtype, 'numpy scalar')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _refuse('numpy scalar', f'with {type(data).__name__} data that does not hold one {dtype}')
    return args


def _frombuffer_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) != 4:
        raise _refuse('numpy _frombuffer', f'with {len(args)} arguments')
    buffer, dtype, shape, order = args
    _check_dtype(dtype, 'numpy _frombuffer')
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or order not in ('C', 'F'):
        raise _refuse('numpy _frombuffer', 'with something other than a bytes buffer')
    if len(memoryview(buffer)) != _count(shape, 'numpy _frombuffer') * dtype.itemsize:
        raise _refuse('numpy _frombuffer', f'with a shape {untrusted_repr(shape)} that does not match its data')
    return args


# --- torch

def _storage_elements(storage: Any, where: str) -> int:
    import torch
    if isinstance(storage, torch.storage.TypedStorage):
        with warnings.catch_warnings():  # TypedStorage is what legacy storage blobs load as
            warnings.simplefilter('ignore', UserWarning)
            return storage.size()
    if isinstance(storage, torch.UntypedStorage):
        return storage.nbytes()
    raise _refuse(where, f'with a {type(storage).__name__} where a tensor storage belongs')


def _check_tensor_view(storage: Any, offset: Any, size: Any, stride: Any, where: str) -> None:
    elements = _storage_elements(storage, where)
    count = _count(size, where)
    if type(offset) is not int or offset < 0 or not isinstance(stride, (tuple, list)) or len(stride) != len(size) \
            or not all(type(s) is int and s >= 0 for s in stride):
        raise _refuse(where, f'with offset {untrusted_repr(offset)} and strides {untrusted_repr(stride)}')
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if count else 0
    if count and last >= elements:
        raise GanPruneError(f'refusing to load: a tensor in the pickle of shape {untrusted_repr(tuple(size))} reaches '
                            f'element {last:,} of a storage that holds {elements:,}; it is forged or corrupt')


def _check_no_hooks(hooks: Any, where: str) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _refuse(where, 'with backward hooks (a network pickle stores none)')


def _check_attribute_state(state: Any, where: str) -> None:
    # Python attributes of a tensor subclass: a dict (or a pair of dicts) of plain names.
    parts = state if isinstance(state, tuple) else (state,)
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, dict) or not all(isinstance(k, str) and not k.startswith('__') for k in part):
            raise _refuse(where, f'with tensor attributes {untrusted_repr(part)}')


def _rebuild_tensor_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) != 4:
        raise _refuse('torch _rebuild_tensor', f'with {len(args)} arguments')
    _check_tensor_view(*args, where='torch _rebuild_tensor')
    return args


def _rebuild_tensor_v2_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if not 6 <= len(args) <= 7:
        raise _refuse('torch _rebuild_tensor_v2', f'with {len(args)} arguments')
    storage, offset, size, stride = args[:4]
    _check_tensor_view(storage, offset, size, stride, where='torch _rebuild_tensor_v2')
    if type(args[4]) is not bool:
        raise _refuse('torch _rebuild_tensor_v2', 'with a requires_grad that is not True or False')
    _check_no_hooks(args[5], 'torch _rebuild_tensor_v2')
    if len(args) == 7 and args[6] is not None and not isinstance(args[6], dict):
        raise _refuse('torch _rebuild_tensor_v2', 'with metadata that is not a dict')
    return args


def _rebuild_parameter_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    import torch
    where = 'torch _rebuild_parameter'
    if len(args) not in (3, 4) or not isinstance(args[0], torch.Tensor) or type(args[1]) is not bool:
        raise _refuse(where, f'with {untrusted_repr(args)}')
    _check_no_hooks(args[2], where)
    if len(args) == 4:
        _check_attribute_state(args[3], where)
    return args


def _rebuild_from_type_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    import torch
    where = 'torch _rebuild_from_type_v2'
    if len(args) != 4 or not isinstance(args[2], tuple):
        raise _refuse(where, f'with {len(args)} arguments')
    func, new_type, inner_args, state = args
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _refuse(where, f'to make a {untrusted_text(getattr(new_type, "__name__", type(new_type).__name__))}')
    label = unpickler.label_of(func)
    inner_check = _TENSOR_REBUILDERS.get(label) if label is not None else None
    if inner_check is None:
        raise _refuse(where, 'with a function that does not rebuild tensors')
    _check_attribute_state(state, where)
    return (func, new_type, inner_check(unpickler, inner_args), state)


def _load_from_bytes_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    if len(args) != 1 or not isinstance(args[0], bytes):
        raise _refuse('torch.storage._load_from_bytes', 'with something other than bytes')
    return args  # the blob itself is checked by _load_storage_from_bytes


def _check_storage_blob(blob: bytes) -> None:
    """A tensor storage is a nested legacy torch.save stream: five small pickles, then the raw data. The
    fourth pickle declares the storage's element count, which torch allocates before reading the data: no
    number in it may exceed the blob's size (every element takes at least one byte of it)."""
    f = io.BytesIO(blob)
    for index in range(5):
        start = f.tell()
        pickle_scan.scan_pickle(f)  # bounds nesting and lengths; a damaged blob raises UnpicklingError
        ints = [arg for op, arg, _ in pickletools.genops(f) if op.name in _INT_OPS and type(arg) is int]
        if index == 3 and any(n > len(blob) or n < 0 for n in ints):
            raise GanPruneError(f'refusing to load: a tensor storage in the pickle declares '
                                f'{max(ints, key=abs):,} elements but holds only {len(blob):,} bytes; it is '
                                f'forged or corrupt')
        if f.tell() == start:
            break


_INT_OPS = {'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4'}

_TENSOR_REBUILDERS: dict[str, _Check] = {
    'torch._utils._rebuild_tensor': _rebuild_tensor_args,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2_args,
    'torch._utils._rebuild_parameter': _rebuild_parameter_args,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter_args,
}

_TORCH_CONTAINERS = ('ModuleList', 'ModuleDict', 'Sequential', 'ParameterList', 'ParameterDict')


def _call_checks() -> dict[tuple[str, str], _Check]:
    """How each allowed global may be called (by REDUCE, INST or OBJ); globals missing here are never called."""
    checks: dict[tuple[str, str], _Check] = {
        PERSISTENT_RECONSTRUCT: _any_args,  # rebuild_persistent_obj checks its own metadata
        TF_NETWORK: _plain_sequence_args('the TensorFlow Network stand-in'),
        ('torch.storage', '_load_from_bytes'): _load_from_bytes_args,
        ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_args,
        ('torch.nn.parameter', 'Parameter'): _parameter_args,
        ('torch', 'Size'): _plain_sequence_args('torch.Size'),
        ('torch', 'device'): _device_args,
        ('collections', 'OrderedDict'): _plain_sequence_args('OrderedDict'),
        ('builtins', 'set'): _plain_sequence_args('set'),
        ('builtins', 'frozenset'): _plain_sequence_args('frozenset'),
        ('builtins', 'bytearray'): _bytes_args('bytearray'),
        ('builtins', 'bytes'): _bytes_args('bytes'),
        ('builtins', 'complex'): _complex_args,
        ('builtins', 'dict'): _plain_sequence_args('dict'),
        ('_codecs', 'encode'): _codecs_encode_args,
        ('numpy', 'dtype'): _dtype_args,
        ('dnnlib.util', 'EasyDict'): _plain_sequence_args('EasyDict'),
        ('dnnlib', 'EasyDict'): _plain_sequence_args('EasyDict'),
        ('copyreg', '_reconstructor'): _reconstructor_args,
    }
    for label, check in _TENSOR_REBUILDERS.items():
        module, name = label.rsplit('.', 1)
        checks[(module, name)] = check
    for core in ('numpy.core', 'numpy._core'):
        checks[(f'{core}.multiarray', 'scalar')] = _scalar_args
        checks[(f'{core}.multiarray', '_reconstruct')] = _reconstruct_args
        checks[(f'{core}.numeric', '_frombuffer')] = _frombuffer_args
    for name in _TORCH_CONTAINERS:
        checks[('torch.nn.modules.container', name)] = _plain_sequence_args(name)
    return checks


def _reconstructor_args(unpickler: 'SafeUnpickler', args: tuple) -> tuple:
    # copyreg._reconstructor(cls, base, state): how protocols 0 and 1 store instances of plain classes.
    if len(args) != 3:
        raise _refuse('copyreg._reconstructor', f'with {len(args)} arguments')
    cls, base, state = args
    if not unpickler.may_create(cls):
        raise _refuse('copyreg._reconstructor', f'to create a {untrusted_text(getattr(cls, "__name__", "?"))}')
    if base is object and state is None:
        return args
    if base is dict and isinstance(cls, type) and issubclass(cls, dict) and isinstance(state, (dict, type(None))):
        return args
    raise _refuse('copyreg._reconstructor', 'with a base class other than object or dict')


# ------------------------------------------------------------------------------------------------------------
# The unpickler

_PurePythonUnpickler = pickle._Unpickler  # pylint: disable=protected-access  (its opcode handlers can be replaced)


class SafeUnpickler(_PurePythonUnpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS (network objects are rebuilt safely) and checks what
    the stream does with them.

    - Every call (REDUCE, INST, OBJ, NEWOBJ) goes to an allowed global, after the check for its arguments.
    - BUILD changes only instances of a few allowed classes, with dict state (numpy arrays and dtypes: their
      own state, checked); never a class, a function or a module.
    - APPEND(S) only on lists, SETITEM(S) only on dicts, ADDITEMS only on sets: no method is looked up on an
      object from the stream.
    - `file_size` bounds every size the stream asks to allocate.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_PurePythonUnpickler.dispatch)
    # Set or defined by the pure-Python unpickler, which typeshed's pickle._Unpickler stub does not declare.
    proto: int
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, f: BinaryIO, file_size: int | None = None):
        super().__init__(f)
        self.file_size = file_size if file_size is not None else _size_of(f)
        self._labels: dict[int, str] = {}
        self._call_checks: dict[int, _Check] = {}

    # --- names

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError('a global name in the pickle is not text')
        module, name = _python3_name(module, name, self.proto)
        resolve = ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise GanPruneError(f'refusing to load: the pickle references {untrusted_text(f"{module}.{name}")}, which '
                                f'a network pickle does not need; {refusal_hint()}')
        value = resolve()
        self._labels[id(value)] = f'{module}.{name}'
        check = _CALL_CHECKS.get((module, name))
        self._call_checks.setdefault(id(value), check or _not_callable(f'{module}.{name}'))
        return value

    def label_of(self, value: Any) -> str | None:
        return self._labels.get(id(value))

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError('persistent IDs are not used by network pickles')

    # --- sizes

    def check_allocation(self, count: int, what: str) -> None:
        if count > self.file_size:
            raise GanPruneError(f'refusing to load: the pickle asks for {what} of {count:,} elements, more than '
                                f'its {self.file_size:,} bytes could hold; it is forged or corrupt')

    # --- calls

    def call(self, func: Any, args: Any) -> Any:
        check = self._call_checks.get(id(func))
        if check is None:
            raise GanPruneError(f'refusing to load: the pickle calls a {untrusted_text(type(func).__name__)} object '
                                f'that is not one of the allowed functions; it is forged or corrupt')
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError('call arguments in the pickle are not a tuple')
        return func(*check(self, args))

    def may_create(self, cls: Any) -> bool:
        return isinstance(cls, type) and self.label_of(cls) in _CREATABLE

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(self.call(klass, tuple(args)))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_instance(cls, args, {}))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_instance(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _new_instance(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not self.may_create(cls):
            name = getattr(cls, '__name__', type(cls).__name__)
            raise _refuse('__new__', f'of {untrusted_text(str(name))}, which a network pickle never creates that way')
        if args or kwargs:
            raise _refuse('__new__', f'of {cls.__name__} with arguments')
        return cls.__new__(cls)

    # --- changes to objects

    def load_build(self) -> None:
        state = self.stack.pop()
        _apply_build(self.stack[-1], state)
    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self) -> None:
        value = self.stack.pop()
        _require_type(self.stack[-1], list, 'APPEND').append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        _require_type(self.stack[-1], list, 'APPENDS').extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        _require_type(self.stack[-1], dict, 'SETITEM')[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = _require_type(self.stack[-1], dict, 'SETITEMS')
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        _require_type(self.stack[-1], set, 'ADDITEMS').update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems


_CALL_CHECKS = _call_checks()
# Classes a stream may instantiate without calling them (NEWOBJ, copyreg._reconstructor): plain containers.
_CREATABLE = {'dnnlib.util.EasyDict', 'dnnlib.EasyDict', 'dnnlib.tflib.network.Network', 'collections.OrderedDict',
              'builtins.set', 'builtins.frozenset', 'torch.Size',
              *(f'torch.nn.modules.container.{name}' for name in _TORCH_CONTAINERS)}


def _require_type(target: Any, kind: type, opcode: str) -> Any:
    if not isinstance(target, kind) or isinstance(target, type):
        raise pickle.UnpicklingError(f'{opcode} on a {type(target).__name__}, not a {kind.__name__}')
    return target


def _qualified_name(value: Any) -> str:
    return str(getattr(value, '__qualname__', type(value).__name__))


def _apply_build(inst: Any, state: Any) -> None:
    """BUILD: set the state of `inst` without looking anything up on it (an EasyDict answers any attribute)."""
    import numpy as np
    import torch

    if isinstance(inst, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
        raise GanPruneError(f'refusing to load: the pickle tries to set attributes on '
                            f'{untrusted_text(_qualified_name(inst))} itself, which '
                            f'would change it for the whole process; it is forged')
    if type(inst) is np.ndarray:
        np.ndarray.__setstate__(inst, _checked_array_state(state))
        return
    if type(inst) is np.dtype or isinstance(inst, np.dtype):
        _build_dtype(inst, state)
        return
    if not _may_build(inst):
        raise GanPruneError(f'refusing to load: the pickle sets the state of a {untrusted_text(type(inst).__name__)}, '
                            f'which a network pickle never does; it is forged or corrupt')
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise GanPruneError(f'refusing to load: the pickle gives a {untrusted_text(type(inst).__name__)} a state '
                            f'that is not a dict of attribute names; it is forged or corrupt')
    if isinstance(inst, torch.nn.Module):
        torch.nn.Module.__setstate__(inst, dict(state))
    else:
        inst.__dict__.update(state)


def _may_build(inst: Any) -> bool:
    import dnnlib
    import torch
    containers = tuple(getattr(torch.nn, name) for name in _TORCH_CONTAINERS)
    return type(inst) in (dnnlib.EasyDict, TFNetworkStub, collections.OrderedDict) or type(inst) in containers


def _checked_array_state(state: Any) -> tuple:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _refuse('numpy ndarray state', 'with a malformed state')
    shape, dtype, is_fortran, data = state[-4:]
    _check_dtype(dtype, 'numpy ndarray state')
    count = _count(shape, 'numpy ndarray state')
    if type(is_fortran) is not bool or not isinstance(data, bytes) or len(data) != count * dtype.itemsize:
        raise GanPruneError(f'refusing to load: a numpy array in the pickle of shape {untrusted_repr(shape)} does not '
                            f'match its {len(data) if isinstance(data, bytes) else 0:,} bytes of data; it is forged '
                            f'or corrupt')
    return state


def _build_dtype(dtype: Any, state: Any) -> None:
    # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, metadata]): only the byte order
    # and a text/bytes length may differ from the plain dtype; records, subarrays and flags never come from a file.
    import numpy as np
    _check_dtype(dtype, 'numpy dtype state')
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise _refuse('numpy dtype state', 'with a malformed state')
    byte_order, subarray, names, fields, itemsize, alignment, flags = state[1:8]
    metadata = state[8] if len(state) == 9 else None
    if byte_order not in ('<', '>', '|', '=') or (subarray, names, fields, metadata) != (None, None, None, None) \
            or flags != dtype.flags or alignment not in (-1, dtype.alignment):
        raise GanPruneError(f'refusing to load: the pickle forges numpy dtype {untrusted_text(str(dtype))} (records, '
                            f'subarrays or flags); a forged dtype can turn file bytes into pointers')
    flexible = dtype.kind in 'SU'
    if type(itemsize) is not int or (not flexible and itemsize not in (-1, dtype.itemsize)) or \
            (flexible and (itemsize < 0 or itemsize % (4 if dtype.kind == 'U' else 1))):
        raise _refuse('numpy dtype state', f'with item size {untrusted_repr(itemsize)} for {dtype}')
    np.dtype.__setstate__(dtype, state)  # type: ignore[attr-defined]  # numpy's stubs omit dtype.__setstate__
    _check_dtype(dtype, 'numpy dtype state')


def _python3_name(module: str, name: str, protocol: int) -> tuple[str, str]:
    """Protocols 0-2 may spell globals the Python 2 way (__builtin__, copy_reg): map them as pickle does."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


def _size_of(f: BinaryIO) -> int:
    position = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(position)
    return size - position


def _as_binary_file(reader: pickle_scan.BoundedReader) -> BinaryIO:
    # A raw binary file (read, readline, seek, tell); typing.BinaryIO is nominal, so the checker does not see it as one.
    return cast(BinaryIO, reader)


IN_MEMORY_LIMIT = 1 << 30  # network pickles up to this size are read into memory before they are scanned


def safe_load(f: BinaryIO, limits: pickle_scan.ScanLimits | None = None) -> Any:
    """Unpickle a network pickle from `f` without executing any code it contains.

    The opcode stream is scanned first (pickle_scan: nesting, memo expansion, declared lengths), then loaded
    with SafeUnpickler through a reader that never reads past the end of the file, and the result is walked
    once more for nesting and expansion. Returns what the file holds (normally a dict; a 3-tuple of
    TFNetworkStub for a TensorFlow pickle). Refusals raise GanPruneError; a broken stream raises pickle's
    own errors (UnpicklingError, EOFError, ...).
    """
    limits = limits or pickle_scan.DEFAULT_LIMITS
    bounded = pickle_scan.BoundedReader(f)
    size = bounded.size
    reader = _as_binary_file(bounded)
    if size <= IN_MEMORY_LIMIT:  # read once; both passes are then faster
        reader = io.BytesIO(reader.read())
    pickle_scan.scan_pickle(reader, limits)
    value = SafeUnpickler(reader, file_size=size).load()
    pickle_scan.check_loaded_value(value, limits)
    return value


def is_tf_pickle(obj: Any) -> bool:
    """True for what safe_load returns for a TensorFlow pickle: a tuple (G, D, Gs) of Network stubs."""
    return isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(x, TFNetworkStub) for x in obj)


# ------------------------------------------------------------------------------------------------------------
# Stream inspection

_STRING_OPS = {'SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8', 'UNICODE', 'SHORT_BINSTRING', 'BINSTRING', 'STRING'}
_MEMO_GET_OPS = {'GET', 'BINGET', 'LONG_BINGET'}
_MEMO_PUT_OPS = {'PUT', 'BINPUT', 'LONG_BINPUT'}


def referenced_globals(stream: bytes | BinaryIO) -> list[tuple[str, str]]:
    """Every (module, name) global a pickle stream references, in order of first use, without loading it.

    Follows the memo so that STACK_GLOBAL operands fetched with GET are resolved too.
    """
    if isinstance(stream, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(stream)
    else:  # a forged length must not make the file reader allocate it
        f = stream if isinstance(stream, io.BytesIO) else _as_binary_file(pickle_scan.BoundedReader(stream))
    found: dict[tuple[str, str], None] = {}
    memo: dict[Any, Any] = {}  # memo index (an int for the memo opcodes) -> value
    recent: list[Any] = []  # values of the latest pushes: a str for string pushes, else None
    for opcode, arg, _ in pickletools.genops(f):
        name = opcode.name
        if name in _STRING_OPS:
            value = arg.decode('latin-1') if isinstance(arg, bytes) else arg
            recent.append(value)
        elif name in _MEMO_GET_OPS:
            recent.append(memo.get(arg))
        elif name in _MEMO_PUT_OPS:
            memo[arg] = recent[-1] if recent else None
            continue
        elif name == 'MEMOIZE':
            memo[len(memo)] = recent[-1] if recent else None
            continue
        elif name in ('FRAME', 'PROTO'):
            continue  # framing can fall between the two operands of STACK_GLOBAL
        elif name == 'GLOBAL':
            module, _, attr = str(arg).partition(' ')
            found[(module, attr)] = None
            recent.append(None)
        elif name == 'STACK_GLOBAL':
            pushed = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            found[(str(pushed[0]), str(pushed[1]))] = None
            recent.append(None)
        else:
            recent.append(None)
        del recent[:-2]
    return list(found)


def disallowed_globals(globals_: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The globals from `globals_` that the safe unpickler would refuse."""
    return [g for g in globals_ if g not in ALLOWED_GLOBALS]


def _one_line(e: BaseException | str) -> str:
    # Exception texts may quote bytes or names from the file: escaped, on one line, bounded.
    return untrusted_text(' '.join(str(e).split()), limit=300)
