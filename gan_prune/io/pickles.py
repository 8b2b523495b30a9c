"""Reading and writing StyleGAN2-ADA network pickles.

load_network_pkl reads native PyTorch snapshots and TensorFlow-era pickles from a path, a file:// or
http(s) URL, or `builtin:NAME`. By default it never runs code from the file (gan_prune.io.unpickler);
trust=True uses the original trusting loader (legacy.load_network_pkl), which executes the network
source embedded in the pickle.

save_network_pkl writes a snapshot in the exact on-disk format of the original training loop, so the
file loads with the original toolkit (which has no gan_prune) as well as with ours.
"""
from __future__ import annotations

import ast
import collections
import copy
import os
import pickle
import sys
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from typing import Any, BinaryIO

from gan_prune.errors import GanPruneError, untrusted_repr, untrusted_text
from gan_prune.fileio import atomic_write_bytes
from gan_prune.io import unpickler

REQUIRED_MODULE_KEYS = ('G', 'D', 'G_ema')
SNAPSHOT_KEY_ORDER = ('training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe')

# Top-level packages that code embedded in a saved pickle may import (plus the standard library): what the
# original stylegan2-ada-pytorch environment provides. scipy is needed by the ADA pipeline's module; `training`
# by classes that build standard layers in their constructor (never run when unpickling).
EXPORT_IMPORT_ALLOWLIST = ('torch', 'numpy', 'scipy', 'torch_utils', 'dnnlib', 'training')

PICKLE_PROTOCOL = 4  # readable by Python 3.7, the original toolkit's documented setup

# ------------------------------------------------------------------------------------------------------------
# Loading


def load_network_pkl(src: str | os.PathLike, trust: bool = False, cache_dir: str | os.PathLike | None = None,
                     force_fp16: bool = False) -> dict:
    """Load a network pickle: G, D, G_ema (torch Modules), training_set_kwargs (dict or None), augment_pipe
    (Module or None) and any further keys it holds.

    src: a path, a file:// or http(s):// URL (downloaded into the cache; '#sha256=<hex>' is verified), or
    'builtin:NAME'. trust=False (default) rebuilds the networks from the toolkit's own classes and refuses
    anything else; trust=True executes the code embedded in the file. force_fp16 rebuilds the networks with
    num_fp16_res=4 and conv_clamp=256. Every user-facing problem raises GanPruneError.
    """
    if isinstance(src, os.PathLike):
        src = os.fspath(src)
    if not isinstance(src, str) or not src:
        raise GanPruneError(f'network source must be a path, a URL or builtin:NAME, got {src!r}')

    if src.startswith('builtin:'):
        data = load_builtin(src[len('builtin:'):])
        return _finish(data, src, force_fp16)

    path = _local_path(src, cache_dir)
    with open(path, 'rb') as f:
        if trust:
            return _load_trusting(f, src, force_fp16)
        data = _load_safe(f, src)
    return _finish(data, src, force_fp16)


def load_builtin(name: str) -> dict:
    """The snapshot dict (G, D, G_ema, training_set_kwargs, augment_pipe) of built-in network `name`: a file
    shipped in gan_prune/assets, read like any other pickle, or a seeded random network."""
    try:
        from gan_prune.io import builtin
    except ImportError as e:
        raise GanPruneError(f'built-in networks are not available in this installation ({_one_line(e)})') from None
    if name not in builtin.SHIPPED:
        return builtin.build_random(name)
    path = builtin.shipped_path(name)
    if not os.path.isfile(path):
        raise GanPruneError(f'the bundled network file {path} is missing; reinstall gan_prune')
    data = load_network_pkl(path)
    if data['G'] is data['G_ema']:  # stored once to keep the file small; callers may train G in place
        data['G'] = copy.deepcopy(data['G_ema'])
    return data


def _local_path(src: str, cache_dir: str | os.PathLike | None) -> str:
    """The local file behind `src`, downloading http(s) URLs; GanPruneError if there is none."""
    if src.startswith(('http://', 'https://')):
        from gan_prune.io import download
        return download.download(src, cache_dir=cache_dir)
    if '://' in src:
        if not src.startswith('file://'):
            raise GanPruneError(f'unsupported URL scheme in {src}; use a local path, file://, http:// or https://')
        parsed = urllib.parse.urlparse(src)
        path = urllib.request.url2pathname(parsed.path)
    else:
        path = os.path.expanduser(src)
    if not os.path.exists(path):
        raise GanPruneError(f'network pickle not found: {path}; check the path')
    if os.path.isdir(path):
        raise GanPruneError(f'{path} is a directory, not a network pickle; pass the .pkl file inside it')
    return path


def _describe_unreadable(f: BinaryIO, src: str, error: BaseException) -> GanPruneError:
    """A one-line error for a file the unpickler could not read: empty, not a pickle, or truncated/corrupt."""
    f.seek(0)
    head = f.read(4)
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return GanPruneError(f'{src} is empty (0 bytes), not a network pickle; was the download or copy interrupted?')
    if head.startswith(b'PK\x03\x04'):
        return GanPruneError(f'{src} is a zip file (e.g. a torch.save checkpoint or a dataset), not a network '
                             f'pickle; pass a StyleGAN2-ADA .pkl snapshot')
    if not head.startswith(b'\x80') and isinstance(error, pickle.UnpicklingError):
        return GanPruneError(f'{src} is not a pickle file ({_one_line(error)}); pass a StyleGAN2-ADA .pkl snapshot')
    if isinstance(error, EOFError) or 'truncated' in str(error):
        return GanPruneError(f'{src} is truncated ({size} bytes, the pickle ends early); download or copy it again')
    return GanPruneError(f'{src} is corrupt or not a network pickle ({type(error).__name__}: {_one_line(error)}); '
                         f'download or copy it again')


def _load_safe(f: BinaryIO, src: str) -> Any:
    try:
        return unpickler.safe_load(f)
    except GanPruneError as e:
        raise GanPruneError(f'{src}: {e}', exit_code=e.exit_code) from None
    except (Exception, MemoryError) as e:  # pylint: disable=broad-except
        # Only allowed functions run, on whatever the file holds: any failure of theirs means a damaged file.
        raise _describe_unreadable(f, src, e) from None


def _load_trusting(f: BinaryIO, src: str, force_fp16: bool) -> dict:
    import legacy
    _install_trusting_check()
    _trusting_state['active'] = True
    try:
        data = legacy.load_network_pkl(f)  # force_fp16 below, with a clear error if the rebuild fails
    except GanPruneError as e:
        raise GanPruneError(f'{src}: {e}', exit_code=e.exit_code) from None
    except (pickle.UnpicklingError, EOFError) as e:
        raise _describe_unreadable(f, src, e) from None
    except Exception as e:  # pylint: disable=broad-except
        # The trusting loader runs foreign code, so anything can go wrong; keep it to one line.
        raise GanPruneError(f'{src}: the trusting loader failed ({type(e).__name__}: {_one_line(e)}); if this is a '
                            f'StyleGAN2-ADA network pickle, load it without --trust-pickle') from None
    finally:
        _trusting_state['active'] = False
    return _finish(data, src, force_fp16)


# The trusting loader executes each object's embedded module source and then looks the class up in it. A
# placeholder or broken source would end in a bare KeyError deep inside unpickling; this import hook (active only
# during our trusting loads) checks the source first and says what is wrong.
_trusting_state: dict[str, Any] = {'active': False, 'installed_in': None, 'checked': {}}


def _install_trusting_check() -> None:
    from torch_utils import persistence
    hooks = getattr(persistence, '_import_hooks', None)
    if hooks is not None:
        installed = _trusting_check_hook in hooks
    else:
        installed = _trusting_state['installed_in'] is persistence
    if not installed:
        persistence.import_hook(_trusting_check_hook)
        _trusting_state['installed_in'] = persistence


def _trusting_check_hook(meta: Any) -> Any:
    if not _trusting_state['active']:
        return meta
    src, class_name = meta.get('module_src'), meta.get('class_name')
    key = (id(src), class_name)
    if key in _trusting_state['checked']:
        return meta
    if not isinstance(src, str):
        raise GanPruneError(f'network object {class_name!r} carries no module source; load the file without '
                            f'--trust-pickle')
    try:
        defined = _top_level_names(ast.parse(src))
    except SyntaxError as e:
        raise GanPruneError(f'the network code embedded in the pickle for {class_name!r} is not valid Python '
                            f'({_one_line(e)}); load the file without --trust-pickle') from None
    if class_name not in defined:
        raise GanPruneError(f'the network code embedded in the pickle does not define class {class_name!r} '
                            f'(the file carries no usable source for it); load it without --trust-pickle to '
                            f'rebuild the networks from the toolkit\'s own classes')
    _trusting_state['checked'][key] = src  # keep src alive so its id stays unique
    return meta


def _finish(data: Any, src: str, force_fp16: bool) -> dict:
    """Convert TF pickles, fill in optional keys, validate, apply force_fp16."""
    import torch

    if unpickler.is_tf_pickle(data):
        data = _convert_tf(data, src)
    if not isinstance(data, dict):
        raise GanPruneError(f'{src} is not a StyleGAN2-ADA network pickle: it holds a {_type_name(data)}, not a '
                            f'dict with G, D and G_ema')
    data = dict(data)
    missing = [k for k in REQUIRED_MODULE_KEYS if k not in data]
    if missing:
        raise GanPruneError(f'{src} is not a StyleGAN2-ADA network pickle: it has no {", ".join(missing)} '
                            f'(keys: {untrusted_text(", ".join(map(str, list(data)[:8]))) or "none"})')
    data.setdefault('training_set_kwargs', None)
    data.setdefault('augment_pipe', None)
    for key in REQUIRED_MODULE_KEYS:
        if not isinstance(data[key], torch.nn.Module):
            raise GanPruneError(f'{src}: {key} is a {_type_name(data[key])}, not a torch Module')
    if not isinstance(data['training_set_kwargs'], (dict, type(None))):
        raise GanPruneError(f'{src}: training_set_kwargs is a {_type_name(data["training_set_kwargs"])}, '
                            f'not a dict or None')
    if not isinstance(data['augment_pipe'], (torch.nn.Module, type(None))):
        raise GanPruneError(f'{src}: augment_pipe is a {_type_name(data["augment_pipe"])}, not a torch Module or None')
    if force_fp16:
        for key in REQUIRED_MODULE_KEYS:
            data[key] = _rebuild_fp16(data[key], key, src)
    return data


def _convert_tf(tf_nets: tuple, src: str) -> dict:
    import legacy
    tf_G, tf_D, tf_Gs = tf_nets
    converters = ((legacy.convert_tf_generator, tf_G, 'G'), (legacy.convert_tf_discriminator, tf_D, 'D'),
                  (legacy.convert_tf_generator, tf_Gs, 'G_ema'))
    try:
        for convert, tf_net, key in converters:
            _check_tf_sizes(convert, tf_net, key, src)
        return {key: convert(tf_net) for convert, tf_net, key in converters}
    except ValueError as e:
        detail = ' '.join(map(str, e.args)) if e.args else str(e)
        raise GanPruneError(f'{src}: cannot convert this TensorFlow pickle ({untrusted_text(detail)}); only StyleGAN2 '
                            f'config-F and StyleGAN2-ADA TensorFlow networks are supported') from None
    except (KeyError, AttributeError, TypeError, IndexError, RuntimeError, AssertionError, ArithmeticError) as e:
        raise GanPruneError(f'{src}: malformed TensorFlow pickle ({type(e).__name__}: '
                            f'{untrusted_text(_one_line(e))})') from None


# A converted network holds the TF variables plus a few buffers the toolkit computes (resampling filters).
_TF_SIZE_SLACK = 1.05
_TF_SIZE_EXTRA = 100_000


def _check_tf_counts(tf_net: Any, key: str, src: str, held: int, num_variables: int) -> None:
    # Before the dry run, which builds one fake layer per layer the settings ask for: no number may exceed what
    # the file holds, no layer count the number of variables, and the resolution must be a power of two.
    kwargs = getattr(tf_net, 'static_kwargs', None)
    if not isinstance(kwargs, dict):
        raise GanPruneError(f'{src}: malformed TensorFlow pickle ({key} has no settings dict)')
    for name, value in kwargs.items():
        if type(value) is int and not -1 <= value <= held:
            raise GanPruneError(f'{src}: the TensorFlow {key} setting {untrusted_text(str(name))}={value:,} is larger '
                                f'than the {held:,} values the file holds; it is forged or corrupt')
    for name in ('mapping_layers', 'num_layers'):
        if type(kwargs.get(name)) is int and kwargs[name] > num_variables:
            raise GanPruneError(f'{src}: the TensorFlow {key} asks for {kwargs[name]:,} {name.replace("_", " ")} '
                                f'but the file has only {num_variables:,} variables; it is forged or corrupt')
    resolution = kwargs.get('resolution', 1024)
    if type(resolution) is not int or resolution < 4 or resolution & (resolution - 1):
        raise GanPruneError(f'{src}: the TensorFlow {key} has resolution {untrusted_repr(resolution)}, not a power '
                            f'of two; it is forged or corrupt')


def _check_tf_sizes(convert: Any, tf_net: Any, key: str, src: str) -> None:
    """Convert `tf_net` once without allocating (fake tensors) and refuse it if the network its kwargs
    describe is larger than the variables the file holds: forged kwargs (a resolution of 2**20) must not
    allocate before the conversion finds that the variables are missing."""
    import numpy as np

    import legacy
    variables = legacy._collect_tf_params(tf_net)  # pylint: disable=protected-access
    held = sum(value.size if isinstance(value, np.ndarray) else 1 for value in variables.values())
    _check_tf_counts(tf_net, key, src, held, len(variables))
    from torch._subclasses.fake_tensor import FakeTensorMode  # tensors with shapes and no memory
    with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        net = convert(tf_net)
    needed = sum(t.numel() for t in [*net.parameters(), *net.buffers()])
    if needed > held * _TF_SIZE_SLACK + _TF_SIZE_EXTRA:
        raise GanPruneError(f'{src}: the TensorFlow {key} describes a network of {needed:,} values but the file '
                            f'holds only {held:,}; its settings are forged or corrupt')


def _rebuild_fp16(old: Any, key: str, src: str) -> Any:
    """`old` rebuilt from its init_kwargs with num_fp16_res=4 and conv_clamp=256, weights copied over."""
    import dnnlib
    from torch_utils import misc

    if not hasattr(old, 'init_kwargs'):
        raise GanPruneError(f'{src}: force_fp16 needs {key} to be a persistent network with init_kwargs')
    kwargs = copy.deepcopy(old.init_kwargs)
    if key == 'D':
        target = kwargs
    else:
        target = dnnlib.EasyDict(kwargs.get('synthesis_kwargs', {}))
        kwargs['synthesis_kwargs'] = target
    target['num_fp16_res'] = 4
    target['conv_clamp'] = 256
    if kwargs == old.init_kwargs:
        return old
    try:
        new = type(old)(*old.init_args, **kwargs).eval().requires_grad_(False)
        misc.copy_params_and_buffers(old, new, require_all=True)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        raise GanPruneError(f'{src}: force_fp16 cannot rebuild {key} from its init_kwargs ({type(e).__name__}: '
                            f'{_one_line(e)}); a pruned network whose init_kwargs do not describe its shapes cannot '
                            f'be rebuilt, load it without force_fp16') from None
    return new


# ------------------------------------------------------------------------------------------------------------
# Saving


def save_network_pkl(data: Mapping, path: str | os.PathLike) -> None:
    """Write a snapshot dict in the original training loop's format, atomically.

    Modules are stored as copy.deepcopy(m).eval().requires_grad_(False).cpu(); numpy scalars in their stored
    attributes become Python numbers (loadable under numpy 1.x). Every embedded module source must import only
    EXPORT_IMPORT_ALLOWLIST packages and the standard library, and the written stream may reference only globals
    the safe loader accepts; otherwise nothing is written and GanPruneError says why. Keys other
    than the modules, training_set_kwargs and augment_pipe must hold plain data.
    """
    import torch

    path = os.fspath(path)
    if not isinstance(data, Mapping):
        raise GanPruneError(f'save_network_pkl needs a dict of networks, got a {_type_name(data)}')
    missing = [k for k in REQUIRED_MODULE_KEYS if not isinstance(data.get(k), torch.nn.Module)]
    if missing:
        raise GanPruneError(f'cannot save {path}: a snapshot needs G, D and G_ema modules; missing or not a '
                            f'Module: {", ".join(missing)}')

    snapshot: dict[str, Any] = {}
    exported: dict[int, Any] = {}  # the same module under two keys (G is G_ema) is stored once
    ordered_keys = [k for k in SNAPSHOT_KEY_ORDER] + [k for k in data if k not in SNAPSHOT_KEY_ORDER]
    for key in ordered_keys:
        value = data.get(key)
        if not isinstance(key, str):
            raise GanPruneError(f'cannot save {path}: snapshot keys must be strings, got {key!r}')
        if key == 'augment_pipe' and value is not None and not isinstance(value, torch.nn.Module):
            raise GanPruneError(f'cannot save {path}: augment_pipe must be a Module or None')
        if key == 'training_set_kwargs' and value is not None and not isinstance(value, dict):
            raise GanPruneError(f'cannot save {path}: training_set_kwargs must be a dict or None')
        if isinstance(value, torch.nn.Module):
            if id(value) not in exported:
                exported[id(value)] = _export_module(value, key, path)
            snapshot[key] = exported[id(value)]
        else:
            snapshot[key] = _plain_data(value, f'data[{key!r}]', path)

    _write_atomically(snapshot, path)


def _export_module(module: Any, key: str, path: str) -> Any:
    from torch_utils import persistence

    exported = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    checked: set[int] = set()
    for name, sub in exported.named_modules():
        where = f'{key}.{name}' if name else key
        if persistence.is_persistent(sub):
            meta = sub.__reduce__()[1][0]
            if id(meta['module_src']) not in checked:
                check_module_src(meta['module_src'], meta['class_name'], where, path)
                checked.add(id(meta['module_src']))
        for attr, value in list(vars(sub).items()):
            if attr in ('_parameters', '_buffers', '_modules') or attr.endswith('_hooks'):
                continue
            converted = _numpy_to_python(value)
            if converted is not value:
                sub.__dict__[attr] = converted
    return exported


def check_module_src(module_src: str, class_name: str, where: str = '', path: str = '') -> None:
    """Refuse embedded module source that the original environment could not execute.

    It must parse, import only EXPORT_IMPORT_ALLOWLIST packages and the standard library (no relative
    imports), and define `class_name` at top level.
    """
    what = f'cannot save {path}: ' if path else ''
    label = f'{class_name} ({where})' if where else class_name
    try:
        tree = ast.parse(module_src)
    except SyntaxError as e:
        raise GanPruneError(f'{what}the code embedded for {label} is not valid Python ({_one_line(e)})') from None
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise GanPruneError(f'{what}the code embedded for {label} uses a relative import, which cannot work '
                                    f'when another tool loads the pickle; import by absolute name')
            names = [node.module or '']
        elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', None))
              in ('__import__', 'import_module') and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            top = name.split('.')[0]
            if top not in EXPORT_IMPORT_ALLOWLIST and top not in _stdlib_modules():
                raise GanPruneError(f'{what}the code embedded for {label} imports {name}, which other StyleGAN2-ADA '
                                    f'tools do not have; network classes may import only '
                                    f'{", ".join(EXPORT_IMPORT_ALLOWLIST)} and the standard library')
    if class_name not in _top_level_names(tree):
        raise GanPruneError(f'{what}the code embedded for {label} does not define class {class_name!r} at top level')


def _write_atomically(snapshot: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise GanPruneError(f'cannot save {path}: directory {directory} does not exist')
    data = pickle.dumps(snapshot, protocol=PICKLE_PROTOCOL)
    refused = unpickler.disallowed_globals(unpickler.referenced_globals(data))
    if refused:
        names = ', '.join(f'{m}.{n}' for m, n in refused[:5])
        raise GanPruneError(f'cannot save {path}: the snapshot would reference {names}, which other tools '
                            f'cannot load safely; use persistent network classes and plain data only')
    atomic_write_bytes(path, data)


def _plain_data(value: Any, where: str, path: str) -> Any:
    """`value` with numpy scalars turned into Python numbers; GanPruneError for anything but plain data."""
    import dnnlib

    value = _numpy_to_python(value)

    def check(v: Any, at: str) -> None:
        if isinstance(v, (type(None), bool, int, float, str, bytes)):
            return
        if isinstance(v, (list, tuple, set, frozenset)):
            for i, item in enumerate(v):
                check(item, f'{at}[{i}]')
            return
        if isinstance(v, dict) and type(v) in (dict, dnnlib.EasyDict, collections.OrderedDict):
            for k, item in v.items():
                check(k, f'{at} key')
                check(item, f'{at}[{k!r}]')
            return
        raise GanPruneError(f'cannot save {path}: {at} is a {_type_name(v)}; extra snapshot entries must be plain '
                            f'data (dict, list, str, int, float, bool, None)')

    check(value, where)
    return value


def _numpy_to_python(value: Any) -> Any:
    """Numpy scalars (also inside dicts, lists and tuples) as Python numbers; other values returned as is."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) and not hasattr(value, '_fields'):
        items = [_numpy_to_python(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        mapped = {k: _numpy_to_python(v) for k, v in value.items()}
        if all(mapped[k] is v for k, v in value.items()):
            return value
        converted = copy.copy(value)
        converted.update(mapped)
        return converted
    return value


# ------------------------------------------------------------------------------------------------------------
# Internals


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _stdlib_modules() -> frozenset[str]:
    names = getattr(sys, 'stdlib_module_names', None)
    if names is not None:
        return frozenset(names)
    # Python 3.9: the modules network code plausibly uses.
    return frozenset({'__future__', 'abc', 'collections', 'contextlib', 'copy', 'dataclasses', 'enum', 'functools',
                      'inspect', 'itertools', 'math', 'numbers', 'operator', 'os', 're', 'sys', 'types', 'typing',
                      'warnings'})


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == 'builtins' else f'{cls.__module__}.{cls.__qualname__}'


def _one_line(e: BaseException | str) -> str:
    # Exception texts may quote bytes or names from the file: escaped, on one line, bounded.
    return untrusted_text(' '.join(str(e).split()), limit=300)
