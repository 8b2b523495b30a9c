"""The paper's comparison table in miniature, on the bundled teacher; writes docs/results.md and docs/results.png.

    python tools/bench_table.py --outdir runs/table --kimg 2 --seeds 0

For each FLOPs rate (default 75 %, 91 %, 99 %) the teacher is pruned once (content-aware, the shipped face
segmenter), then fine-tuned by every method with the same budget (kimg, batch) and seeds:

    none         adversarial fine-tuning only (the `--kd none` preset: D^S from D^T, no D^T game)
    cagan        CAGAN's masked L1 + perceptual KD (perceptual net effnet-lite0:96, mask demo-faces)
    dime         DiME only (effnet-lite0:96 embedding moments)
    nickel       NICKEL only
    nickel-dime  NICKEL & DiME (the method)
    nickel-dime-torgb-pruned
                 NICKEL & DiME on a student pruned with `--torgb-gain pruned` (the release's toRGB rebuild)
                 instead of the default `teacher` gain

plus the pruned network before fine-tuning. `cagan` is the `--kd cagan` preset (R1 gamma 10, lr 0.002, D^S from
D^T, no D^T game, independent noise, masked L1 + perceptual at 3 and 3) with one offline substitution: the
perceptual network is EfficientNet-Lite0 at 96 px instead of LPIPS-VGG, whose VGG-16 weights are a download.
Each network is scored against the data and against the teacher's samples (FD and KID with the bundled
EfficientNet-Lite0 detector, precision/recall), with its parameters, MACs and 1-thread CPU latency. Finished runs
are recorded in <outdir>/results.jsonl and skipped when the tool is run again, so an interrupted table continues
where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from gan_prune.core import bench

REPO = bench.repo_file(__file__)
RESULTS_MD = os.path.join(REPO, 'docs', 'results.md')
RESULTS_PNG = os.path.join(REPO, 'docs', 'results.png')
EMBED = 'effnet-lite0:96'

# method -> distill options (on top of the shared ones)
METHODS = {
    'none': dict(kd='none'),
    'cagan': dict(kd='cagan', cagan_net=EMBED, cagan_mask='demo-faces'),
    'dime': dict(kd='nickel-dime', dime=f'{EMBED}=15', nickel_weight=0.0),
    'nickel': dict(kd='nickel-dime', dime='', nickel_weight=10.0),
    'nickel-dime': dict(kd='nickel-dime', dime=f'{EMBED}=15', nickel_weight=10.0),
    'nickel-dime-torgb-pruned': dict(kd='nickel-dime', dime=f'{EMBED}=15', nickel_weight=10.0),
}
# method -> the toRGB weight gain of the student it fine-tunes (every other method: the pruning default)
TORGB_GAIN = {'nickel-dime-torgb-pruned': 'pruned'}
LABELS = {'pruned': 'pruned, no fine-tuning', 'none': 'adversarial only', 'cagan': 'CAGAN KD', 'dime': 'DiME only',
          'nickel': 'NICKEL only', 'nickel-dime': 'NICKEL & DiME',
          'nickel-dime-torgb-pruned': 'NICKEL & DiME, toRGB gain pruned'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--teacher', default='builtin:teacher', help='Teacher pickle.')
    p.add_argument('--outdir', default='runs/table', help='Pruned networks, run directories, results.jsonl.')
    p.add_argument('--data-images', type=int, default=5000, help='Procedural training images (as the demo).')
    p.add_argument('--rates', default='0.75,0.91,0.99', help='FLOPs compression rates.')
    p.add_argument('--methods', default=','.join(METHODS), help='Fine-tuning methods (comma list).')
    p.add_argument('--kimg', type=float, default=2.0, help='Fine-tuning budget of every run, kimg.')
    p.add_argument('--batch', type=int, default=16, help='Batch size of every run.')
    p.add_argument('--seeds', default='0', help='Training seeds (comma list); results are averaged over them.')
    p.add_argument('--num-gen', type=int, default=1300, help='Generated (and real) images per metric.')
    p.add_argument('--prune-samples', type=int, default=200, help='Samples of the content-aware scores.')
    bench.add_report_option(p, 'docs/results.md and docs/results.png')
    return p.parse_args(argv)


def load_done(path: str) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line from an interruption
                done[(row['rate'], row['method'], row['seed'])] = row
    return done


def append_row(path: str, row: dict) -> None:
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(row, sort_keys=True) + '\n')
        f.flush()
        os.fsync(f.fileno())


def score(G: torch.nn.Module, teacher: torch.nn.Module, data: str, detector, num_gen: int) -> dict:
    from gan_prune.metrics.compute import compute_metrics
    from gan_prune.generator.cost import generator_cost
    samples = {}  # G's images go through the detector once for both references
    vs_data = compute_metrics(G, 'fid,kid,pr', data=data, detector=detector, num_gen=num_gen, num_real=num_gen,
                              device='cpu', gen_cache=samples)
    vs_teacher = compute_metrics(G, 'fid,kid', ref_G=teacher, detector=detector, num_gen=num_gen, device='cpu',
                                 gen_cache=samples)
    cost = generator_cost(G)
    return dict(vs_data=vs_data, vs_teacher=vs_teacher, params=cost.total_params, macs=cost.total_macs)


def main(argv=None) -> None:
    args = parse_args(argv)
    import gan_prune
    from gan_prune.demo.pipeline import write_demo_data
    from gan_prune.distill import rundir as rd
    from gan_prune.distill.loop import distill
    from gan_prune.metrics.detectors import build_detector
    from gan_prune.prune.pipeline import prune

    started = time.time()
    rates = [float(r) for r in args.rates.split(',')]
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f'error: unknown method {unknown[0]}; choose from {", ".join(METHODS)}')
    seeds = [int(s) for s in args.seeds.split(',')]
    os.makedirs(args.outdir, exist_ok=True)
    os.environ.setdefault('GAN_PRUNE_CACHE_DIR', os.path.join(os.path.abspath(args.outdir), 'cache'))
    results_path = os.path.join(args.outdir, 'results.jsonl')
    done = load_done(results_path)
    data = write_demo_data(os.path.join(args.outdir, 'data'), args.data_images, print)
    detector = build_detector('effnet-lite0', device='cpu')
    teacher = gan_prune.load_network_pkl(args.teacher)['G_ema']

    if (0.0, 'teacher', 0) not in done:
        row = dict(rate=0.0, method='teacher', seed=0, kimg=0.0, seconds=0.0,
                   **score(teacher, teacher, data, detector, args.num_gen))
        append_row(results_path, row)
        done[(0.0, 'teacher', 0)] = row

    def pruned_student(rate: float, torgb_gain: str) -> str:
        suffix = '' if torgb_gain == 'teacher' else f'-torgb-{torgb_gain}'
        path = os.path.join(args.outdir, f'pruned-{rate:.4f}{suffix}.pkl')
        if not os.path.exists(path):
            prune(args.teacher, path, rate=rate, criterion='content-aware', mask='demo-faces',
                  samples=args.prune_samples, seed=0, device='cpu', torgb_gain=torgb_gain, progress=True, log=print)
        return path

    for rate in rates:
        if (rate, 'pruned', 0) not in done:
            G = gan_prune.load_network_pkl(pruned_student(rate, 'teacher'))['G_ema']
            row = dict(rate=rate, method='pruned', seed=0, kimg=0.0, seconds=0.0,
                       **score(G, teacher, data, detector, args.num_gen))
            append_row(results_path, row)
            done[(rate, 'pruned', 0)] = row
    # Seeds outermost: a table interrupted early still has every cell, with fewer seeds.
    for seed in seeds:
        for rate in rates:
            for method in methods:
                if (rate, method, seed) in done:
                    continue
                print(f'\n=== rate {rate:.2%}, {method}, seed {seed} ===', flush=True)
                t0 = time.time()
                student = pruned_student(rate, TORGB_GAIN.get(method, 'teacher'))
                run_dir = distill(teacher=args.teacher, student=student, data=data,
                                  outdir=os.path.join(args.outdir, 'runs'), desc=f'r{rate:.2f}-{method}-s{seed}',
                                  kimg=args.kimg, batch=args.batch, tick=max(args.kimg / 4, 0.001), snap=10**6,
                                  seed=seed, workers=0, device='cpu', dime_stats_samples=1024,
                                  ema_kimg=args.kimg / 10,  # G_ema must follow G within the short budget
                                  grid='8x4', **METHODS[method])
                seconds = time.time() - t0
                G = gan_prune.load_network_pkl(rd.list_snapshots(run_dir)[-1])['G_ema']
                row = dict(rate=rate, method=method, seed=seed, kimg=args.kimg, seconds=seconds,
                           run_dir=os.path.relpath(run_dir, args.outdir),
                           **score(G, teacher, data, detector, args.num_gen))
                append_row(results_path, row)
                done[(rate, method, seed)] = row
    # Latency depends on the architecture only (one per rate); measured at the end, the networks taking turns.
    from gan_prune.demo.pipeline import cpu_latencies_ms
    nets = {0.0: teacher}
    nets.update({rate: gan_prune.load_network_pkl(pruned_student(rate, 'teacher'))['G_ema'] for rate in rates})
    latency = cpu_latencies_ms(nets)
    rows = [dict(r, latency_ms=latency.get(r['rate'], float('nan'))) for r in done.values()]
    md = table_markdown(rows, args, rates, methods, seeds, time.time() - started)
    print('\n' + md)
    if not args.no_write:
        plot(rows, rates, methods, RESULTS_PNG)
        bench.write_section('table', md, path=RESULTS_MD)
        print(f'wrote {RESULTS_MD} and {RESULTS_PNG}')


def _mean(rows: list[dict], getter) -> tuple[float, float]:
    values = [getter(r) for r in rows]
    return float(np.mean(values)), (float(np.std(values)) if len(values) > 1 else float('nan'))


def _cell(rows: list[dict], getter, fmt: str) -> str:
    mean, std = _mean(rows, getter)
    return format(mean, fmt) + ('' if np.isnan(std) else f' ± {format(std, fmt)}')


def table_markdown(rows: list[dict], args, rates, methods, seeds, seconds: float) -> str:
    teacher = next(r for r in rows if r['method'] == 'teacher')
    fd, kid = 'fid_effnet-lite0', 'kid_effnet-lite0'
    prec, rec = 'precision_effnet-lite0', 'recall_effnet-lite0'
    head = ['rate', 'method', 'FD vs data', 'KID vs data (x1000)', 'precision', 'recall', 'FD vs teacher',
            'KID vs teacher (x1000)', 'params', 'MACs/img', 'CPU ms (batch 4, 1 thread)', 'train s/run']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def line(label_rate: str, label: str, group: list[dict]) -> None:
        vt = group[0]['vs_teacher']
        lines.append('| ' + ' | '.join([
            label_rate, label,
            _cell(group, lambda r: r['vs_data'][fd], '.2f'), _cell(group, lambda r: r['vs_data'][kid] * 1000, '.2f'),
            _cell(group, lambda r: r['vs_data'][prec], '.3f'), _cell(group, lambda r: r['vs_data'][rec], '.3f'),
            _cell(group, lambda r: r['vs_teacher'][fd], '.2f') if vt else '-',
            _cell(group, lambda r: r['vs_teacher'][kid] * 1000, '.2f') if vt else '-',
            f'{group[0]["params"] / 1e3:.0f} k', f'{group[0]["macs"] / 1e6:.2f} M',
            f'{statistics.median(r["latency_ms"] for r in group):.1f}',
            f'{np.mean([r["seconds"] for r in group]):.0f}' if group[0]['seconds'] else '-']) + ' |')

    line('0 %', 'teacher', [teacher])
    for rate in rates:
        for method in ['pruned'] + methods:
            group = [r for r in rows if r['rate'] == rate and r['method'] == method]
            if group:
                line(f'{rate:.0%}', LABELS[method], group)
    cmd = (f'python tools/bench_table.py --outdir {args.outdir} --rates {args.rates} --methods {",".join(methods)} '
           f'--kimg {args.kimg:g} --batch {args.batch} --seeds {args.seeds} --num-gen {args.num_gen}')
    return '\n'.join([
        f'Measured {time.strftime("%Y-%m-%d")} on: {bench.machine_line()}. This invocation took {seconds / 60:.1f} min '
        f'(finished runs are reused from results.jsonl).', '',
        f'Command: `{cmd}`', '',
        f'Teacher `{args.teacher}`; every student is pruned from it with content-aware scores ({args.prune_samples} '
        f'samples, mask demo-faces), then fine-tuned for {args.kimg:g} kimg at batch {args.batch} (G_ema half-life '
        f'{args.kimg / 10:g} kimg) on '
        f'{args.data_images} procedural faces, seeds {args.seeds}. Metrics: {args.num_gen} generated images against '
        f'{args.num_gen} real images (or {args.num_gen} teacher samples), EfficientNet-Lite0 features (FD is the '
        'Frechet distance in that space, not Inception FID). Lower FD/KID is better; ± is the standard deviation '
        'over seeds.', '',
        *lines,
    ])


def plot(rows: list[dict], rates, methods, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gan_prune.demo.pipeline import save_figure
    fd = 'fid_effnet-lite0'
    teacher = next(r for r in rows if r['method'] == 'teacher')
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in ['pruned'] + methods:
        xs, ys = [], []
        for rate in rates:
            group = [r for r in rows if r['rate'] == rate and r['method'] == method]
            if group:
                xs.append(rate * 100)
                ys.append(np.mean([r['vs_data'][fd] for r in group]))
        if xs:
            ax.plot(xs, ys, marker='o', label=LABELS[method], linestyle='--' if method == 'pruned' else '-')
    ax.axhline(teacher['vs_data'][fd], color='black', linewidth=0.8, label='teacher')
    ax.set_xlabel('FLOPs compression rate (%)')
    ax.set_ylabel('FD (EfficientNet-Lite0) vs data, lower is better')
    ax.set_title('Bundled 32 px teacher: quality vs compression, same fine-tuning budget')
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == '__main__':
    main()
