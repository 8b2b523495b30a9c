"""Teacher embedding statistics for the DiME loss: mu1 = E[phi(G^T(z))], mu2 = E[phi(G^T(z))^2] per embedder.

Teacher samples come from G_ema with truncation 1. Batch b (0-based) of a run with seed S draws its latents
(and, for conditional nets, uniformly random class labels) from a torch.Generator seeded with
`batch_seed(S, b)`, and its 'random' noise from the global torch RNG seeded with the same value, so every batch
is reproducible on its own. Sums and sums of squares are accumulated in float64; optionally the first
`bank_size` embeddings are kept (float32) for the kernel-MMD estimator.

The run is resumable: every `checkpoint_every` batches the running state (count, sums, bank, next batch index and
the options that produced it) is written atomically to `<out>.partial.npz`. Rerunning with the same options
continues from there and gives exactly the result of an uninterrupted run. The final .npz is written atomically
and the partial file is then removed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from gan_prune.defaults import EMBED
from gan_prune.distill.embedders import Embedder
from gan_prune.core.device import resolve_device  # noqa: F401  (part of this module's API)
from gan_prune.core.fingerprint import module_fingerprint
from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write

FORMAT = 'gan_prune.teacher_stats.v1'
SEED_RULE = 'batch b uses torch seed numpy.random.SeedSequence([seed, b]).generate_state(1)[0]'


@dataclass
class EmbeddingStats:
    """Statistics of one embedder over `count` teacher samples."""
    name: str
    count: int
    mu1: np.ndarray               # [dim] float64
    mu2: np.ndarray               # [dim] float64
    bank: np.ndarray | None = None  # [<= bank_size, dim] float32

    @property
    def dim(self) -> int:
        return int(self.mu1.shape[0])


@dataclass
class TeacherStats:
    """Everything a teacher-stats file holds: per-embedder statistics plus how they were made."""
    embeddings: dict[str, EmbeddingStats]
    normalize: bool
    meta: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.embeddings)

    def get(self, name: str) -> EmbeddingStats | None:
        return self.embeddings.get(name)


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of batch `batch_index`: independent streams per (seed, batch), no overlap between nearby seeds."""
    return int(np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(1)[0])


def batch_sizes(samples: int, batch: int) -> list[int]:
    return [min(batch, samples - start) for start in range(0, samples, batch)]


def teacher_batch(G: torch.nn.Module, seed: int, batch_index: int, size: int, device: torch.device,
                  noise_mode: str = 'random', truncation_psi: float = 1.0) -> torch.Tensor:
    """The teacher images of batch `batch_index` (float32 NCHW, nominal range [-1, 1]), deterministic."""
    s = batch_seed(seed, batch_index)
    gen = torch.Generator().manual_seed(s)
    z = torch.randn([size, G.z_dim], generator=gen)
    c = torch.zeros([size, G.c_dim])
    if G.c_dim > 0:
        c[torch.arange(size), torch.randint(G.c_dim, [size], generator=gen)] = 1
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's RNG state untouched
        torch.manual_seed(s)
        with torch.no_grad():
            img = G(z.to(device), c.to(device), truncation_psi=truncation_psi, noise_mode=noise_mode, force_fp32=True)
    return img.float()


def partial_path(out: str) -> str:
    return os.fspath(out) + '.partial.npz'


def atomic_savez(path: str, arrays: dict) -> None:
    """np.savez to a temp file in the same directory, then os.replace (readers never see a half-written file)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def run_options(G: torch.nn.Module, embedders: Sequence[Embedder], samples: int, batch: int, seed: int,
                noise_mode: str, truncation_psi: float, bank_size: int, source: str) -> dict:
    """The options that determine the result; a partial state is resumed only if they are equal."""
    return dict(
        embed_names=[e.name for e in embedders],
        embed_dims=[e.dim for e in embedders],
        normalize=[bool(e.normalize) for e in embedders],
        samples=int(samples), batch=int(batch), seed=int(seed), noise_mode=noise_mode,
        truncation_psi=float(truncation_psi), bank_size=int(bank_size), source=str(source),
        generator=dict(z_dim=int(G.z_dim), c_dim=int(G.c_dim), img_resolution=int(G.img_resolution),
                       img_channels=int(G.img_channels), checksum=module_fingerprint(G)),
    )


class _Accumulator:
    """Running float64 sums (and the embedding bank) of one embedder."""

    def __init__(self, dim: int, bank_size: int):
        self.total = np.zeros(dim, np.float64)
        self.total_sq = np.zeros(dim, np.float64)
        self.bank = np.zeros((0, dim), np.float32)
        self.bank_size = bank_size

    def add(self, emb: torch.Tensor) -> None:
        e = emb.detach().to('cpu', torch.float64).numpy()
        self.total += e.sum(0)
        self.total_sq += np.square(e).sum(0)
        room = self.bank_size - self.bank.shape[0]
        if room > 0:
            self.bank = np.concatenate([self.bank, e[:room].astype(np.float32)])


def _save_partial(path: str, options: dict, next_batch: int, count: int, accs: list[_Accumulator]) -> None:
    arrays = dict(format=np.array(FORMAT + '.partial'), options=np.array(json.dumps(options, sort_keys=True)),
                  next_batch=np.array(next_batch, np.int64), count=np.array(count, np.int64))
    for i, acc in enumerate(accs):
        arrays[f'sum.{i}'], arrays[f'sumsq.{i}'], arrays[f'bank.{i}'] = acc.total, acc.total_sq, acc.bank
    atomic_savez(path, arrays)


def _load_partial(path: str, options: dict, accs: list[_Accumulator]) -> tuple[int, int]:
    """Restore accumulators from a partial state; returns (next_batch, count)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f['format']) != FORMAT + '.partial':
                raise ValueError('not a teacher-stats partial state')
            saved = json.loads(str(f['options']))
            if saved != options:
                differing = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
                raise GanPruneError(f'{path} was made with different options ({", ".join(differing)} differ); '
                                    'rerun with the same options to resume, or delete it to start over')
            for i, acc in enumerate(accs):
                acc.total, acc.total_sq = f[f'sum.{i}'].copy(), f[f'sumsq.{i}'].copy()
                acc.bank = f[f'bank.{i}'].copy()
            return int(f['next_batch']), int(f['count'])
    except GanPruneError:
        raise
    except Exception as e:
        raise GanPruneError(f'cannot resume from {path} ({type(e).__name__}: {e}); delete it to start over') from e


def compute_teacher_stats(G: torch.nn.Module, embedders: Sequence[Embedder], out: str, samples: int,
                          batch: int = EMBED['batch'], seed: int = EMBED['seed'],
                          noise_mode: str = EMBED['noise_mode'], truncation_psi: float = 1.0,
                          bank_size: int = EMBED['bank_size'], checkpoint_every: int = EMBED['checkpoint_every'],
                          device: torch.device | str = 'cpu',
                          source: str = '', spec: str = '', progress: bool = True,
                          max_batches: int | None = None) -> TeacherStats | None:
    """Stream `samples` teacher images through every embedder and write the statistics to `out` (.npz).

    Resumes from `<out>.partial.npz` if it exists and was made with the same options. `max_batches` stops after
    that many batches in this call (state saved, returns None): a time-sliced run continues on the next call.
    """
    from tqdm import tqdm
    if samples < 1 or batch < 1 or checkpoint_every < 1:
        raise GanPruneError(f'--samples, --batch and --checkpoint-every must be >= 1 '
                            f'(got {samples}, {batch}, {checkpoint_every})')
    if noise_mode not in ('random', 'const', 'none'):
        raise GanPruneError(f"noise mode must be 'random', 'const' or 'none', got {noise_mode!r}")
    if not embedders:
        raise GanPruneError('no embedder given; pass --embed SPEC')
    if len({e.normalize for e in embedders}) != 1:
        raise GanPruneError('all embedders of one statistics file must use the same normalize setting')
    device = torch.device(device)
    out = os.fspath(out)
    sizes = batch_sizes(samples, batch)
    options = run_options(G, embedders, samples, batch, seed, noise_mode, truncation_psi, bank_size, source)
    accs = [_Accumulator(e.dim, bank_size) for e in embedders]
    next_batch, count = 0, 0
    state_path = partial_path(out)
    if os.path.exists(state_path):
        next_batch, count = _load_partial(state_path, options, accs)

    G = G.to(device).eval()
    embedders = [e.to(device) for e in embedders]
    done_this_call = 0
    updating = False
    with tqdm(total=len(sizes), initial=next_batch, unit='batch', desc='teacher stats', disable=not progress) as bar:
        try:
            while next_batch < len(sizes):
                if max_batches is not None and done_this_call >= max_batches:
                    _save_partial(state_path, options, next_batch, count, accs)
                    return None
                img = teacher_batch(G, seed, next_batch, sizes[next_batch], device, noise_mode, truncation_psi)
                with torch.no_grad():
                    embeddings = [embedder(img) for embedder in embedders]
                updating = True
                for acc, emb in zip(accs, embeddings):
                    acc.add(emb)
                count += sizes[next_batch]
                next_batch += 1
                updating = False
                done_this_call += 1
                bar.update(1)
                if next_batch % checkpoint_every == 0 and next_batch < len(sizes):
                    _save_partial(state_path, options, next_batch, count, accs)
        except KeyboardInterrupt:
            if not updating and done_this_call > 0:  # keep the finished batches (state is consistent here)
                _save_partial(state_path, options, next_batch, count, accs)
            raise

    stats = TeacherStats(
        embeddings={e.name: EmbeddingStats(e.name, count, acc.total / count, acc.total_sq / count,
                                           acc.bank if bank_size > 0 else None)
                    for e, acc in zip(embedders, accs)},
        normalize=bool(embedders[0].normalize),
        meta=dict(options, spec=spec, count=count, seed_rule=SEED_RULE,
                  batch_seeds=[batch_seed(seed, b) for b in range(len(sizes))]),
    )
    save_teacher_stats(stats, out, accs)
    if os.path.exists(state_path):
        os.remove(state_path)
    return stats


def save_teacher_stats(stats: TeacherStats, out: str, accs: Sequence[_Accumulator] | None = None) -> None:
    """Write `stats` atomically as an .npz readable with numpy alone (no pickled objects)."""
    meta = dict(stats.meta)
    batch_seeds = np.array(meta.pop('batch_seeds', []), np.uint32)
    arrays = dict(format=np.array(FORMAT), embed_names=np.array(stats.names), normalize=np.array(stats.normalize),
                  count=np.array(meta.get('count', 0), np.int64), seed=np.array(meta.get('seed', 0), np.int64),
                  batch_seeds=batch_seeds, source=np.array(str(meta.get('source', ''))),
                  spec=np.array(str(meta.get('spec', ''))), noise_mode=np.array(str(meta.get('noise_mode', ''))),
                  meta=np.array(json.dumps(meta, sort_keys=True)))
    for i, name in enumerate(stats.names):
        entry = stats.embeddings[name]
        arrays[f'mu1.{i}'], arrays[f'mu2.{i}'] = entry.mu1, entry.mu2
        arrays[f'count.{i}'] = np.array(entry.count, np.int64)
        if accs is not None:
            arrays[f'sum.{i}'], arrays[f'sumsq.{i}'] = accs[i].total, accs[i].total_sq
        if entry.bank is not None:
            arrays[f'bank.{i}'] = entry.bank
    atomic_savez(out, arrays)


def load_teacher_stats(path: str) -> TeacherStats:
    """Read a file written by `gan-prune teacher-stats`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GanPruneError(f'teacher statistics file not found: {path}; make it with gan-prune teacher-stats')
    try:
        with np.load(path, allow_pickle=False) as f:
            if 'format' not in f.files or str(f['format']) != FORMAT:
                raise GanPruneError(f'{path} is not a teacher-stats file ({FORMAT}); make it with '
                                    'gan-prune teacher-stats')
            names = [str(n) for n in f['embed_names']]
            embeddings = {}
            for i, name in enumerate(names):
                bank = f[f'bank.{i}'] if f'bank.{i}' in f.files else None
                embeddings[name] = EmbeddingStats(name, int(f[f'count.{i}']), f[f'mu1.{i}'], f[f'mu2.{i}'], bank)
            meta = json.loads(str(f['meta']))
            meta['batch_seeds'] = f['batch_seeds'].tolist()
            return TeacherStats(embeddings, bool(f['normalize']), meta)
    except GanPruneError:
        raise
    except Exception as e:
        raise GanPruneError(f'cannot read teacher statistics {path} ({type(e).__name__}: {e})') from e


def load_teacher_generator(src: str, trust: bool = False) -> torch.nn.Module:
    """G_ema of the pickle (path, URL or builtin:NAME), in eval mode without grad."""
    import gan_prune
    data = gan_prune.load_network_pkl(src, trust=trust)
    G = data.get('G_ema')
    if G is None:
        raise GanPruneError(f'{src} has no G_ema network')
    return G.eval().requires_grad_(False)
