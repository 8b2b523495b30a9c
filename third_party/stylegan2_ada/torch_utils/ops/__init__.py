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

import logging
import threading

logger = logging.getLogger('torch_utils.ops')

_OP_MODULES = ('bias_act', 'upfirdn2d', 'conv2d_resample', 'fma', 'conv2d_gradfix', 'grid_sample_gradfix',
               'narrow_conv')
_reported: set = set()
_reported_lock = threading.Lock()


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
