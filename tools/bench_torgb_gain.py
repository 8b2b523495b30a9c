"""How far a freshly pruned student is from its teacher under each --torgb-gain (no fine-tuning).

For every rate the teacher is scored once (content-aware, the bundled segmenter by default) and the same kept
channels are sliced twice, with the teacher's toRGB gain and with the pruned one. Each student is compared with
the teacher: FD on EfficientNet-Lite0 features (offline detector; not comparable with Inception FID) against
independent teacher samples, and the per-pixel MSE against the teacher's image for the same latent.

    python tools/bench_torgb_gain.py --rates 0.9,0.99

The table goes to stdout and to the "torgb-gain" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

from gan_prune.core import bench

BENCH_MD = bench.repo_file(__file__, 'docs', 'benchmarks.md')


def main() -> None:
    from gan_prune import load_network_pkl
    from gan_prune.metrics.compute import fid_from_moments
    from gan_prune.metrics.detectors import build_detector
    from gan_prune.prune.pipeline import prune
    from gan_prune.prune.surgery import slice_generator

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', default='builtin:teacher', help='Teacher pickle (default: the bundled teacher).')
    p.add_argument('--rates', default='0.9,0.99', help='FLOPs compression rates, comma-separated.')
    p.add_argument('--mask', default='demo-faces', help='--mask of the content-aware scoring.')
    p.add_argument('--prune-samples', type=int, default=200, help='Images used to score channels.')
    p.add_argument('--num', type=int, default=1536, help='Images per model for FD (more than the 1280 features).')
    args = p.parse_args()

    started = time.time()
    teacher = load_network_pkl(args.teacher)['G_ema']
    detector = build_detector('effnet-lite0', device='cpu')
    paired = bench.render(teacher, args.num, seed=0)  # same latents as the students: per-pixel MSE
    reference = bench.feature_moments(detector, bench.render(teacher, args.num, seed=1))
    rows = ['| rate | achieved | --torgb-gain | FD (effnet-lite0) vs teacher | MSE vs teacher, same z |',
            '|---|---|---|---|---|',
            f'| 0 | 0 | (the teacher itself, other z) | '
            f'{fid_from_moments(*bench.feature_moments(detector, paired), *reference):.3f} | 0 |']
    print('\n'.join(rows), flush=True)
    for rate in [float(r) for r in args.rates.split(',')]:
        result = prune(args.teacher, None, rate=rate, criterion='content-aware', mask=args.mask,
                       samples=args.prune_samples, device='cpu', log=None)
        kept = {name: torch.tensor(idx) for name, idx in result.data['pruning']['kept'].items()}
        for gain in ('teacher', 'pruned'):
            student = bench.render(slice_generator(teacher, kept, gain), args.num, seed=0)
            fd = fid_from_moments(*bench.feature_moments(detector, student), *reference)
            mse = float((student.clamp(-1, 1) - paired.clamp(-1, 1)).square().mean())
            rows.append(f'| {rate} | {result.data["pruning"]["rate"]:.4f} | {gain} | {fd:.3f} | {mse:.4f} |')
            print(rows[-1], flush=True)
    command = bench.command_line('bench_torgb_gain.py')
    text = '\n'.join([
        '### toRGB gain right after pruning (bundled teacher, no fine-tuning)', '',
        f'Measured {datetime.date.today().isoformat()} on: {bench.machine_line()}.', '',
        f'Command: `{command.strip()}` ({time.time() - started:.0f} s). One content-aware scoring per rate '
        f'({args.prune_samples} images, --mask {args.mask}); the same kept channels sliced with each gain. FD on '
        f'{args.num} images per model against independent teacher samples; MSE per pixel in [-1, 1] against the '
        f'teacher image of the same z.', '',
        *rows])
    bench.write_section('torgb-gain', text, BENCH_MD)
    print(f'\nwrote section "torgb-gain" of {BENCH_MD}')


if __name__ == '__main__':
    main()
