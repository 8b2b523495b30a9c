"""`gan-prune metrics`: FID, KID and precision/recall of a network against a dataset or its teacher's samples."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from gan_prune.cli import checks
from gan_prune.defaults import METRICS
from gan_prune.errors import GanPruneError
from gan_prune.fileio import append_line, refuse_overwriting_inputs


def _load_generator(src: str, trust: bool):
    """(G_ema, training_set_kwargs) of a pickle source; a module-level function so tests can swap it."""
    from gan_prune import load_network_pkl
    if not src.startswith('builtin:') and '://' not in src and not os.path.exists(src):
        raise GanPruneError(f'no such file: {src}')
    data = load_network_pkl(src, trust=trust)
    _refuse_nonfinite(data['G_ema'], src)
    return data['G_ema'], data.get('training_set_kwargs')


def _refuse_nonfinite(G, src: str) -> None:
    """A network with NaN/inf weights has no meaningful score; refuse it before the (long) measurement."""
    from gan_prune.generator.finite import describe, nonfinite_tensors
    found = nonfinite_tensors(G)
    if found:
        raise GanPruneError(f'{describe(f"G_ema of {src}", found)}: no metric of it would mean anything; '
                            f'measure an earlier snapshot')


def _append_json_line(path: str, record: dict) -> None:
    """Append one JSON line to `path` in one locked write: runs appending at the same time lose no line."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        append_line(path, json.dumps(record, sort_keys=True))
    except OSError as e:
        raise GanPruneError(f'cannot append to --out {path} ({e.strerror or type(e).__name__}); give a writable '
                            f'file path') from None


def _refuse_out_over_inputs(out_path: str | None, src: str, ref_pkl: str | None, data: str | None,
                            detector: str) -> None:
    if out_path:
        detector_file = detector.partition(':')[2] if detector.startswith('inception:') else None
        refuse_overwriting_inputs(out_path, {'--pkl': src, '--ref-pkl': ref_pkl, '--data': data,
                                             '--detector': detector_file})


def format_table(results: dict[str, float]) -> str:
    from gan_prune.metrics.compute import display_name
    rows = [(display_name(k), f'{v:.6g}') for k, v in results.items()]
    width = max([len('metric')] + [len(name) for name, _ in rows])
    lines = [f'{"metric":<{width}}  value', f'{"-" * width}  {"-" * 10}']
    lines += [f'{name:<{width}}  {value}' for name, value in rows]
    return '\n'.join(lines)


@click.command('metrics')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Network pickle to evaluate (its G_ema): a path, an http(s) URL, or builtin:NAME. A network with '
                   'NaN/inf weights is refused (its score would be a meaningless number in a table).')
@click.option('--metrics', 'metric_list', default=METRICS['metrics'], callback=checks.metrics, show_default=True, metavar='LIST',
              help='Comma-separated metrics: fid, kid, pr (precision/recall).')
@click.option('--data', metavar='DATASET', default=None,
              help="Reference dataset (zip or folder). Default: the pickle's training_set_kwargs path, if it exists.")
@click.option('--ref-pkl', metavar='SRC', default=None,
              help="Compare with this teacher's samples (its G_ema) instead of a dataset.")
@click.option('--detector', default=METRICS['detector'], callback=checks.detector, show_default=True, metavar='SPEC',
              help="Feature detector: 'effnet-lite0' (bundled, offline; reported as e.g. 'FD (effnet-lite0)', not "
                   "FID), 'inception' (inception-2015-12-05.pt under <cache-dir>/detectors/) or 'inception:FILE'. "
                   'Only Inception gives numbers comparable with published FID. The Inception file is TorchScript '
                   "(a program): NVIDIA's published file is known by its checksum; any other needs --trust-pickle.")
@click.option('--num-gen', type=click.IntRange(min=2), default=METRICS['num_gen'], show_default=True,
              help='Generated images.')
@click.option('--num-real', type=click.IntRange(min=2), default=METRICS['num_real'], show_default=True,
              help='Real images used from the dataset (default: all).')
@click.option('--num-ref', type=click.IntRange(min=2), default=METRICS['num_ref'], show_default=True,
              help='Teacher images sampled with --ref-pkl (default: the same as --num-gen).')
@click.option('--batch', type=click.IntRange(min=1), default=METRICS['batch'], show_default=True,
              help='Images per generator and detector call.')
@click.option('--seed', type=int, default=METRICS['seed'], show_default=True,
              help='Seed of the generated samples (teacher samples use seed + 1).')
@click.option('--device', default='auto', callback=checks.device, show_default=True,
              help="'auto' (CUDA if available, else CPU), 'cpu' or 'cuda[:N]'.")
@click.option('--cache/--no-cache', default=METRICS['cache'], show_default=True,
              help='Reuse reference statistics cached per dataset (or teacher) and detector.')
@click.option('--cache-dir', default=None, metavar='DIR',
              help='Cache root (default: $GAN_PRUNE_CACHE_DIR, else $DNNLIB_CACHE_DIR/gan_prune, else '
                   '~/.cache/gan_prune).')
@click.option('--json', 'as_json', is_flag=True, help='Print one JSON object instead of a table.')
@click.option('--out', 'out_path', default=None, metavar='FILE',
              help='Also append the result as one JSON line to FILE (one locked write: concurrent runs lose no '
                   'line; never one of the input files).')
@click.option('--trust-pickle', is_flag=True,
              help='Let the given files run code, for files from a source you trust: the code embedded in the '
                   'pickles (custom architectures), and an Inception TorchScript file other than NVIDIA\'s '
                   'published one (known by checksum). Without it such files are refused.')
def command(src: str, metric_list: str, data: str | None, ref_pkl: str | None, detector: str, num_gen: int,
            num_real: int | None, num_ref: int | None, batch: int, seed: int, device: str, cache: bool,
            cache_dir: str | None, as_json: bool, out_path: str | None, trust_pickle: bool) -> None:
    """Compute FID, KID and precision/recall of a network against a dataset or against a teacher's samples."""
    from gan_prune.metrics.compute import compute_metrics, parse_metrics
    from gan_prune.core.device import resolve_device

    names = parse_metrics(metric_list)
    if data is not None and ref_pkl is not None:
        raise GanPruneError('give either --data or --ref-pkl, not both')
    _refuse_out_over_inputs(out_path, src, ref_pkl, data, detector)
    torch_device = resolve_device(device)
    G, training_set_kwargs = _load_generator(src, trust_pickle)
    if data is None and ref_pkl is None:
        data = (training_set_kwargs or {}).get('path')
        if not data or not os.path.exists(data):
            raise GanPruneError('no reference: pass --data DATASET or --ref-pkl TEACHER '
                                '(the pickle names no dataset that exists here)')
        _refuse_out_over_inputs(out_path, src, ref_pkl, data, detector)  # the dataset the pickle names
    ref_G = None
    if ref_pkl is not None:
        ref_G, _ = _load_generator(ref_pkl, trust_pickle)
    G = G.to(torch_device)

    log = (lambda msg: click.echo(msg, err=True)) if not as_json else (lambda msg: None)
    start = time.time()
    results = compute_metrics(G, names, data=data, ref_G=ref_G, detector=detector, num_gen=num_gen, batch=batch,
                              seed=seed, num_real=num_real, num_ref=num_ref, device=torch_device, cache=cache,
                              cache_dir=cache_dir, progress=not as_json, log=log, trust=trust_pickle)
    record: dict[str, Any] = dict(pkl=src, metrics=names, results=results, detector=detector, num_gen=num_gen, seed=seed,
                  reference=(dict(data=data) if ref_pkl is None
                             else dict(ref_pkl=ref_pkl, num_ref=num_gen if num_ref is None else num_ref)),
                  num_real=num_real, device=str(torch_device), total_time_s=round(time.time() - start, 3),
                  timestamp=time.time())
    if out_path:
        _append_json_line(out_path, record)
    if as_json:
        click.echo(json.dumps(record, sort_keys=True))
    else:
        reference = (f'dataset {data}' if ref_pkl is None
                     else f'teacher {ref_pkl} ({record["reference"]["num_ref"]} samples)')
        click.echo(f'{src} vs {reference}: {num_gen} generated images, detector {detector}, '
                   f'{record["total_time_s"]:.1f} s')
        click.echo(format_table(results))
