"""`gan-prune env`: versions, devices, the active ops implementation, cache and weight locations."""
from __future__ import annotations

import importlib.metadata
import json
import platform
from typing import Any

import click


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def environment_report() -> dict:
    import torch

    from gan_prune import __version__, compat, weights
    from gan_prune.core.device import resolve_device
    report: dict[str, Any] = dict(
        gan_prune=__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        packages={d: _version(d) for d in ('torch', 'torchvision', 'numpy', 'scipy', 'open_clip_torch', 'click',
                                            'tqdm', 'requests', 'pillow')},
        torch_threads=torch.get_num_threads(),
        cuda_available=torch.cuda.is_available(),
        cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        default_device=str(resolve_device('auto')),
        compat=compat.describe(),
    )
    try:
        from torch_utils import ops
        describe = getattr(ops, 'describe_implementation', None)
        report['ops'] = describe(report['default_device']) if describe else 'plugin ops (no description available)'
    except Exception as e:  # pylint: disable=broad-except
        report['ops'] = f'unavailable: {e}'
    try:
        from gan_prune.io import download
        report['cache_dir'] = download.cache_dir()
    except Exception as e:  # pylint: disable=broad-except
        report['cache_dir'] = f'unavailable: {e}'
    report['weights_search_path'] = weights.search_dirs()
    report['weights_found'] = {model: weights.resolve_weights(name) for model, name in weights.KNOWN_FILES.items()}
    return report


@click.command('env')
@click.option('--json', 'as_json', is_flag=True, help='Print the report as JSON.')
def command(as_json: bool) -> None:
    """Show versions, device, which ops implementation is active, the cache dir and where weights are looked for."""
    report = environment_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f'gan_prune {report["gan_prune"]}, Python {report["python"]} on {report["platform"]}')
    click.echo('packages:   ' + ', '.join(f'{k} {v}' for k, v in report['packages'].items()))
    gpus = ', '.join(report['cuda_devices']) or 'none'
    click.echo(f'device:     {report["default_device"]} (CUDA GPUs: {gpus}; torch threads {report["torch_threads"]})')
    click.echo(f'layer:      {report["compat"]["implementation"]} at {report["compat"]["root"]}')
    if report['compat'].get('problem'):
        click.echo(f'            not used: {report["compat"]["problem"]}')
    ops = report['ops']
    if isinstance(ops, dict):
        click.echo('ops:        ' + '; '.join(f'{k}: {v}' for k, v in ops.items()))
    else:
        click.echo(f'ops:        {ops}')
    click.echo(f'cache dir:  {report["cache_dir"]}')
    click.echo('weights:    searched in ' + ', '.join(report['weights_search_path']))
    for model, path in report['weights_found'].items():
        click.echo(f'            {model:<14} {path or "not found"}')
