"""What a file a user hands us may make the toolkit run: nothing, unless they typed --trust-pickle.

Model files other than network pickles come in two forms:

- TorchScript archives (`torch.jit.save`: mask models, `torchscript:FILE` embedders, OpenAI CLIP releases, the
  Inception detector) are programs; gan_prune.features.torchscript loads them, under the same flag.
- "constructor" files, a torch file holding {'name': 'package.module.Class', 'kwargs': {...}, 'state_dict': ...}
  (mask models): `resolve_constructor(name, trust, what)` checks the name against MODEL_CLASSES *before*
  importing anything, so an untrusted file can only build one of our own model classes.

State dicts (`torch.load(..., weights_only=True)`) are data and need no check.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from gan_prune.errors import GanPruneError

TRUST_FLAG = '--trust-pickle'

# Model classes a constructor file may name without --trust-pickle: 'name as stored' -> 'module:attribute'.
# Only our own classes; a name that is not a key here is refused before any import.
MODEL_CLASSES: dict[str, str] = {
    'gan_prune.features.segmenter.ContentSegmenter': 'gan_prune.features.segmenter:ContentSegmenter',
    'gan_prune.models.segmenter.ContentSegmenter': 'gan_prune.features.segmenter:ContentSegmenter',  # its 2nd home
    'gan_prune.demo.mask_model.ContentSegmenter': 'gan_prune.features.segmenter:ContentSegmenter',  # its first home
}

# Plain values a constructor's kwargs may hold (what a model's __init__ needs: sizes, flags, names).
_KWARG_TYPES = (bool, int, float, str, type(None))


def shown(name: Any, limit: int = 80) -> str:
    """A name read from a file, safe to print: escaped (no control characters) and shortened."""
    text = ascii(name if isinstance(name, str) else str(name))
    return text if len(text) <= limit else text[:limit - 3] + '...'


def resolve_constructor(name: Any, trust: bool, what: str) -> type:
    """The class a constructor file names: one of MODEL_CLASSES, or (trust=True only) any importable class.

    The name is checked against the allow-list before anything is imported.
    """
    if not isinstance(name, str) or not name:
        raise GanPruneError(f"{what}: the model class name must be a string 'package.module.Class', "
                            f'got {shown(name)}')
    if name in MODEL_CLASSES:
        module_name, _, attr = MODEL_CLASSES[name].partition(':')
    elif trust:
        module_name, _, attr = name.replace(':', '.').rpartition('.')
    else:
        raise GanPruneError(f'{what}: the file names the class {shown(name)}, which is not one of the toolkit\'s '
                            f'own models ({", ".join(sorted(MODEL_CLASSES))}); building it would run code from '
                            f'outside the toolkit: pass {TRUST_FLAG} if you trust this file')
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise GanPruneError(f'{what}: cannot import model class {shown(name)} ({type(e).__name__}); it must be '
                            f'importable (package.module.Class)') from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise GanPruneError(f'{what}: {shown(name)} is not a torch.nn.Module class')
    return cls


def construct_model(name: Any, kwargs: Any, trust: bool, what: str) -> torch.nn.Module:
    """Build the model a constructor file names (see resolve_constructor) from plain keyword arguments."""
    cls = resolve_constructor(name, trust, what)
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise GanPruneError(f"{what}: 'kwargs' must map argument names to values")
    if not trust:
        bad = [k for k, v in kwargs.items() if not isinstance(v, _KWARG_TYPES)]
        if bad:
            raise GanPruneError(f'{what}: argument {shown(bad[0])} of {shown(name)} is a '
                                f'{type(kwargs[bad[0]]).__name__}; only numbers, strings and flags are accepted')
    try:
        return cls(**kwargs)
    except Exception as e:  # wrong argument names or values for this class
        first = (str(e).strip().splitlines() or [''])[0]
        raise GanPruneError(f'{what}: cannot build {shown(name)} from its kwargs ({type(e).__name__}: '
                            f'{shown(first, 160)})') from None
