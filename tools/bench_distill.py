"""Benchmark the distillation loop on this machine's CPU; writes section "distill" of docs/benchmarks.md.

For a 32 px student (cut from builtin:tiny32) and a 256 px student (cut from builtin:paper256 at the paper's
r = 0.9, i.e. the 98.92 % rate), it times full training iterations of `gan-prune distill` with every loss
component on, and with each component switched off in turn, so the cost of every component is visible.

Each row is the median wall time of `--steps` iterations after one warm-up iteration (fp32, CPU). sec/kimg
= median step time * 1000 / batch. Regularisers are measured every step (interval 1); at the default lazy
intervals (path length every 4, R1 every 16 iterations) their cost is divided by the interval, which the
"full, lazy intervals" row shows (derived from the measured rows, not timed).

Usage: python tools/bench_distill.py [--steps 3] [--res 32,256] [--threads 1] [--no-write]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from gan_prune.core import bench

BENCH_MD = bench.repo_file(__file__, 'docs', 'benchmarks.md')

SETUPS = {  # resolution -> (teacher built-in, batch, student ratio)
    32: ('tiny32', 8, 0.5),
    256: ('paper256', 4, 0.9),
}
# row name -> option overrides on top of the full objective
VARIANTS = [
    ('full objective (NICKEL + DiME + D^T + R1 + PL)', {}),
    ('without DiME', dict(dime='')),
    ('without NICKEL', dict(nickel_weight=0.0)),
    ('without D^T (G^S vs D^S only)', dict(teacher_d=False)),
    ('without R1', dict(gamma=0.0)),
    ('without path length', dict(pl_weight=0.0)),
    ('adversarial only (--kd none, D^S only, no regularisers)', dict(kd='none', teacher_d=False, gamma=0.0,
                                                                   pl_weight=0.0)),
    ('CAGAN baseline (--kd cagan, effnet-lite0 perceptual)', dict(kd='cagan', cagan_net='effnet-lite0',
                                                                  cagan_mask='none')),
]


def make_networks(teacher_name: str, ratio: float) -> tuple:
    from gan_prune.io.pickles import load_builtin
    from gan_prune.prune.solver import ratio_channels
    from gan_prune.prune.surgery import feature_maps, slice_generator
    teacher = load_builtin(teacher_name)
    G_t, D_t = teacher['G_ema'], teacher['D']
    channels = ratio_channels(feature_maps(G_t), ratio)
    G_s = slice_generator(G_t, {k: torch.arange(v) for k, v in channels.items()})
    return G_t, D_t, G_s


def make_stats(path: str, G_t) -> None:
    """Teacher statistics for effnet-lite0 with zero moments: the loss costs the same whatever the values."""
    from gan_prune.distill.embedders import build_embedder
    from gan_prune.distill.teacher_stats import EmbeddingStats, TeacherStats, save_teacher_stats
    dim = build_embedder('effnet-lite0').dim
    zeros = np.zeros([dim], np.float64)
    save_teacher_stats(TeacherStats({'effnet-lite0': EmbeddingStats('effnet-lite0', 1, zeros, zeros)}, False), path)


def time_variant(nets: tuple, options: dict, steps: int, workdir: str) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process) per training iteration."""
    from gan_prune.distill.collective import Dist
    from gan_prune.distill.options import resolve_options
    from gan_prune.distill.trainer import Networks, Trainer, fresh_discriminator

    G_t, D_t, G_s = nets
    opts = resolve_options(options)
    device = torch.device('cpu')
    trainer = Trainer(opts, workdir, Dist(0, 1, device), device)
    D_s = fresh_discriminator(D_t, 0)
    trainer.setup(networks=Networks(G_t=copy.deepcopy(G_t), G_s=G_s, G_ema=G_s, D_teacher=D_t, D_s=D_s))
    wall, cpu = [], []
    for i in range(steps + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        trainer.train_step()
        if i > 0:  # the first iteration pays one-off costs (allocations, lazy imports)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        trainer.reset_tick_stats()
    trainer.source.close()
    return statistics.median(wall), statistics.median(cpu)


def bench_resolution(res: int, steps: int, workdir: str) -> tuple[list[tuple[str, float, float]], dict]:
    from gan_prune.data.datasets import write_dataset_zip
    teacher_name, batch, ratio = SETUPS[res]
    nets = make_networks(teacher_name, ratio)
    data = os.path.join(workdir, f'data{res}.zip')
    write_dataset_zip(data, np.random.RandomState(0).randint(0, 256, (2 * batch, res, res, 3), dtype=np.uint8))
    stats = os.path.join(workdir, f'stats{res}.npz')
    make_stats(stats, nets[0])
    base = dict(teacher=f'builtin:{teacher_name}', student=f'builtin:{teacher_name}', data=data, batch=batch,
                workers=0, device='cpu', dime='effnet-lite0=15', dime_stats=stats, g_reg_interval=1,
                d_reg_interval=1, outdir=workdir)
    rows = []
    for name, overrides in VARIANTS:
        seconds, cpu = time_variant(nets, dict(base, **overrides), steps, workdir)
        rows.append((name, seconds, cpu))
        print(f'{res} px  {name:<58s} {seconds:8.3f} s/step  {seconds * 1000 / batch:9.1f} s/kimg  '
              f'{cpu * 1000 / batch:9.1f} CPU s/kimg', flush=True)
    info = dict(teacher=teacher_name, batch=batch, ratio=ratio,
                student_params=sum(p.numel() for p in nets[2].parameters()),
                teacher_params=sum(p.numel() for p in nets[0].parameters()))
    return rows, info


def lazy_full(rows: list[tuple[str, float]]) -> float:
    """Full objective with path length every 4 and R1 every 16 iterations, from (name, seconds) rows."""
    t = dict(rows)
    full = t[VARIANTS[0][0]]
    pl_cost = max(full - t['without path length'], 0.0)  # a negative difference is measurement noise
    r1_cost = max(full - t['without R1'], 0.0)
    return full - pl_cost * (1 - 1 / 4) - r1_cost * (1 - 1 / 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=3, help='timed iterations per row (after one warm-up)')
    parser.add_argument('--res', default='32,256', help='comma list of resolutions (32, 256)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (1: steadiest on a shared machine, no thread spin-waits)')
    bench.add_report_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    resolutions = [int(r) for r in args.res.split(',')]
    sections = []
    with tempfile.TemporaryDirectory() as workdir:
        for res in resolutions:
            rows, info = bench_resolution(res, args.steps, workdir)
            batch = info['batch']
            lines = [f'**{res} px**: teacher `builtin:{info["teacher"]}` ({info["teacher_params"] / 1e6:.2f} M params), '
                     f'student cut at r = {info["ratio"]} ({info["student_params"] / 1e6:.3f} M params), batch {batch}.',
                     '', '| configuration | s/iteration | sec/kimg | CPU sec/kimg | CPU vs full |',
                     '|---|---:|---:|---:|---:|']
            full_cpu = rows[0][2]
            for name, seconds, cpu in rows:
                lines.append(f'| {name} | {seconds:.3f} | {seconds * 1000 / batch:.1f} | {cpu * 1000 / batch:.1f} | '
                             f'{cpu / full_cpu:.2f} |')
            lazy = lazy_full([(r[0], r[1]) for r in rows])
            lazy_cpu = lazy_full([(r[0], r[2]) for r in rows])
            lines.append(f'| full objective, lazy intervals (PL / 4, R1 / 16; derived) | {lazy:.3f} | '
                         f'{lazy * 1000 / batch:.1f} | {lazy_cpu * 1000 / batch:.1f} | {lazy_cpu / full_cpu:.2f} |')
            sections.append('\n'.join(lines))
    load = os.getloadavg()[0]
    command = 'python tools/bench_distill.py ' + ' '.join(sys.argv[1:])
    markdown = '\n\n'.join([
        '## Distillation loop throughput (CPU)',
        f'Measured {datetime.date.today().isoformat()} on {bench.machine_line()}. Command: `{command.strip()}`.',
        f'Median of {args.steps} training iterations after one warm-up, fp32. One iteration = G^S step, D^S step, '
        'D^T step (when on) and the EMA update; regularisers measured every iteration (interval 1). DiME uses '
        'effnet-lite0 (224 px input, forward and backward through it every G step); CAGAN uses the same network '
        'as its perceptual distance. sec/kimg is wall time; CPU sec/kimg is the CPU time of the process (all '
        f'threads), which is steadier when the machine is shared (load average {load:.1f} at the end of this run '
        'on 2 cores): compare components with the CPU column.',
        *sections,
    ])
    print(markdown)
    if not args.no_write:
        bench.write_section('distill', markdown, BENCH_MD)


if __name__ == '__main__':
    main()
