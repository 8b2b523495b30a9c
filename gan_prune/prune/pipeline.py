"""`prune()`: teacher pickle in, slim student pickle out (method.md sections 2-3).

1. load the teacher snapshot (G, D, G_ema);
2. solve the channel configuration for the requested rate / ratio / per-block channels (cheap, so impossible
   requests fail before any scoring);
3. score every feature map of G_ema with the chosen criterion (what it needs, a mask, samples, gradients, comes
   from the facts it declares in the CRITERIA registry);
4. keep the highest-scoring channels, slice G and G_ema with the same indices into SlimGenerators, with the
   toRGB gain chosen by `torgb_gain`;
5. write a normal snapshot (G, G_ema, the teacher's D, training_set_kwargs, augment_pipe) plus a `pruning`
   entry with plain data: criterion, rates, ratio, channels, toRGB gain, kept indices, scores, source checksum.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gan_prune import defaults
from gan_prune.core.device import resolve_device
from gan_prune.core.fingerprint import file_sha256
from gan_prune.errors import GanPruneError
from gan_prune.generator.cost import generator_cost
from gan_prune.prune.importance import CRITERIA, Importance, keep_indices
from gan_prune.prune.masks import MASKS, PARSER_WEIGHTS_FILE, build_mask, missing_mask_message, resolve_mask_spec
from gan_prune.prune.solver import ChannelPlan, format_plan, net_shape, solve_channels
from gan_prune.prune.surgery import TORGB_GAINS, slice_generator

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
          samples: int | None = defaults.PRUNE['samples'], batch: int | None = defaults.PRUNE['batch'],
          seed: int = defaults.PRUNE['seed'], noise_prob: float = defaults.PRUNE['noise_prob'],
          micro_batch: int = defaults.PRUNE['micro_batch'], directions: int = defaults.PRUNE['directions'],
          strength: float = defaults.PRUNE['strength'], pca_samples: int = defaults.PRUNE['pca_samples'],
          torgb_gain: str = defaults.PRUNE['torgb_gain'],
          rate_convention: str = defaults.PRUNE['rate_convention'], device: str = defaults.PRUNE['device'],
          trust: bool = False, progress: bool = False, log=print) -> PruneResult:
    """Prune the generator in pickle `src` and write the student snapshot to `out` (None: do not write).

    Exactly one of `rate` (FLOPs compression rate, solved for) and `ratio` (uniform channel ratio) may be given;
    `channels` ({resolution: count}) pins whole blocks. With none of them, nothing is removed. `samples` and
    `batch` left at None take the criterion's defaults.
    """
    from gan_prune import load_network_pkl, save_network_pkl
    started = time.perf_counter()
    log = log or (lambda *_: None)
    facts = CRITERIA.info(criterion)
    samples = int(samples if samples is not None else facts.get('samples', 0))
    batch = int(batch if batch is not None else facts.get('batch', 1))
    if out is not None and os.path.isdir(out):
        raise GanPruneError(f'--out {out} is a directory; give the path of the .pkl file to write')
    if torgb_gain not in TORGB_GAINS:
        raise GanPruneError(f'--torgb-gain {torgb_gain!r} is unknown; choose one of {", ".join(TORGB_GAINS)}')
    options = dict(noise_prob=noise_prob, micro_batch=micro_batch, directions=directions, strength=strength,
                   pca_samples=pca_samples)
    if facts['needs_mask']:
        options['mask'] = _criterion_mask(criterion, mask, parser_weights, trust, log)
    elif (mask or 'auto') != 'auto' or parser_weights:
        log(f'note: --criterion {criterion} does not use a mask; --mask/--parser-weights are ignored')
    importance: Importance = CRITERIA.build(criterion, **{k: v for k, v in options.items() if k in facts['options']})

    data = load_network_pkl(src, trust=trust)
    teacher = data.get('G_ema')
    if teacher is None:
        raise GanPruneError(f'{src} holds no G_ema; prune needs a StyleGAN2-ADA network snapshot')
    plan = solve_channels(net_shape(teacher), rate=rate, ratio=ratio, overrides=channels, convention=rate_convention)

    dev = resolve_device(device)
    scores = importance.scores(teacher, samples=samples, batch=batch, seed=seed, device=dev, progress=progress)
    kept = {name: keep_indices(scores[name], plan.channels[name]) for name in plan.channels}

    student_ema = slice_generator(teacher, kept, torgb_gain)
    train_G = data.get('G')
    student = slice_generator(train_G, kept, torgb_gain) if train_G is not None else None

    teacher_cost = generator_cost(teacher, rate_convention)
    student_cost = generator_cost(student_ema, rate_convention)
    report = format_plan(plan, teacher_cost, student_cost) + '\n' + _TORGB_TEXT[torgb_gain]

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
        torgb_gain=torgb_gain,
        teacher_macs=int(teacher_cost.total_macs), student_macs=int(student_cost.total_macs),
        teacher_params=int(teacher_cost.total_params), student_params=int(student_cost.total_params),
        kept={name: [int(i) for i in idx] for name, idx in kept.items()},
        scores={name: [float(v) for v in s] for name, s in scores.items()},
        samples=samples if facts['needs_samples'] else 0, batch=batch, seed=int(seed),
        source=str(src), source_sha256=source_checksum(src),
    )
    snapshot = dict(G=student if student is not None else student_ema, G_ema=student_ema, D=data.get('D'),
                    training_set_kwargs=data.get('training_set_kwargs'), augment_pipe=data.get('augment_pipe'),
                    pruning=pruning)
    snapshot.update({k: v for k, v in data.items() if k not in _STANDARD_KEYS})
    if out is not None:
        save_network_pkl(snapshot, out)
    return PruneResult(out=out, data=snapshot, plan=plan, report=report, seconds=time.perf_counter() - started)


_TORGB_TEXT = {
    'teacher': "toRGB gain: 'teacher' (the teacher's fan-in; the kept weights compute what they did in the teacher)",
    'pruned': "toRGB gain: 'pruned' (rebuilt with the pruned fan-in, as the authors' release; toRGB outputs grow "
              "by sqrt(teacher/student channels))",
}


def _criterion_mask(criterion: str, mask: str | None, parser_weights: str | None, trust: bool, log):
    """The content mask a criterion that needs one scores with; never a silent all-ones mask."""
    resolved = resolve_mask_spec(mask, parser_weights)
    if resolved == 'auto':
        raise GanPruneError(missing_mask_message(f'--criterion {criterion}'))
    provider = build_mask(resolved, parser_weights, trust=trust)
    if resolved in MASKS and not MASKS.info(resolved)['content']:
        log(f'mask: none: --criterion {criterion} scores every pixel (no content mask), which is the '
            f'gradient-unmasked score; pass --parser-weights {PARSER_WEIGHTS_FILE} for the content-aware one')
    else:
        log(f'mask: {resolved}')
    return provider
