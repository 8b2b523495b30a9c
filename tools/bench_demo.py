"""Which demo settings bring the student closest to its teacher, fastest.

Runs the demo's prune + distill stages (gan_prune.demo.pipeline's calls, the demo's defaults) once per variant,
each variant changing one setting, and measures two things of the student before fine-tuning (the pruned
network) and after (the run's last G_ema): its FD on EfficientNet-Lite0 features (the demo's offline detector;
not comparable with Inception FID) against independent teacher samples, which says whether its images are
distributed like the teacher's, and the mean pixel difference to the teacher's image of the same latent, which
says whether each face is the teacher's face (what a person sees in the demo's comparison.png).

    python tools/bench_demo.py --kimg 1 --variants demo,rate-0.9,lr-0.005 --png students.png

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

# name -> (prune options that differ from the demo's, distill options that differ from the demo's)
VARIANTS: dict[str, tuple[dict, dict]] = {
    'demo': ({}, {}),
    'rate-0.9': (dict(rate=0.9), {}),
    'rate-0.75': (dict(rate=0.75), {}),
    'torgb-teacher': (dict(torgb_gain='teacher'), {}),
    'ds-teacher': ({}, dict(ds_init='teacher')),
    'lr-0.001': ({}, dict(lr=0.001)),
    'lr-0.005': ({}, dict(lr=0.005)),
    'lr-0.01': ({}, dict(lr=0.01)),
    'batch-8': ({}, dict(batch=8)),
    'batch-32': ({}, dict(batch=32)),
    'kd-none': ({}, dict(kd='none')),
    'dime-x45': ({}, dict(dime='effnet-lite0:96=45')),
    'dime-64': ({}, dict(dime='effnet-lite0:64=15')),
    'dime-224': ({}, dict(dime='effnet-lite0:224=15')),
    'no-teacher-d': ({}, dict(teacher_d=False)),
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
    from gan_prune.defaults import DEMO
    from gan_prune.demo.pipeline import same_latent_distance, write_comparison, write_demo_data
    from gan_prune.metrics.compute import fid_from_moments
    from gan_prune.metrics.detectors import build_detector
    from gan_prune.prune.pipeline import prune

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variants', default='demo,rate-0.9,lr-0.005,ds-teacher,kd-none',
                   help=f'Comma-separated, from: {", ".join(VARIANTS)} (default: %(default)s).')
    p.add_argument('--kimg', type=float, default=DEMO['kimg'], help='Distillation length (default: the demo\'s).')
    p.add_argument('--seeds', default='0', help='Training seeds, comma-separated (default: %(default)s).')
    p.add_argument('--num', type=int, default=1300, help='Images per model for FD (> 1280, the feature size).')
    p.add_argument('--workdir', default=None, help='Where data, pruned pickles and runs go (default: a temp dir).')
    p.add_argument('--png', default=None,
                   help='Also write the students beside the teacher, seeds 0-9, one row per run, to this PNG.')
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
    teacher_same_z = bench.render(teacher, args.num, seed=0)

    def measure(G: torch.nn.Module) -> tuple[float, float]:
        """FD against independent teacher samples; mean |student - teacher| per pixel for the same z (0-255)."""
        images = bench.render(G, args.num, seed=0)
        fd = fid_from_moments(*bench.feature_moments(detector, images), *reference)
        return fd, same_latent_distance(images, teacher_same_z)

    rows = ['| setting | rate | seed | kimg | FD vs teacher, pruned | FD vs teacher, after | L1 same z, pruned | '
            'L1 same z, after | wall s | load avg (1, 5, 15 min) |',
            '|---|---|---|---|---|---|---|---|---|---|',
            f'| teacher itself (other z) | - | - | - | {measure(teacher)[0]:.2f} | - | - | - | - | '
            f'{bench.load_average()} |']
    print('\n'.join(rows), flush=True)
    pictures = {'teacher': teacher}
    pruned: dict[tuple, tuple[str, tuple[float, float]]] = {}
    for name in names:
        prune_overrides, overrides = VARIANTS[name]
        prune_options = dict(rate=float(o['rate']), criterion=o['criterion'], mask=o['mask'],
                             samples=int(o['prune_samples']), seed=int(o['seed']))
        prune_options.update(prune_overrides)
        key = tuple(sorted(prune_options.items()))
        if key not in pruned:
            pkl = os.path.join(workdir, f'pruned-{len(pruned)}.pkl')
            prune(o['teacher'], pkl, device='cpu', log=None, **prune_options)
            pruned[key] = (pkl, measure(load_network_pkl(pkl)['G_ema']))
        pkl, (fd_before, l1_before) = pruned[key]
        for seed in [int(s) for s in args.seeds.split(',')]:
            t = time.time()
            snapshot = distill_variant(o, pkl, data, workdir, name, args.kimg, seed, overrides)
            student = load_network_pkl(snapshot)['G_ema']
            fd_after, l1_after = measure(student)
            pictures[f'{name}, seed {seed}'] = student
            rows.append(f'| {name} | {prune_options["rate"]:g} | {seed} | {args.kimg:g} | {fd_before:.2f} | '
                        f'{fd_after:.2f} | {l1_before:.1f} | {l1_after:.1f} | {time.time() - t:.0f} | '
                        f'{bench.load_average()} |')
            print(rows[-1], flush=True)
    if args.png:
        write_comparison(pictures, list(range(10)), args.png)
        print(f'wrote {args.png}')
    text = '\n'.join([
        '### Demo convergence: how close the student comes to its teacher per setting', '',
        f'Measured {datetime.date.today().isoformat()} on: {bench.machine_line()}.', '',
        f'Command: `{bench.command_line("bench_demo.py").strip()}` ({time.time() - started:.0f} s). The demo\'s '
        'prune + distill with one setting changed per row. FD on EfficientNet-Lite0 features of '
        f'{args.num} images (G_ema, constant noise) against independent teacher samples: how close the '
        'distributions are. L1 same z: the mean absolute pixel difference (0-255) between student and teacher '
        f'images of the same {args.num} latents: how much each face looks like the teacher\'s own. "wall s" '
        'covers distillation and the measures of the result.', '',
        *rows])
    if not args.no_write:
        bench.write_section('demo-convergence', text, RESULTS_MD)
        print(f'\nwrote section "demo-convergence" of {RESULTS_MD}')
    else:
        print('\n' + text)


if __name__ == '__main__':
    main()
