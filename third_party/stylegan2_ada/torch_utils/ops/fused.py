"""Which bias_act / upfirdn2d implementation a tensor gets: our fused Triton kernels or the PyTorch path.

The fused kernels (fused_triton.py) are used for CUDA tensors when `impl='cuda'`. Switches:
  TORCH_UTILS_GPU_OPS=torch        always use the PyTorch path (on CUDA too)
  TORCH_UTILS_TRITON_ON_CPU=1      also run the kernels on CPU tensors; needs TRITON_INTERPRET=1 set before anything
                                   imports Triton (torchvision does, through torch._dynamo): the interpreter, for
                                   tests of the kernels without a GPU
Triton is imported on first use only, so network pickles that import torch_utils.ops never need it. If it
cannot be imported or the kernels cannot be set up, one line is logged and the PyTorch path is used from then on.
"""
from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import Optional

import torch

logger = logging.getLogger('torch_utils.ops')

GPU_OPS_VARIABLE = 'TORCH_UTILS_GPU_OPS'
CPU_VARIABLE = 'TORCH_UTILS_TRITON_ON_CPU'
_CHOICES = ('triton', 'torch')
_SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.bfloat16)

_lock = threading.Lock()
_module: Optional[ModuleType] = None
_load_problem: Optional[str] = None
_load_attempted = False


def requested() -> str:
    """'triton' (the default) or 'torch', from TORCH_UTILS_GPU_OPS; an unknown value means the default."""
    value = os.environ.get(GPU_OPS_VARIABLE, 'triton').strip().lower() or 'triton'
    return value if value in _CHOICES else 'triton'


def _device_allowed(device_type: str) -> bool:
    if device_type == 'cuda':
        return True
    return device_type == 'cpu' and os.environ.get(CPU_VARIABLE, '') == '1'


def load() -> Optional[ModuleType]:
    """The fused_triton module, or None if Triton is unavailable here (the reason is logged once)."""
    global _module, _load_problem, _load_attempted
    if _load_attempted:
        return _module
    with _lock:
        if not _load_attempted:
            try:
                from . import fused_triton
                _module = fused_triton
            except Exception as error:  # pylint: disable=broad-except
                lines = str(error).strip().splitlines()
                _load_problem = f'{type(error).__name__}: {lines[-1] if lines else ""}'.rstrip(': ')
                logger.warning('fused Triton ops unavailable (%s); using the PyTorch ops', _load_problem)
            _load_attempted = True
    return _module


def kernels_for(x: torch.Tensor) -> Optional[ModuleType]:
    """The fused kernels module if `x` should use it, else None (take the PyTorch path)."""
    if requested() != 'triton' or not _device_allowed(x.device.type) or x.dtype not in _SUPPORTED_DTYPES:
        return None
    return load()


def disable(reason: str) -> None:
    """Stop using the fused kernels in this process, e.g. after a kernel failed to compile (logged once)."""
    global _module, _load_problem, _load_attempted
    with _lock:
        if _module is not None:
            logger.warning('fused Triton ops disabled (%s); using the PyTorch ops', reason)
        _module, _load_problem, _load_attempted = None, reason, True


def status(device_type: str) -> dict:
    """What `gan-prune env` reports: the implementation chosen for `device_type` and whether Triton loaded."""
    choice = requested()
    if choice == 'torch':
        return dict(implementation='torch', triton='not used', reason=f'{GPU_OPS_VARIABLE}=torch')
    if not _device_allowed(device_type):
        return dict(implementation='torch', triton='not used', reason=f'fused kernels run on CUDA tensors only '
                                                                      f'(not {device_type})')
    module = load()
    if module is None:
        return dict(implementation='torch', triton='failed', reason=_load_problem or 'unknown')
    return dict(implementation='triton', triton=f'loaded (triton {module.triton_version()})', reason='')


def describe(op: str, device_type: str, fallback: str) -> str:
    """One line for describe_implementation(): the fused kernels or `fallback` (the PyTorch path's description)."""
    info = status(device_type)
    if info['implementation'] == 'triton':
        return f'fused Triton kernels ({info["triton"]})'
    return f'{fallback} [{info["reason"]}]' if device_type == 'cuda' else fallback
