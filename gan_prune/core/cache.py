"""The toolkit's cache directory (downloads, detector weights, metric reference statistics), one rule for all.

Precedence, first set wins: an explicit argument, $GAN_PRUNE_CACHE_DIR, ``defaults.DOWNLOAD['cache_dir']``,
$DNNLIB_CACHE_DIR/gan_prune, ~/.cache/gan_prune. The environment beats the table of defaults so that one run
(a CI job, a benchmark) can redirect the cache without editing code.
"""
from __future__ import annotations

import os

CACHE_ENV_VAR = 'GAN_PRUNE_CACHE_DIR'
DNNLIB_CACHE_ENV_VAR = 'DNNLIB_CACHE_DIR'


def cache_dir(override: str | os.PathLike | None = None) -> str:
    """The cache directory by the precedence in the module docstring (not created here)."""
    from gan_prune import defaults
    if override is not None and os.fspath(override):
        return os.fspath(override)
    if os.environ.get(CACHE_ENV_VAR):
        return os.environ[CACHE_ENV_VAR]
    if defaults.DOWNLOAD.get('cache_dir'):
        return os.fspath(defaults.DOWNLOAD['cache_dir'])
    if os.environ.get(DNNLIB_CACHE_ENV_VAR):
        return os.path.join(os.environ[DNNLIB_CACHE_ENV_VAR], 'gan_prune')
    return os.path.join(os.path.expanduser('~'), '.cache', 'gan_prune')
