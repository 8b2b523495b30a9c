"""`gan-prune demo`: the whole pipeline on the bundled teacher, small enough for a laptop CPU.

    data     write the teacher's training data (procedural cartoon faces) to <outdir>/data/
    prune    content-aware pruning of the teacher to --rate with the shipped face segmenter -> pruned.pkl
    distill  a short NICKEL & DiME fine-tuning run -> <outdir>/runs/<id>-.../
    export   the final student as a compact StyleGAN2-ADA pickle -> student.pkl
    evaluate teacher / pruned / distilled side by side (same seeds), metrics, cost, latency ->
             comparison.png, results.md, results.json, results.png
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np
import torch

from gan_prune.defaults import DEMO
from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write
from gan_prune.runtime.latency import machine_description

MODEL_LABELS = {'teacher': 'teacher', 'pruned': 'pruned (no fine-tuning)', 'student': 'NICKEL & DiME student'}
TILE_SCALE = 4  # 32 px images are enlarged (nearest neighbour) so faces are visible in the comparison
SAME_LATENTS = 256  # images per model for the pixel distance to the teacher's image of the same latent


def run_demo(log: Callable[[str], None] = print, **options) -> dict:
    """Run every stage; returns the results dict that is also written to <outdir>/results.json."""
    unknown = sorted(set(options) - set(DEMO))
    if unknown:
        raise GanPruneError(f'unknown demo option {unknown[0]!r}; see gan-prune demo --help')
    o = dict(DEMO, **options)
    if not 0 <= o['rate'] < 1:
        raise GanPruneError(f'--rate must be in [0, 1), got {o["rate"]}')
    outdir = o['outdir']
    os.makedirs(outdir, exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}

    def stage(i: int, name: str, text: str) -> float:
        log(f'\n[{i}/5] {name}: {text}')
        return time.time()

    t = stage(1, 'data', f'{o["data_images"]} procedural cartoon faces (the teacher\'s training data)')
    data = write_demo_data(os.path.join(outdir, 'data'), int(o['data_images']), log)
    timings['data'] = time.time() - t

    t = stage(2, 'prune', f'{o["criterion"]} pruning of {o["teacher"]} to a FLOPs rate of {o["rate"]:.2%}')
    from gan_prune.prune.pipeline import prune
    pruned_pkl = os.path.join(outdir, 'pruned.pkl')
    result = prune(o['teacher'], pruned_pkl, rate=float(o['rate']), criterion=o['criterion'], mask=o['mask'],
                   samples=int(o['prune_samples']), seed=int(o['seed']), device=o['device'], progress=True, log=log)
    log(result.report)
    timings['prune'] = time.time() - t

    t = stage(3, 'distill', f'NICKEL & DiME for {o["kimg"]:g} kimg (the paper trains for thousands)')
    from gan_prune.distill.loop import distill
    from gan_prune.distill import rundir as rd
    run_dir = distill(teacher=o['teacher'], student=pruned_pkl, data=data, outdir=os.path.join(outdir, 'runs'),
                      desc='demo-nickel-dime', kd='nickel-dime', kimg=float(o['kimg']), batch=int(o['batch']),
                      tick=max(float(o['kimg']) / 12, 0.001), snap=10**6, seed=int(o['seed']), dime=o['dime'],
                      dime_stats_samples=int(o['dime_stats_samples']), nickel_weight=float(o['nickel_weight']),
                      ema_kimg=float(o['ema_kimg']), workers=0, device=o['device'], grid='10x4')
    snapshot = rd.list_snapshots(run_dir)[-1]
    timings['distill'] = time.time() - t

    t = stage(4, 'export', 'the student as a StyleGAN2-ADA pickle (loads in generate.py, calc_metrics.py, ...)')
    student_pkl = os.path.join(outdir, 'student.pkl')
    export_generator(snapshot, student_pkl, pruned_pkl)
    log(f'wrote {student_pkl} ({os.path.getsize(student_pkl) / 2**20:.2f} MiB)')
    timings['export'] = time.time() - t

    t = stage(5, 'evaluate', f'{o["metrics"]} on {o["metrics_num_gen"]} images per model, cost, latency, images')
    import gan_prune
    models = {'teacher': gan_prune.load_network_pkl(o['teacher'])['G_ema'],
              'pruned': gan_prune.load_network_pkl(pruned_pkl)['G_ema'],
              'student': gan_prune.load_network_pkl(student_pkl)['G_ema']}
    from gan_prune.generate import parse_seeds
    seeds = parse_seeds(o['seeds'])
    write_comparison({MODEL_LABELS[name]: G for name, G in models.items()}, seeds,
                     os.path.join(outdir, 'comparison.png'))
    rows = evaluate_models(models, data, o, log)
    timings['evaluate'] = time.time() - t
    timings['total'] = time.time() - started

    results = dict(models=rows, run_dir=os.path.relpath(run_dir, outdir), snapshot=os.path.basename(snapshot),
                   options=o, seconds=timings, pruning_report=result.report, rate=result.data['pruning']['rate'],
                   machine=machine_description())
    atomic_write(os.path.join(outdir, 'results.json'), lambda f: json.dump(results, f, indent=2, default=str),
                 binary=False)
    atomic_write(os.path.join(outdir, 'results.md'), lambda f: f.write(results_markdown(results)), binary=False)
    plot_results(rows, os.path.join(run_dir, 'stats.jsonl'), os.path.join(outdir, 'results.png'))
    log('\n' + results_table(rows))
    log(f'\nDone in {timings["total"] / 60:.1f} min. Look at {os.path.join(outdir, "comparison.png")} (rows: '
        f'{", ".join(MODEL_LABELS.values())}; same seeds), {os.path.join(outdir, "results.md")} and '
        f'{os.path.join(outdir, "results.png")}.')
    return results


def write_demo_data(directory: str, num: int, log: Callable[[str], None]) -> str:
    """The demo dataset zip (deterministic; reused when it is already there)."""
    from gan_prune.demo.faces import write_faces_zip
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f'faces32-{num}.zip')
    if os.path.exists(path):
        log(f'reusing {path}')
    else:
        write_faces_zip(path, num, 0, 32)
        log(f'wrote {path}')
    return path


def export_generator(snapshot_pkl: str, out: str, pruned_pkl: str | None = None) -> None:
    """A compact pickle of a training snapshot: its G_ema as G and G_ema (stored once), its D, the data kwargs,
    and the pruning record of `pruned_pkl` when given."""
    import gan_prune
    snap = gan_prune.load_network_pkl(snapshot_pkl)
    pruning = gan_prune.load_network_pkl(pruned_pkl).get('pruning') if pruned_pkl else None
    G = snap['G_ema']
    data = dict(G=G, G_ema=G, D=snap['D'], training_set_kwargs=snap.get('training_set_kwargs'), augment_pipe=None)
    if pruning is not None:
        data['pruning'] = pruning
    gan_prune.save_network_pkl(data, out)


def write_comparison(rows: dict[str, torch.nn.Module], seeds: list[int], path: str) -> None:
    """One row per generator (key: its label), one column per seed (the seeds of gan-prune generate), enlarged."""
    import PIL.Image
    import PIL.ImageDraw
    from gan_prune.generate import render_seeds
    strips = []
    for G in rows.values():
        imgs = [img for _, img in render_seeds(G.cpu(), seeds, noise_mode='const')]
        strips.append(np.concatenate(imgs, axis=1))
    grid = np.concatenate(strips, axis=0)
    h = grid.shape[0] // len(strips) * TILE_SCALE
    image = PIL.Image.fromarray(grid).resize((grid.shape[1] * TILE_SCALE, grid.shape[0] * TILE_SCALE),
                                             PIL.Image.Resampling.NEAREST)
    label_w = 230
    canvas = PIL.Image.new('RGB', (image.width + label_w, image.height), 'white')
    canvas.paste(image, (label_w, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    font = _font(16)
    for i, label in enumerate(rows):
        draw.text((8, i * h + h // 2 - 8), label, fill='black', font=font)
    atomic_write(path, lambda f: canvas.save(f, format='PNG'))


def _font(size: int):
    import PIL.ImageFont
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return PIL.ImageFont.load_default()


def evaluate_models(models: dict[str, torch.nn.Module], data: str, o: dict,
                    log: Callable[[str], None]) -> list[dict]:
    """Metrics against the data and the teacher, parameters, MACs and CPU latency of each model."""
    from gan_prune.core.bench import render
    from gan_prune.core.device import resolve_device
    from gan_prune.metrics.compute import compute_metrics
    from gan_prune.metrics.detectors import build_detector
    from gan_prune.generator.cost import generator_cost
    latency = cpu_latencies_ms(models)
    device = resolve_device(o['device'])
    detector = build_detector('effnet-lite0', device=device)
    teacher = models['teacher'].to(device)
    teacher_images = render(teacher, SAME_LATENTS, seed=0)  # rendered once, compared with every other model's
    rows = []
    for name, G in models.items():
        G = G.to(device)
        log(f'{MODEL_LABELS[name]}:')
        samples: dict = {}  # G's images go through the detector once for both references
        vs_data = compute_metrics(G, o['metrics'], data=data, detector=detector, num_gen=int(o['metrics_num_gen']),
                                  num_real=int(o['metrics_num_gen']), device=device, progress=True, log=log,
                                  gen_cache=samples)
        vs_teacher = {}
        if name != 'teacher' and o['metrics_vs_teacher']:
            vs_teacher = compute_metrics(G, o['metrics'], ref_G=teacher, detector=detector,
                                         num_gen=int(o['metrics_num_gen']), device=device, progress=True, log=log,
                                         gen_cache=samples)
        cost = generator_cost(G)
        same_z = (None if name == 'teacher'
                  else same_latent_distance(render(G, SAME_LATENTS, seed=0), teacher_images))
        rows.append(dict(model=name, label=MODEL_LABELS[name], vs_data=vs_data, vs_teacher=vs_teacher,
                         same_z_l1=same_z, params=cost.total_params, macs=cost.total_macs,
                         latency_ms=latency[name]))
    return rows


def same_latent_distance(images: torch.Tensor, teacher_images: torch.Tensor) -> float:
    """Mean absolute pixel difference (0-255) between a model's and the teacher's float images in [-1, 1] of the
    same latents (gan_prune.core.bench.render): whether each face is the teacher's own (what comparison.png
    shows), which FD, a distance between distributions, does not measure."""
    return float((images - teacher_images).abs().mean()) * 127.5


def cpu_latencies_ms(models: dict[str, torch.nn.Module], batch: int = 4, rounds: int = 21) -> dict[str, float]:
    """Median 1-thread CPU milliseconds of G(z, c) on `batch` images for each model.

    Process CPU time with one thread is steadier than wall time on a busy machine; the models take turns in
    every round, so a slow spell of the machine does not fall on one model only.
    """
    from gan_prune.runtime.latency import generator_latency
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: dict[str, list[float]] = {name: [] for name in models}
    try:
        for G in models.values():  # warm-up
            generator_latency(G.cpu(), batch=batch, repeats=1, warmup=2)
        for _ in range(rounds):
            for name, G in models.items():
                runs[name] += generator_latency(G, batch=batch, repeats=1, warmup=0)['cpu_ms']
    finally:
        torch.set_num_threads(threads)
    return {name: float(np.median(r)) for name, r in runs.items()}


def _metric_columns(rows: list[dict]) -> list[str]:
    return list(rows[0]['vs_data'])


def results_table(rows: list[dict]) -> str:
    """Markdown table: one row per model."""
    from gan_prune.metrics.compute import display_name
    cols = _metric_columns(rows)
    teacher = rows[0]
    vs_teacher = any(r['vs_teacher'] for r in rows)
    head = (['model'] + [f'{display_name(c)} vs data' for c in cols]
            + ([f'{display_name(c)} vs teacher' for c in cols] if vs_teacher else [])
            + ['pixel L1 to teacher, same z', 'params', 'MACs/img', 'MACs vs teacher', 'CPU ms (batch 4, 1 thread)',
               'speed-up'])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [r['label']] + [_fmt(r['vs_data'].get(c)) for c in cols]
        cells += [_fmt(r['vs_teacher'].get(c)) for c in cols] if vs_teacher else []
        cells += [_fmt(r.get('same_z_l1')), f'{r["params"] / 1e3:.0f} k', f'{r["macs"] / 1e6:.1f} M',
                  f'{teacher["macs"] / r["macs"]:.1f}x',
                  f'{r["latency_ms"]:.1f}', f'{teacher["latency_ms"] / r["latency_ms"]:.1f}x']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _fmt(value) -> str:
    if value is None:
        return '-'
    return f'{value:.4f}' if abs(value) < 1 else f'{value:.2f}'


def results_markdown(results: dict) -> str:
    o = results['options']
    secs = results['seconds']
    return '\n'.join([
        '# gan-prune demo results', '',
        f'Teacher `{o["teacher"]}`, pruned to a FLOPs rate of {results["rate"]:.2%} (asked for {o["rate"]:.2%}; '
        f'the nearest uniform channel configuration; {o["criterion"]}, mask '
        f'`{o["mask"]}`), then NICKEL & DiME for {o["kimg"]:g} kimg at batch {o["batch"]} (DiME `{o["dime"]}`, '
        f'NICKEL weight {o["nickel_weight"]:g}). Metrics on {o["metrics_num_gen"]} generated images per model with '
        'the bundled EfficientNet-Lite0 detector (not Inception: the numbers are not comparable with published '
        'FIDs); lower is better. Pixel L1 to teacher, same z: the mean absolute difference (0-255) between the '
        f'model\'s and the teacher\'s images of the same {SAME_LATENTS} latents, i.e. how much each face is the '
        'teacher\'s own (FD compares distributions only). CPU latency: median process CPU time of 21 calls of '
        'G(z, c), batch 4, fp32, 1 thread, the models taking turns. At 32 px and batch 4 fixed per-layer costs '
        'dominate, so the speed-up is far below the MAC ratio; see docs/benchmarks.md for 256 px.', '',
        results_table(results['models']), '',
        f'Images: comparison.png (rows: {", ".join(MODEL_LABELS.values())}; same seeds {o["seeds"]}). '
        f'Plot: results.png. Run directory: {results["run_dir"]}.', '',
        'Time: ' + ', '.join(f'{k} {v:.0f} s' for k, v in secs.items()) + f'. Machine: {results["machine"]}.', '',
        '```', results['pruning_report'], '```', '',
    ])


def plot_results(rows: list[dict], stats_jsonl: str, path: str) -> None:
    """Left: metric vs MACs per model. Right: the student's training losses over kimg."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gan_prune.distill.rundir import read_stats
    from gan_prune.metrics.compute import display_name
    key = _metric_columns(rows)[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        ax1.scatter(r['macs'] / 1e6, r['vs_data'][key], s=40)
        ax1.annotate(r['label'], (r['macs'] / 1e6, r['vs_data'][key]), textcoords='offset points', xytext=(5, 5),
                     fontsize=8)
    ax1.set_xscale('log')
    ax1.set_xlabel('MACs per image (millions, log scale)')
    ax1.set_ylabel(f'{display_name(key)} vs data (lower is better)')
    ax1.set_title('quality vs cost')
    stats = read_stats(stats_jsonl) if os.path.exists(stats_jsonl) else []
    kimg = [s['Progress/kimg']['mean'] for s in stats]
    for name, label in (('Loss/G/main', 'G total'), ('Loss/G/dime', 'DiME'), ('Loss/DS/nickel', 'NICKEL'),
                        ('Loss/DS/main', 'student D total')):
        values = [s[name]['mean'] if name in s else np.nan for s in stats]
        if stats and not all(np.isnan(values)):
            ax2.plot(kimg, values, marker='.', label=label)
    ax2.set_xlabel('kimg')
    ax2.set_ylabel('loss')
    ax2.set_title('student training')
    if ax2.lines:
        ax2.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG atomically and release it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100))
    finally:
        plt.close(fig)
