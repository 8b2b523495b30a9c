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
# Why the root the user named (--sg2ada-root, $STYLEGAN2_ADA_ROOT) is not in use, when it was wrong: reported
# later (by the CLI, by `gan-prune env`, by load_network_pkl), never raised while `import gan_prune` runs.
_root_problem: GanPruneError | None = None


def use_sg2ada_root(root: str) -> str:
    """Make the stylegan2-ada-pytorch checkout at `root` the active implementation; returns its absolute path.

    Must run before networks are built: modules already imported from the bundled layer are dropped so that
    the next import resolves to the checkout.
    """
    global _plugin_root
    root = os.path.abspath(os.path.expanduser(root))
    missing = [f for f in _REQUIRED_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise GanPruneError(f'{root} is not a stylegan2-ada-pytorch checkout (missing {missing[0]}); '
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
    """Honour $STYLEGAN2_ADA_ROOT (called when gan_prune is imported).

    A wrong value does not fail the import (so `gan-prune --help` and `gan-prune env` still work): it is kept
    and raised by `check_root()` when networks are about to be used.
    """
    try_sg2ada_root(os.environ.get(ENV_VAR), f'${ENV_VAR}')


def try_sg2ada_root(root: str | None, source: str) -> None:
    """Use the checkout at `root` if it is one; otherwise remember why not, naming `source` (the option or
    variable it came from), for `check_root()` and `describe()`."""
    global _root_problem
    _root_problem = None
    if root:
        try:
            use_sg2ada_root(root)
        except GanPruneError as e:
            _root_problem = GanPruneError(f'{source}: {e}')


def check_root() -> None:
    """Raise the one-line error for a wrong stylegan2-ada-pytorch root, if one was given."""
    if _root_problem is not None:
        raise _root_problem


def plugin_root() -> str | None:
    """The user's checkout in use, or None for the bundled layer."""
    return _plugin_root


def describe() -> dict:
    """Where the active compatibility modules come from (for `gan-prune env`)."""
    import torch_utils
    report = {
        'implementation': 'stylegan2-ada-pytorch checkout (plugin mode)' if _plugin_root else 'bundled clean-room layer',
        'root': _plugin_root or os.path.dirname(os.path.dirname(os.path.abspath(torch_utils.__file__))),
    }
    if _root_problem is not None:
        report['problem'] = str(_root_problem)
    return report
