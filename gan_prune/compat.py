"""Which StyleGAN2-ADA implementation backs `dnnlib`, `torch_utils` and `training`.

By default the bundled clean-room layer (installed from third_party/stylegan2_ada) is used. A user with
NVIDIA's stylegan2-ada-pytorch checkout can point us at it (`--sg2ada-root` or $STYLEGAN2_ADA_ROOT) to use
its original ops, including the CUDA kernels. Both expose the same module paths, so the rest of the toolkit
does not care which one is active.
"""
from __future__ import annotations

import os
import sys

from gan_prune.errors import GanPruneError

ENV_VAR = 'STYLEGAN2_ADA_ROOT'
COMPAT_MODULES = ('dnnlib', 'torch_utils', 'training', 'legacy')
_REQUIRED_FILES = ('dnnlib/__init__.py', 'torch_utils/persistence.py', 'torch_utils/ops/bias_act.py',
                   'training/networks.py', 'legacy.py')

_plugin_root: str | None = None


def use_sg2ada_root(root: str) -> str:
    """Make the stylegan2-ada-pytorch checkout at `root` the active implementation; returns its absolute path.

    Must run before networks are built: modules already imported from the bundled layer are dropped so that
    the next import resolves to the checkout.
    """
    global _plugin_root
    root = os.path.abspath(os.path.expanduser(root))
    missing = [f for f in _REQUIRED_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise GanPruneError(f'--sg2ada-root {root} is not a stylegan2-ada-pytorch checkout (missing {missing[0]}); '
                            f'point it at the folder that holds legacy.py and torch_utils/')
    if _plugin_root == root:
        return root
    for name in list(sys.modules):
        if name.split('.')[0] in COMPAT_MODULES:
            del sys.modules[name]
    sys.path.insert(0, root)
    _plugin_root = root
    return root


def init_from_env() -> None:
    """Honour $STYLEGAN2_ADA_ROOT (called when gan_prune is imported)."""
    root = os.environ.get(ENV_VAR)
    if root:
        use_sg2ada_root(root)


def plugin_root() -> str | None:
    """The user's checkout in use, or None for the bundled layer."""
    return _plugin_root


def describe() -> dict:
    """Where the active compatibility modules come from (for `gan-prune env`)."""
    import torch_utils
    return {
        'implementation': 'stylegan2-ada-pytorch checkout (plugin mode)' if _plugin_root else 'bundled clean-room layer',
        'root': _plugin_root or os.path.dirname(os.path.dirname(os.path.abspath(torch_utils.__file__))),
    }
