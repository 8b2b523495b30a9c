"""Miscellaneous utilities with the public interface of StyleGAN2-ADA's `dnnlib` package."""
from .util import EasyDict, make_cache_dir_path

__all__ = ['EasyDict', 'make_cache_dir_path']
