"""Pickling of network classes together with the source code of the module that defines them.

A class decorated with `persistent_class` pickles its instances as a call to `_reconstruct_persistent_obj(meta)`
where `meta` carries the full text of the defining module, the class name and the instance state. Loading
such a pickle executes that text in a fresh module (once per distinct text), so a snapshot can be used
without the code that wrote it. The stream format (meta keys, version 6, the reconstruct function's
module path) is fixed by the existing StyleGAN2-ADA snapshots and must not change.
"""
from __future__ import annotations

import copy
import inspect
import io
import pickle
import sys
import types
import uuid
from typing import Any, Callable

import dnnlib

CURRENT_VERSION = 6

_module_src_by_module: dict[types.ModuleType, str] = {}  # module -> its source text
_module_by_src: dict[str, types.ModuleType] = {}          # exact source text -> module
_decorators: set[type] = set()                            # every class made by persistent_class
_import_hooks: list[Callable[[dnnlib.EasyDict], dnnlib.EasyDict]] = []


def persistent_class(orig_class: type) -> type:
    """Class decorator: instances remember their constructor arguments and pickle with their module source.

    The returned subclass keeps the original name; `init_args` / `init_kwargs` give (copies of) the arguments
    the instance was constructed with.
    """
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class

    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    # The name `Decorator` and its definition inside this function are part of the observable format
    # (__qualname__ 'persistent_class.<locals>.Decorator').
    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
            assert orig_class.__name__ in orig_module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self) -> tuple:
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self) -> dnnlib.EasyDict:
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=CURRENT_VERSION, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None  # the state travels inside meta
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    _decorators.add(Decorator)
    return Decorator


def is_persistent(obj: Any) -> bool:
    """True for a class made by persistent_class, or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:  # unhashable instance
        pass
    return type(obj) in _decorators


def import_hook(hook: Callable[[dnnlib.EasyDict], dnnlib.EasyDict]) -> None:
    """Register `hook(meta) -> meta`, run on every persistent object being unpickled, in registration order.

    A hook may patch `meta.module_src`, `meta.class_name` or `meta.state` (e.g. to load old snapshots
    after a rename) and must return the (possibly new) meta.
    """
    assert callable(hook)
    _import_hooks.append(hook)


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Unpickling entry point named in every snapshot: rebuild one object from its meta dict."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None

    assert meta.version == CURRENT_VERSION
    module = _src_to_module(meta.module_src)

    assert meta.type == 'class'
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)  # __init__ is not called: the state holds everything

    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module: types.ModuleType) -> str:
    """The source text of `module` (cached, so both directions of the lookup agree)."""
    src = _module_src_by_module.get(module)
    if src is None:
        src = inspect.getsource(module)
        _module_src_by_module[module] = src
        _module_by_src[src] = module
    return src


def _src_to_module(module_src: str) -> types.ModuleType:
    """The module for an exact source text: an already-known one, else a fresh module executing the text."""
    module = _module_by_src.get(module_src)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        # Register before executing: the text decorates its own classes, which looks its source up again.
        _module_src_by_module[module] = module_src
        _module_by_src[module_src] = module
        exec(module_src, module.__dict__)  # pylint: disable=exec-used
    return module


def _check_pickleable(obj: Any) -> None:
    """Fail early (at construction) if an instance could not be pickled.

    Walks containers and accepts plain data, tensors, arrays and persistent objects without serialising
    them, so the check costs next to nothing; anything else must survive pickle.dumps.
    """
    def walk(value: Any) -> None:
        if isinstance(value, (type(None), bool, int, float, complex, str, bytes, bytearray)):
            return
        if isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item)
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
            return
        if is_persistent(value) or value is _reconstruct_persistent_obj:
            return
        if _is_tensor_like(value):
            return
        pickle.dump(value, io.BytesIO())  # raises if it cannot be pickled

    walk(obj)


def _is_tensor_like(value: Any) -> bool:
    # Checked by module name so that importing this file does not require numpy or torch.
    cls_module = type(value).__module__.split('.')[0]
    if cls_module == 'numpy':
        return True  # ndarray, scalar or dtype
    if cls_module == 'torch':
        import torch
        return isinstance(value, (torch.Tensor, torch.dtype, torch.device, torch.Size))
    return False
