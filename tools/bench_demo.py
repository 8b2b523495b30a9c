"""Which demo settings bring the student closest to its teacher, fastest.

Runs the demo's prune + distill stages (gan_prune.demo.pipeline's calls, the demo's defaults) once per variant,
each variant changing one setting, and measures the student's FD on EfficientNet-Lite0 features (the demo's
offline detector; not comparable with Inception FID) against independent teacher samples, before fine-tuning
(the pruned network) and after (the run's last G_ema).

    python tools/bench_demo.py --kimg 1 --variants demo,torgb-teacher,ds-teacher,lr-0.005,kd-none

The table goes to stdout and, unless --no-write, to the "demo-convergence" section of docs/results.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import torch

from gan_prune.core import bench

RESULTS_MD = bench.repo_file(__file__, 'docs', 'results.md')

# name -> (toRGB gain at prune time, None for the demo's own, i.e. `gan-prune prune`'s default; distill options
# that differ from the demo's)
VARIANTS: dict[str, tuple[str | None, dict]] = {
    'demo': (None, {}),
    'torgb-pruned': ('pruned', {}),
    'torgb-teacher': ('teacher', {}),
    'ds-teacher': (None, dict(ds_init='teacher')),
    'lr-0.001': (None, dict(lr=0.001)),
    'lr-0.005': (None, dict(lr=0.005)),
    'lr-0.01': (None, dict(lr=0.01)),
    'batch-8': (None, dict(batch=8)),
    'batch-32': (None, dict(batch=32)),
    'kd-none': (None, dict(kd='none')),
    'dime-x45': (None, dict(dime='effnet-lite0:96=45')),
    'dime-224': (None, dict(dime='effnet-lite0:224=15')),
    'no-teacher-d': (None, dict(teacher_d=False)),
}


def distill_variant(o: dict, pruned_pkl: str, data: str, workdir: str, name: str, kimg: float, seed: int,
                    overrides: dict) -> str:
    """The demo's distill call (gan_prune/demo/pipeline.py) with `overrides`; returns the last snapshot."""
    from gan_prune.distill import rundir as rd
    from gan_prune.distill.loop import distill
    options = dict(teacher=o['teacher'], student=pruned_pkl, data=data, outdir=os.path.join(workdir, 'runs'),
                   desc=f'bench-{name}', kd='nickel-dime', kimg=kimg, batch=int(o['batch']),
                   tick=max(kimg / 4, 0.001), snap=10**6, seed=seed, dime=o['dime'],
                   dime_stats_samples=int(o['dime_stats_samples']), nickel_weight=float(o['nickel_weight']),
                   ema_kimg=float(o['ema_kimg']), workers=0, device='cpu', grid='10x4')
    options.update(overrides)
    run_dir = distill(**options)
    return rd.list_snapshots(run_dir)[-1]


def main() -> None:
    from gan_prune import load_network_pkl
    from gan_prune.defaults import DEMO, PRUNE
    from gan_prune.demo.pipeline import write_demo_data
    from gan_prune.metrics.compute import fid_from_moments
    from gan_prune.metrics.detectors import build_detector
    from gan_prune.prune.pipeline import prune

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variants', default='demo,torgb-teacher,ds-teacher,lr-0.005,kd-none',
                   help=f'Comma-separated, from: {", ".join(VARIANTS)} (default: %(default)s).')
    p.add_argument('--kimg', type=float, default=DEMO['kimg'], help='Distillation length (default: the demo\'s).')
    p.add_argument('--seeds', default='0', help='Training seeds, comma-separated (default: %(default)s).')
    p.add_argument('--num', type=int, default=1300, help='Images per model for FD (> 1280, the feature size).')
    p.add_argument('--workdir', default=None, help='Where data, pruned pickles and runs go (default: a temp dir).')
    bench.add_report_option(p, 'docs/results.md')
    args = p.parse_args()
    names = [n.strip() for n in args.variants.split(',') if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f'unknown variant {unknown[0]!r}; choose from {", ".join(VARIANTS)}')

    started = time.time()
    o = dict(DEMO)
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench-demo-')
    data = write_demo_data(os.path.join(workdir, 'data'), int(o['data_images']), log=lambda m: None)
    teacher = load_network_pkl(o['teacher'])['G_ema']
    detector = build_detector('effnet-lite0', device='cpu')
    reference = bench.feature_moments(detector, bench.render(teacher, args.num, seed=1))

    def fd(G: torch.nn.Module) -> float:
        return fid_from_moments(*bench.feature_moments(detector, bench.render(G, args.num, seed=0)), *reference)

    rows = ['| setting | seed | kimg | FD vs teacher, pruned | FD vs teacher, after | wall s | load avg (1, 5, 15 min) |',
            '|---|---|---|---|---|---|---|',
            f'| teacher itself (other z) | - | - | {fd(teacher):.2f} | - | - | {bench.load_average()} |']
    print('\n'.join(rows), flush=True)
    pruned: dict[str, tuple[str, float]] = {}
    for name in names:
        gain, overrides = VARIANTS[name]
        gain = gain or PRUNE['torgb_gain']
        if gain not in pruned:
            pkl = os.path.join(workdir, f'pruned-{gain}.pkl')
            prune(o['teacher'], pkl, rate=float(o['rate']), criterion=o['criterion'], mask=o['mask'],
                  samples=int(o['prune_samples']), seed=int(o['seed']), device='cpu', torgb_gain=gain, log=None)
            pruned[gain] = (pkl, fd(load_network_pkl(pkl)['G_ema']))
        pkl, fd_before = pruned[gain]
        for seed in [int(s) for s in args.seeds.split(',')]:
            t = time.time()
            snapshot = distill_variant(o, pkl, data, workdir, name, args.kimg, seed, overrides)
            fd_after = fd(load_network_pkl(snapshot)['G_ema'])
            rows.append(f'| {name} | {seed} | {args.kimg:g} | {fd_before:.2f} | {fd_after:.2f} | '
                        f'{time.time() - t:.0f} | {bench.load_average()} |')
            print(rows[-1], flush=True)
    text = '\n'.join([
        '### Demo convergence: the student\'s FD against its teacher per setting', '',
        f'Measured {datetime.date.today().isoformat()} on: {bench.machine_line()}.', '',
        f'Command: `{bench.command_line("bench_demo.py").strip()}` ({time.time() - started:.0f} s). The demo\'s '
        f'prune + distill with one setting changed per row; FD on EfficientNet-Lite0 features of {args.num} '
        'images (G_ema, constant noise) against independent teacher samples. "wall s" covers distillation and '
        'the FD of the result.', '',
        *rows])
    if not args.no_write:
        bench.write_section('demo-convergence', text, RESULTS_MD)
        print(f'\nwrote section "demo-convergence" of {RESULTS_MD}')
    else:
        print('\n' + text)


if __name__ == '__main__':
    main()
