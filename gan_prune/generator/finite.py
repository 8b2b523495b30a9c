"""Finding NaN/inf weights: a diverged or damaged network renders NaN (black) images and meaningless metrics."""
from __future__ import annotations

import torch

NETWORK_KEYS = ('G', 'D', 'G_ema')


def nonfinite_tensors(module: torch.nn.Module) -> dict[str, int]:
    """{parameter or buffer name: number of NaN/inf entries} for the floating tensors that have any."""
    found = {}
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                found[name] = bad
    return found


def nonfinite_networks(data: dict) -> dict[str, dict[str, int]]:
    """nonfinite_tensors of each network (G, D, G_ema) of a snapshot dict that has any."""
    report = {}
    for key in NETWORK_KEYS:
        module = data.get(key)
        if isinstance(module, torch.nn.Module):
            found = nonfinite_tensors(module)
            if found:
                report[key] = found
    return report


def describe(label: str, found: dict[str, int], limit: int = 3) -> str:
    """One line: which tensors of `label` hold NaN/inf values (the first `limit` named)."""
    names = ', '.join(list(found)[:limit]) + (f' and {len(found) - limit} more' if len(found) > limit else '')
    return f'{label} has NaN/inf weights in {len(found)} tensor(s) ({names}; {sum(found.values())} values)'
