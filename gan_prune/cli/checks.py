"""Click callbacks that check option values while the command line is parsed, before any long work starts.

Each returns the value unchanged (commands keep their own parsing) or raises GanPruneError: one line naming
the option, what is wrong and what to write instead. A value that is only checked when it is used (after
pruning, at the first snapshot) would cost the user the work done before it.
"""
from __future__ import annotations

import click

from gan_prune.errors import GanPruneError


def _option(param: click.Parameter) -> str:
    return param.opts[0] if getattr(param, 'opts', None) else f'--{param.name}'


def seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--seeds: numbers and inclusive ranges (gan_prune.generate.parse_seeds)."""
    if value is not None:
        from gan_prune.generate import parse_seeds
        parse_seeds(value)
    return value


def device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--device: auto, cpu, cuda or cuda:N (whether CUDA is present is the command's business)."""
    if value is None or value == 'auto':
        return value
    import torch
    try:
        parsed = torch.device(value)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ('cpu', 'cuda'):
        raise GanPruneError(f'{_option(param)} {value!r} is not a device; use auto, cpu, cuda or cuda:N')
    return value


def metrics(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--metrics: a comma list of known metric names ('none' or empty: no metrics, where allowed)."""
    if value and value.strip().lower() != 'none':
        from gan_prune.metrics.compute import parse_metrics
        _with_option(param, parse_metrics, value)
    return value


def detector(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--detector / --metrics-detector: effnet-lite0, inception or inception:FILE (the file must exist)."""
    if value:
        from gan_prune.metrics.detectors import check_detector_spec
        _with_option(param, check_detector_spec, value)
    return value


def embedders(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--embed / --dime: SPEC[=WEIGHT],... with known embedder families and existing TorchScript files."""
    if value:
        from gan_prune.distill.dime import check_embedder_specs
        _with_option(param, check_embedder_specs, value)
    return value


def _with_option(param: click.Parameter, check, value: str) -> None:
    """Run a library check, prefixing its one-line error with the option's name."""
    try:
        check(value)
    except GanPruneError as e:
        raise GanPruneError(f'{_option(param)}: {e}', e.exit_code) from e


def fraction(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """--rate / --ratio: a fraction strictly between 0 and 1."""
    if value is not None and not 0 < value < 1:
        raise GanPruneError(f'{_option(param)} must be between 0 and 1 (exclusive), got {value:g}; '
                            f'e.g. 0.9 for about 10x fewer MACs')
    return value
