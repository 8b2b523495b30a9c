"""Device resolution, one behaviour for every command and the Python API.

- ``None`` or ``'auto'``: CUDA when available, else the CPU.
- ``'cuda'`` or ``'cuda:N'`` without CUDA: the CPU, with a warning (a script written for a GPU still runs).
- any other name torch knows (``'cpu'``, ``'mps'``, ...): that device; a name torch does not know is one clear error.
- ``local_rank`` (training processes): an unindexed CUDA request picks device ``local_rank`` modulo the GPU count.
"""
from __future__ import annotations

import warnings

import torch

from gan_prune.errors import GanPruneError

DEVICE_CHOICES_TEXT = 'auto, cpu, cuda or cuda:N'


def resolve_device(name: str | torch.device | None = 'auto', local_rank: int | None = None) -> torch.device:
    """The torch.device for ``name`` (see the module docstring for the rules)."""
    text = 'auto' if name is None else str(name).strip().lower()
    if text in ('auto', 'cuda'):
        if not torch.cuda.is_available():
            if text == 'cuda':
                warnings.warn('CUDA is not available; running on the CPU', stacklevel=2)
            return torch.device('cpu')
        if local_rank is None:
            return torch.device('cuda')
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise GanPruneError(f'unknown device {name!r}; use {DEVICE_CHOICES_TEXT}') from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        warnings.warn('CUDA is not available; running on the CPU', stacklevel=2)
        return torch.device('cpu')
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer; the CPU for a module that holds neither."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device('cpu')
