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

import importlib
import io
import pickle
import pickletools
import re
from typing import Any, BinaryIO, Callable, Iterable

from gan_prune.errors import GanPruneError

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
KNOWN_CLASS_MODULES: list[str] = ['gan_prune.nets.slim']


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
    # The stream holds each tensor storage as a nested torch.save blob; read it without executing anything.
    import torch
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
    except pickle.UnpicklingError as e:
        named = re.search(r'GLOBAL ([\w.]+)', str(e))
        if named or 'global' in str(e).lower():
            what = named.group(1) if named else 'a global'
            raise GanPruneError(f'refusing to load: a tensor storage in the pickle references {what} instead of '
                                f'holding tensor data; {refusal_hint()}') from None
        raise pickle.UnpicklingError('damaged tensor storage') from None
    except (EOFError, RuntimeError, AttributeError, ValueError, KeyError, TypeError, IndexError) as e:
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
    raise GanPruneError(f'refusing to load a network object of unknown class {class_name!r} (the toolkit can '
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
        raise GanPruneError(f'unsupported network object format version {meta.version!r} '
                            f'(expected {PERSISTENCE_VERSION}); was the file written by a newer toolkit?')
    if meta.type != 'class':
        raise GanPruneError(f'unsupported network object type {meta.type!r} (expected class)')
    if not isinstance(meta.class_name, str) or not isinstance(meta.state, dict):
        raise GanPruneError('malformed network object in the pickle (class_name or state has the wrong type)')

    cls = resolve_known_class(meta.class_name)
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
                raise GanPruneError(f'malformed {class_name} in the pickle: {key[1:-1]} {name!r} is a '
                                    f'{type(value).__name__}, not a tensor')
    for name, value in state['_modules'].items():
        if value is not None and not isinstance(value, torch.nn.Module):
            raise GanPruneError(f'malformed {class_name} in the pickle: submodule {name!r} is a '
                                f'{type(value).__name__}, not a torch Module')


# ------------------------------------------------------------------------------------------------------------
# The unpickler


class SafeUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only ALLOWED_GLOBALS (with network objects rebuilt safely)."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise GanPruneError(f'refusing to load: the pickle references {module}.{name}, which a network '
                                f'pickle does not need; {refusal_hint()}')
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError('persistent IDs are not used by network pickles')


def safe_load(f: BinaryIO) -> Any:
    """Unpickle a network pickle from `f` without executing any code it contains.

    Returns what the file holds (normally a dict; a 3-tuple of TFNetworkStub for a TensorFlow pickle).
    Refused globals and unknown classes raise GanPruneError; a broken stream raises pickle's own errors.
    """
    return SafeUnpickler(f).load()


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
    f = io.BytesIO(stream) if isinstance(stream, (bytes, bytearray)) else stream
    found: dict[tuple[str, str], None] = {}
    memo: dict[int, Any] = {}
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
            module, _, attr = arg.partition(' ')
            found[(module, attr)] = None
            recent.append(None)
        elif name == 'STACK_GLOBAL':
            module, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            found[(str(module), str(attr))] = None
            recent.append(None)
        else:
            recent.append(None)
        del recent[:-2]
    return list(found)


def disallowed_globals(globals_: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The globals from `globals_` that the safe unpickler would refuse."""
    return [g for g in globals_ if g not in ALLOWED_GLOBALS]


def _one_line(e: BaseException | str) -> str:
    text = ' '.join(str(e).split())
    return text if len(text) <= 300 else text[:297] + '...'
