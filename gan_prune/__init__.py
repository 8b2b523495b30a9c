"""gan_prune: make StyleGAN2-ADA generators 10-300x cheaper without losing image quality.

Public API:
    load_network_pkl(src, trust=False)   read a network pickle (path, URL or builtin:NAME), safely by default
    save_network_pkl(data, path)         write a snapshot in NVIDIA's exact format, atomically
"""
from gan_prune import compat as _compat

__version__ = '0.1.0'

_compat.init_from_env()


def load_network_pkl(src, trust: bool = False, **kwargs) -> dict:
    """Load a StyleGAN2-ADA network pickle; see gan_prune.io.pickles.load_network_pkl."""
    from gan_prune.io.pickles import load_network_pkl as _load
    _compat.check_root()
    return _load(src, trust=trust, **kwargs)


def save_network_pkl(data: dict, path) -> None:
    """Write a snapshot dict in NVIDIA's format; see gan_prune.io.pickles.save_network_pkl."""
    from gan_prune.io.pickles import save_network_pkl as _save
    _save(data, path)


__all__ = ['load_network_pkl', 'save_network_pkl', '__version__']
