"""Low-level ops used by the StyleGAN2-ADA networks: bias_act, upfirdn2d, conv2d_resample, fma, gradfix convs.

The reference path is pure PyTorch and runs on CPU tensors. On CUDA tensors `impl='cuda'` selects our fused
Triton kernels for bias_act and upfirdn2d (fused.py says how to switch them off; where Triton cannot load,
the torch-native path runs). One more addition has compiled code: narrow_conv, CPU kernels for the float32
inference of narrow synthesis layers, built on first use and skipped (with the PyTorch path kept) wherever
they cannot be built. Which path ran is logged once per process per (op, device type) on the logger
'torch_utils.ops' at INFO level.

This package stays light on purpose: network pickles import its submodules, so they may depend only on
torch, numpy and dnnlib.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

logger = logging.getLogger('torch_utils.ops')

_OP_MODULES = ('bias_act', 'upfirdn2d', 'conv2d_resample', 'fma', 'conv2d_gradfix', 'grid_sample_gradfix',
               'narrow_conv')
_reported: set = set()
_reported_lock = threading.Lock()

# Ops whose reference path a caller may replace for a while (replaced_reference_ops), and what replaces them now.
REPLACEABLE_OPS = ('upfirdn2d', 'bias_act', 'conv2d_resample')
_replacements: dict[str, Callable] = {}


@contextlib.contextmanager
def replaced_reference_ops(**replacements: Callable) -> Iterator[None]:
    """Inside the block, run the given functions in place of the reference path of these ops (for benchmarks
    that compare another implementation with the shipped one on the same network): `upfirdn2d=` and
    `bias_act=` take the arguments of the op without `impl` and replace the pure-PyTorch path (the one CPU
    tensors take); `conv2d_resample=` replaces the whole op. Process-wide, not for concurrent use."""
    unknown = sorted(set(replacements) - set(REPLACEABLE_OPS))
    if unknown:
        raise ValueError(f'cannot replace {unknown[0]!r}; replaceable ops: {", ".join(REPLACEABLE_OPS)}')
    saved = dict(_replacements)
    _replacements.update(replacements)
    try:
        yield
    finally:
        _replacements.clear()
        _replacements.update(saved)


def replacement(op: str) -> Callable | None:
    """The function replacing `op`'s reference path now (see replaced_reference_ops), or None."""
    return _replacements.get(op)


def report_implementation(op: str, device_type: str, description: str) -> None:
    """Log which implementation `op` uses on `device_type`, the first time only."""
    key = (op, device_type)
    if key in _reported:
        return
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    logger.info('%s on %s: %s', op, device_type, description)


def describe_implementation(device_type: str) -> dict[str, str]:
    """Short description of the implementation each op uses for tensors on `device_type` ('cpu', 'cuda', ...)."""
    import importlib
    descriptions = {}
    for name in _OP_MODULES:
        module = importlib.import_module(f'{__name__}.{name}')
        descriptions[name] = module.describe(device_type)
    return descriptions
