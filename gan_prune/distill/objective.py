"""The objective of a distillation run: the adversarial game plus the KD terms of the `--kd` preset, built from
the KD-term registry (gan_prune.distill.terms) for the networks a trainer holds.

    env = TermEnv(G_t=nets.G_t, D_s=nets.D_s, device=device, trust=opts['trust'],
                  teacher_stats=lambda: teacher_stats_path(opts, run_dir, nets.G_t, device))
    loss = build_objective(opts, nets, env)

The trainer calls this once, in its setup; nothing here holds state of its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gan_prune.distill.losses import DistillLoss
from gan_prune.distill.terms import TermEnv, build_terms

TEACHER_STATS_FILE = 'teacher_stats.npz'


@dataclass(frozen=True)
class GameNetworks:
    """The networks of the adversarial game, on the training device: the student G (trained), the teacher G
    (frozen), the student D (trained) and the teacher D (trained; None when it does not play)."""
    G_s: nn.Module
    G_t: nn.Module
    D_s: nn.Module
    D_t: nn.Module | None


def build_objective(opts: dict, nets: GameNetworks, env: TermEnv,
                    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DistillLoss:
    """The DistillLoss of the resolved distill options `opts`: the KD terms of the `kd` preset (those switched on
    by their options) and the regularisers. `all_reduce_mean` averages the path-length mean over processes
    (None in a single process)."""
    from gan_prune.distill.presets import get_preset
    terms = build_terms(get_preset(str(opts['kd'])).terms, opts, env)
    loss = DistillLoss(nets.G_s, nets.G_t, nets.D_s, nets.D_t, terms=terms,
                       r1_gamma=opts['gamma'], pl_weight=opts['pl_weight'], pl_batch_shrink=opts['pl_batch_shrink'],
                       pl_decay=opts['pl_decay'], style_mixing=opts['style_mixing'],
                       force_fp32=env.device.type != 'cuda', shared_noise=opts['kd_noise'] == 'shared',
                       all_reduce_mean=all_reduce_mean)
    loss.path_length.to(env.device)
    return loss


def teacher_stats_path(opts: dict, run_dir: str, G_t: nn.Module, device: torch.device, *, compute: bool = True,
                       log: Callable[[str], None] = print) -> str:
    """The DiME teacher statistics of the run: --dime-stats, or the run directory's file, computed first when
    it does not exist and `compute` is set (the main process computes, the others wait at a barrier)."""
    stats = opts.get('dime_stats')
    if stats:
        return str(stats)
    path = os.path.join(run_dir, TEACHER_STATS_FILE)
    if compute and not os.path.exists(path):
        compute_teacher_stats(opts, G_t, device, path, log)
    return path


def compute_teacher_stats(opts: dict, G_t: nn.Module, device: torch.device, path: str,
                          log: Callable[[str], None] = print) -> None:
    """The embedders' statistics of `opts['dime_stats_samples']` teacher samples, written to `path`. Draws
    from its own seed and leaves the caller's random state as it was."""
    from gan_prune.distill.dime import DIME_ESTIMATORS, parse_dime_spec, resolve_weight_files
    from gan_prune.distill.embedders import build_embedder
    from gan_prune.distill.teacher_stats import compute_teacher_stats as compute_stats
    names = [n for n, _ in parse_dime_spec(opts['dime'])]
    files = resolve_weight_files(names, opts['embed_weights'] or None)
    embedders = [build_embedder(n, weights=files.get(n), trust=bool(opts['trust'])) for n in names]
    samples = int(opts['dime_stats_samples'])
    needs_bank = DIME_ESTIMATORS.info(opts['dime_estimator'])['needs_bank']
    log(f'Teacher statistics for DiME: {samples} samples through {", ".join(names)} -> {path}')
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        compute_stats(G_t, embedders, path, samples=samples, batch=min(32, samples), seed=int(opts['seed']),
                      device=device, source=str(opts['teacher']), spec=opts['dime'],
                      bank_size=samples if needs_bank else 0, progress=True)
    G_t.eval().requires_grad_(False)
