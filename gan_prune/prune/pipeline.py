"""`prune()`: teacher pickle in, slim student pickle out (method.md sections 2-3).

1. load the teacher snapshot (G, D, G_ema);
2. solve the channel configuration for the requested rate / ratio / per-block channels (cheap, so impossible
   requests fail before any scoring);
3. score every feature map of G_ema with the chosen criterion;
4. keep the highest-scoring channels, slice G and G_ema with the same indices into SlimGenerators;
5. write a normal snapshot (G, G_ema, the teacher's D, training_set_kwargs, augment_pipe) plus a `pruning`
   entry with plain data: criterion, rates, ratio, channels, kept indices, scores, source checksum.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gan_prune import defaults
from gan_prune.core.device import resolve_device
from gan_prune.core.fingerprint import file_sha256
from gan_prune.errors import GanPruneError
from gan_prune.nets.cost import generator_cost
from gan_prune.prune.importance import IMPORTANCE, GradientImportance, L1OutImportance, build_importance, keep_indices
from gan_prune.prune.masks import build_mask
from gan_prune.prune.solver import ChannelPlan, format_plan, net_shape, solve_channels
from gan_prune.prune.surgery import slice_generator

_STANDARD_KEYS = ('G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe', 'pruning')


@dataclass
class PruneResult:
    out: str | None
    data: dict                 # the snapshot dict that was written
    plan: ChannelPlan
    report: str                # channel table, params/MACs before and after, achieved rate
    seconds: float


def source_checksum(src: str) -> str | None:
    """sha256 of the pickle file (local paths and file:// URLs); None for built-in and remote sources."""
    path = src[len('file://'):] if src.startswith('file://') else src
    if src.startswith('builtin:') or '://' in path or not os.path.isfile(path):
        return None
    return file_sha256(path)


def prune(src: str, out: str | None, *, rate: float | None = None, ratio: float | None = None,
          channels: dict[int, int] | None = None, criterion: str = defaults.PRUNE['criterion'],
          mask: str | None = defaults.PRUNE['mask'], parser_weights: str | None = None,
          samples: int = defaults.PRUNE['samples'], batch: int = defaults.PRUNE['batch'],
          seed: int = defaults.PRUNE['seed'], noise_prob: float = defaults.PRUNE['noise_prob'],
          micro_batch: int = defaults.PRUNE['micro_batch'],
          rate_convention: str = defaults.PRUNE['rate_convention'], device: str = defaults.PRUNE['device'],
          trust: bool = False, progress: bool = False, log=print) -> PruneResult:
    """Prune the generator in pickle `src` and write the student snapshot to `out` (None: do not write).

    Exactly one of `rate` (FLOPs compression rate, solved for) and `ratio` (uniform channel ratio) may be given;
    `channels` ({resolution: count}) pins whole blocks. With none of them, nothing is removed.
    """
    from gan_prune import load_network_pkl, save_network_pkl
    started = time.perf_counter()
    log = log or (lambda *_: None)
    if criterion not in IMPORTANCE:
        raise GanPruneError(f'unknown --criterion {criterion!r}; choose one of: {", ".join(IMPORTANCE)}')
    if out is not None and os.path.isdir(out):
        raise GanPruneError(f'--out {out} is a directory; give the path of the .pkl file to write')

    data = load_network_pkl(src, trust=trust)
    teacher = data.get('G_ema')
    if teacher is None:
        raise GanPruneError(f'{src} holds no G_ema; prune needs a StyleGAN2-ADA network snapshot')
    plan = solve_channels(net_shape(teacher), rate=rate, ratio=ratio, overrides=channels, convention=rate_convention)

    cls = IMPORTANCE[criterion]
    mask_provider = None
    if issubclass(cls, GradientImportance) and not issubclass(cls, L1OutImportance):
        mask_provider = build_mask(mask, parser_weights, notice=log, trust=trust)
    elif (mask or 'auto') != 'auto' or parser_weights:
        log(f'note: --criterion {criterion} does not use a mask; --mask/--parser-weights are ignored')
    options = {'micro_batch': micro_batch} if issubclass(cls, GradientImportance) else {}
    importance = build_importance(criterion, mask=mask_provider, noise_prob=noise_prob, **options)
    dev = resolve_device(device)
    scores = importance.scores(teacher, samples=samples, batch=batch, seed=seed, device=dev, progress=progress)
    kept = {name: keep_indices(scores[name], plan.channels[name]) for name in plan.channels}

    student_ema = slice_generator(teacher, kept)
    train_G = data.get('G')
    student = slice_generator(train_G, kept) if train_G is not None else None

    teacher_cost = generator_cost(teacher, rate_convention)
    student_cost = generator_cost(student_ema, rate_convention)
    report = format_plan(plan, teacher_cost, student_cost)

    pruning = dict(
        criterion=criterion,
        importance=importance.describe(),
        rate=float(1 - student_cost.total_macs / teacher_cost.total_macs),
        target_rate=None if rate is None else float(rate),
        ratio=plan.ratio,
        rate_convention=rate_convention,
        channels=dict(plan.channels),
        teacher_channels=dict(plan.teacher_channels),
        block_overrides={int(k): int(v) for k, v in (channels or {}).items()},
        teacher_macs=int(teacher_cost.total_macs), student_macs=int(student_cost.total_macs),
        teacher_params=int(teacher_cost.total_params), student_params=int(student_cost.total_params),
        kept={name: [int(i) for i in idx] for name, idx in kept.items()},
        scores={name: [float(v) for v in s] for name, s in scores.items()},
        samples=int(samples) if importance.needs_samples else 0, batch=int(batch), seed=int(seed),
        source=str(src), source_sha256=source_checksum(src),
    )
    snapshot = dict(G=student if student is not None else student_ema, G_ema=student_ema, D=data.get('D'),
                    training_set_kwargs=data.get('training_set_kwargs'), augment_pipe=data.get('augment_pipe'),
                    pruning=pruning)
    snapshot.update({k: v for k, v in data.items() if k not in _STANDARD_KEYS})
    if out is not None:
        save_network_pkl(snapshot, out)
    return PruneResult(out=out, data=snapshot, plan=plan, report=report, seconds=time.perf_counter() - started)
