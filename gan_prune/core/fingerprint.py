"""Fingerprints: what identifies a network's weights, or a file's bytes, in cache keys and consistency checks."""
from __future__ import annotations

import hashlib
import os

import torch

_CHUNK_BYTES = 1 << 20


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 (hex) of the class name and every parameter and buffer: names, dtypes, shapes and exact values.

    Equal for bit-identical networks (replicas, a reloaded pickle); any changed weight changes it.
    """
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{values.dtype}:{tuple(values.shape)};'.encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()
