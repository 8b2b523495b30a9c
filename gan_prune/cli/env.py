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
        plugin_mode = report['compat']['implementation'].endswith('(plugin mode)')
        report['fused_ops'] = fused_ops_report(report['default_device'], plugin_mode)
    except Exception as e:  # pylint: disable=broad-except
        report['fused_ops'] = dict(implementation='unknown', compiled='unknown', detail=f'unavailable: {e}')
    try:
        from gan_prune.io import download
        report['cache_dir'] = download.cache_dir()
    except Exception as e:  # pylint: disable=broad-except
        report['cache_dir'] = f'unavailable: {e}'
    report['weights_search_path'] = weights.search_dirs()
    report['weights_found'] = {model: weights.resolve_weights(name) for model, name in weights.KNOWN_FILES.items()}
    return report


def fused_ops_report(device_type: str, plugin_mode: bool) -> dict:
    """Which bias_act / upfirdn2d implementation CUDA tensors get, and whether its kernels compiled here.

    implementation: 'ours (Triton)', "NVIDIA's (plugin mode)" or 'plain PyTorch'. compiled: 'yes' (a tiny call
    of both ops ran on the GPU), 'failed: ...', 'not built yet (builds on first use)' or 'not needed'.
    """
    from torch_utils import ops
    if plugin_mode:
        bias_act = ops.bias_act
        built = getattr(bias_act, '_plugin', None) is not None
        return dict(implementation="NVIDIA's (plugin mode)", compiled='yes' if built else
                    'not built yet (builds on first use)', detail='')
    from torch_utils.ops import fused
    status = fused.status(device_type)
    if status['implementation'] != 'triton':
        return dict(implementation='plain PyTorch', compiled='not needed', detail=status['reason'])
    return dict(implementation='ours (Triton)', compiled=_try_fused_kernels(device_type), detail=status['triton'])


def _try_fused_kernels(device_type: str) -> str:
    """Run both fused ops once on a tiny tensor (this compiles them); 'yes' or 'failed: <one line>'."""
    import torch
    from torch_utils.ops import bias_act, fused, upfirdn2d
    try:
        x = torch.ones([1, 2, 4, 4], device=device_type)
        bias_act.bias_act(x, torch.zeros([2], device=device_type), act='lrelu')
        upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=device_type))
    except Exception as error:  # pylint: disable=broad-except
        lines = str(error).strip().splitlines()
        return f'failed: {type(error).__name__}: {lines[-1] if lines else ""}'
    if fused.status(device_type)['implementation'] != 'triton':  # a compile failure switched them off
        return f'failed: {fused.status(device_type)["reason"]}'
    return 'yes'


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
    fused_ops = report['fused_ops']
    detail = f' ({fused_ops["detail"]})' if fused_ops['detail'] else ''
    click.echo(f'fused ops:  {fused_ops["implementation"]}{detail}; compiled: {fused_ops["compiled"]}')
    click.echo(f'cache dir:  {report["cache_dir"]}')
    click.echo('weights:    searched in ' + ', '.join(report['weights_search_path']))
    for model, path in report['weights_found'].items():
        click.echo(f'            {model:<14} {path or "not found"}')
