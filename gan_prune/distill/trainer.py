"""The trainer: one process's networks, objective, optimisers, data and counters, and the loop over ticks.

One iteration (batch = `batch` images over all processes, split into rounds of `batch_gpu` per process):
  1. G^S step: adversarial against D^S (and D^T) + KD; every `g_reg_interval` iterations an extra
     path-length step (lazy regularisation, loss scaled by the interval);
  2. D^S step: adversarial + NICKEL; every `d_reg_interval` iterations an extra R1 step;
  3. D^T step (unless teacher_d is off): adversarial; lazily R1;
  4. EMA of G^S into G_ema with a half-life of `ema_kimg`.
Each of G^S, D^S, D^T has its own Adam (betas 0, 0.99) with StyleGAN2's lazy-regularisation scaling
lr * c, betas ** c, c = k / (k + 1).

Exact resume: resume.pt (gan_prune.distill.checkpoint, written with every snapshot) holds every weight, optimiser
state, the path-length mean, counters, each process's RNG state and data position. Work done at tick boundaries
never draws random numbers, so a resumed run continues bit for bit where the checkpoint was taken.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from gan_prune import fileio
from gan_prune.core.fingerprint import module_fingerprint as module_checksum  # replica comparison
from gan_prune.distill import checkpoint
from gan_prune.distill import rundir as rd
from gan_prune.distill.collective import Dist
from gan_prune.distill.losses import DistillLoss
from gan_prune.distill.options import resume_run_dir, warm_start_snapshot
from gan_prune.errors import GanPruneError

TEACHER_STATS_FILE = 'teacher_stats.npz'
METRICS_FILE = 'metrics.jsonl'


def batch_layout(batch: int, batch_gpu: int | None, world: int) -> tuple[int, int]:
    """(batch_gpu, rounds): per-process images per round and rounds per step, with batch = batch_gpu*rounds*world."""
    if batch % world:
        raise GanPruneError(f'--batch {batch} is not divisible by the {world} processes; use a multiple of {world}')
    per_process = batch // world
    batch_gpu = per_process if not batch_gpu else int(batch_gpu)
    if batch_gpu < 1 or per_process % batch_gpu:
        raise GanPruneError(f'--batch-gpu {batch_gpu} must divide the per-process batch {per_process}')
    return batch_gpu, per_process // batch_gpu


def lazy_adam(params, lr: float, interval: int | None) -> torch.optim.Adam:
    """Adam with betas (0, 0.99), eps 1e-8; with lazy regularisation every `interval` steps the learning rate
    and betas are scaled by c = interval / (interval + 1) (StyleGAN2, appendix B)."""
    c = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(0.0 ** c, 0.99 ** c), eps=1e-8)


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Per-step EMA decay for a half-life of ema_kimg thousand images (optionally ramped up early on)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """G_ema <- G + beta * (G_ema - G) for parameters; buffers (w_avg, noise) are copied."""
    params = dict(G.named_parameters())
    for name, p_ema in G_ema.named_parameters():
        p_ema.copy_(params[name].detach().lerp(p_ema, beta))
    buffers = dict(G.named_buffers())
    for name, b_ema in G_ema.named_buffers():
        b_ema.copy_(buffers[name])


# What non-finite gradient entries become before an optimiser step (StyleGAN2-ADA's training loop does the same).
NONFINITE_GRAD_REPLACEMENT = dict(nan=0.0, posinf=1e5, neginf=-1e5)


def sanitize_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Replace NaN/inf gradient entries in place (see NONFINITE_GRAD_REPLACEMENT) and return how many there
    were, as a tensor on the gradients' device (no synchronisation). One overflow, e.g. in mixed precision,
    then costs one step instead of the run."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros([])
    count = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).sum()
    for g in grads:
        torch.nan_to_num(g, out=g, **NONFINITE_GRAD_REPLACEMENT)
    return count


@dataclass
class Networks:
    """The networks a run starts from (the trainer trains copies). D_s None: built as --ds-init says."""
    G_t: torch.nn.Module  # the teacher generator (G_ema of the teacher pickle)
    G_s: torch.nn.Module  # the student generator trained
    G_ema: torch.nn.Module  # the student's moving average
    D_teacher: torch.nn.Module  # the teacher's discriminator
    D_s: torch.nn.Module | None = None


class Trainer:
    """Everything one process needs for a run: networks, losses, optimisers, data, counters."""

    def __init__(self, opts: dict, run_dir: str, dist: Dist, device: torch.device, tick_callback=None):
        self.opts, self.run_dir, self.dist, self.device = opts, run_dir, dist, device
        self.rank, self.world = dist.rank, dist.world
        self.tick_callback = tick_callback
        self.is_main = self.rank == 0
        self.resume_dir = resume_run_dir(opts)
        self.batch = int(opts['batch'])
        self.batch_gpu, self.rounds = batch_layout(self.batch, opts.get('batch_gpu'), self.world)
        self.force_fp32 = device.type != 'cuda'
        self.grid = rd.parse_grid(opts['grid'])
        self.g_interval = int(opts['g_reg_interval']) if opts['g_reg_interval'] and opts['pl_weight'] > 0 else None
        self.d_interval = int(opts['d_reg_interval']) if opts['d_reg_interval'] and opts['gamma'] > 0 else None
        self.cur_nimg = self.cur_tick = self.batch_idx = 0
        self.elapsed = 0.0

    # -- setup

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, flush=True)

    def setup(self, networks: Networks | None = None) -> None:
        """Build everything a training step needs. `networks`: use these instead of loading the teacher and
        student pickles (and the warm-start snapshot); the trainer trains copies of them."""
        opts, device = self.opts, self.device
        seed = int(opts['seed'])
        torch.manual_seed(seed * self.world + self.rank)
        np.random.seed((seed * self.world + self.rank) % (1 << 31))
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        from torch_utils.ops import conv2d_gradfix
        conv2d_gradfix.enabled = True

        self._place_networks(networks if networks is not None else self._load_networks())
        self._check_shapes()
        self._setup_data()
        self._setup_losses()
        self.opt_G = lazy_adam(self.G_s.parameters(), opts['lr'], self.g_interval)
        self.opt_D = {'DS': lazy_adam(list(self.D_s.parameters()) + self._nickel_params(), opts['lr'], self.d_interval)}
        if self.D_t is not None:
            self.opt_D['DT'] = lazy_adam(self.D_t.parameters(), opts['lr'], self.d_interval)
        for m in self._trained_modules():
            self.dist.broadcast_module(m)
        self.grid_z = torch.randn([self.grid[0] * self.grid[1], self.G_s.z_dim], generator=torch.Generator().manual_seed(seed))
        self.grid_c = self.source.sample_labels(self.grid_z.shape[0], generator=torch.Generator().manual_seed(seed))
        if self.resume_dir:
            self._load_resume()
        self._start_tick_counters()

    def _load_networks(self) -> Networks:
        """The networks of the teacher and student pickles, or of the warm-start snapshot (`resume` a .pkl)."""
        import gan_prune
        opts = self.opts
        trust = bool(opts.get('trust'))
        teacher = gan_prune.load_network_pkl(opts['teacher'], trust=trust)
        student = gan_prune.load_network_pkl(opts['student'], trust=trust)
        for name, data, key in (('teacher', teacher, 'G_ema'), ('teacher', teacher, 'D'), ('student', student, 'G_ema')):
            if not isinstance(data.get(key), torch.nn.Module):
                raise GanPruneError(f'the {name} pickle {opts[name]} has no {key} network')
        nets = Networks(G_t=teacher['G_ema'], G_s=student['G_ema'], G_ema=student['G_ema'], D_teacher=teacher['D'])
        warm = warm_start_snapshot(opts)
        if warm:  # warm start from a snapshot: its G, G_ema, D (= D^S) and D_teacher replace the initial ones
            snap = gan_prune.load_network_pkl(warm, trust=trust)
            nets = Networks(G_t=nets.G_t, G_s=snap.get('G', nets.G_s), G_ema=snap.get('G_ema', nets.G_s),
                            D_teacher=snap.get('D_teacher', nets.D_teacher), D_s=snap.get('D'))
            self.log(f'Warm start from {warm}')
        return nets

    def _place_networks(self, nets: Networks) -> None:
        """Training copies of the networks on the device, in their modes; D^S from --ds-init unless given."""
        opts, device = self.opts, self.device
        self.G_s = copy.deepcopy(nets.G_s).train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(nets.G_ema).eval().requires_grad_(False).to(device)
        self.G_t = nets.G_t.eval().requires_grad_(False).to(device)
        D_teacher = copy.deepcopy(nets.D_teacher)
        D_s = nets.D_s
        if D_s is None:
            if opts['ds_init'] == 'teacher':
                D_s = copy.deepcopy(D_teacher)
            else:
                D_s = self._fresh_discriminator(D_teacher, int(opts['seed']))
        self.D_s = copy.deepcopy(D_s).train().requires_grad_(False).to(device)
        self.D_t = D_teacher.train().requires_grad_(False).to(device) if opts['teacher_d'] else None
        self.D_teacher_frozen = None if opts['teacher_d'] else D_teacher  # kept for the snapshot
        self.training_set_kwargs = None

    @staticmethod
    def _fresh_discriminator(D_teacher: torch.nn.Module, seed: int) -> torch.nn.Module:
        """A randomly initialised D with the teacher D's architecture (same on every process)."""
        kwargs = getattr(D_teacher, 'init_kwargs', None)
        if kwargs is None:
            raise GanPruneError('the teacher D carries no init_kwargs, so a fresh D^S cannot be built; '
                                'use --ds-init teacher')
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return type(D_teacher)(*getattr(D_teacher, 'init_args', ()), **kwargs)

    def _check_shapes(self) -> None:
        G_s, G_t = self.G_s, self.G_t
        for attr in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'num_ws'):
            if getattr(G_s, attr) != getattr(G_t, attr):
                raise GanPruneError(f'student and teacher differ in {attr} ({getattr(G_s, attr)} vs '
                                    f'{getattr(G_t, attr)}); the student must be pruned from this teacher')
        if self.D_s.img_resolution != G_t.img_resolution:
            raise GanPruneError('the teacher D and G differ in resolution; check the teacher pickle')

    def _setup_data(self) -> None:
        from gan_prune.data.datasets import ImageDataset, RealImageSource, TeacherSampleDataset
        opts = self.opts
        seed = int(opts['seed'])
        if opts.get('data_free'):
            self.source = TeacherSampleDataset(self.G_t, self.batch_gpu, self.device,
                                               seed=seed * self.world + self.rank + 1)
            self.data_desc = 'teacher samples (data-free)'
        else:
            dataset = ImageDataset(opts['data'], resolution=self.G_t.img_resolution, use_labels=self.G_t.c_dim > 0,
                                   xflip=bool(opts['mirror']), random_seed=seed)
            if dataset.num_channels != self.G_t.img_channels:
                raise GanPruneError(f'dataset images have {dataset.num_channels} channels but the generator makes '
                                    f'{self.G_t.img_channels}; convert the dataset')
            if dataset.label_dim != self.G_t.c_dim:
                raise GanPruneError(f'dataset labels are {dataset.label_dim}-d but the generator takes c_dim='
                                    f'{self.G_t.c_dim}; use the dataset the teacher was trained on')
            self.source = RealImageSource(dataset, self.batch_gpu, self.device, self.rank, self.world, seed=seed,
                                          workers=int(opts['workers']))
            self.training_set_kwargs = dataset.dataset_kwargs()
            self.data_desc = f'{dataset.path} ({len(dataset)} images{" with x-flips" if opts["mirror"] else ""})'

    def _setup_losses(self) -> None:
        """The objective: the adversarial game plus the KD terms of the --kd preset, built from the registry."""
        from gan_prune.distill.presets import get_preset
        from gan_prune.distill.terms import TermEnv, build_terms
        opts = self.opts
        env = TermEnv(G_t=self.G_t, D_s=self.D_s, device=self.device, trust=bool(opts['trust']), log=self.log,
                      teacher_stats=self._teacher_stats_path)
        terms = build_terms(get_preset(str(opts['kd'])).terms, opts, env)
        self.loss = DistillLoss(self.G_s, self.G_t, self.D_s, self.D_t, terms=terms,
                                r1_gamma=opts['gamma'], pl_weight=opts['pl_weight'],
                                pl_batch_shrink=opts['pl_batch_shrink'], pl_decay=opts['pl_decay'],
                                style_mixing=opts['style_mixing'], force_fp32=self.force_fp32,
                                shared_noise=opts['kd_noise'] == 'shared',
                                all_reduce_mean=self.dist.all_reduce_mean if self.dist.active else None)
        self.loss.path_length.to(self.device)

    def _teacher_stats_path(self) -> str:
        """The DiME teacher statistics: --dime-stats, or computed once into the run directory (main process)."""
        stats = self.opts.get('dime_stats')
        if not stats:
            stats = os.path.join(self.run_dir, TEACHER_STATS_FILE)
            if self.is_main and not os.path.exists(stats):
                self._compute_teacher_stats(stats)
            self.dist.barrier()
        return stats

    def _compute_teacher_stats(self, path: str) -> None:
        from gan_prune.distill.dime import parse_dime_spec, resolve_weight_files
        from gan_prune.distill.embedders import build_embedder
        from gan_prune.distill.teacher_stats import compute_teacher_stats
        opts = self.opts
        names = [n for n, _ in parse_dime_spec(opts['dime'])]
        files = resolve_weight_files(names, opts['embed_weights'] or None)
        embedders = [build_embedder(n, weights=files.get(n), trust=bool(opts['trust'])) for n in names]
        samples = int(opts['dime_stats_samples'])
        self.log(f'Teacher statistics for DiME: {samples} samples through {", ".join(names)} -> {path}')
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            compute_teacher_stats(self.G_t, embedders, path, samples=samples, batch=min(32, samples),
                                  seed=int(opts['seed']), device=self.device, source=str(opts['teacher']),
                                  spec=opts['dime'], bank_size=samples if opts['dime_estimator'] == 'mmd' else 0,
                                  progress=True)
        self.G_t.eval().requires_grad_(False)

    def _nickel_params(self) -> list:
        """Parameters of the trainable KD terms (NICKEL's projection), trained with D^S."""
        return [p for term in self.loss.trainable_terms().values() for p in term.parameters()]

    def _trained_modules(self) -> list[torch.nn.Module]:
        mods = [self.G_s, self.G_ema, self.D_s]
        if self.D_t is not None:
            mods.append(self.D_t)
        mods.extend(self.loss.trainable_terms().values())
        return mods

    # -- resume

    def resume_state(self) -> dict:
        """Every piece of state needed to continue exactly (collective: every process must call it)."""
        return checkpoint.resume_state(self)

    def _load_resume(self) -> None:
        self._resume_processes = checkpoint.load_resume(self, self.resume_dir)
        if self.is_main:
            rd.truncate_stats(self.run_dir, self.cur_nimg)  # rows after the checkpoint are written again
            rd.truncate_metrics(os.path.join(self.run_dir, METRICS_FILE), self.cur_nimg)

    def _restore_process_state(self) -> None:
        """Last step of setup: RNG and data position of this process as they were at the checkpoint."""
        procs = getattr(self, '_resume_processes', None)
        if not procs:
            return
        mine = procs[self.rank] if self.rank < len(procs) else procs[0]
        self.source.load_state_dict(mine['data'])
        rd.set_rng_state(mine['rng'], self.device)

    # -- one training step

    def _phase(self, modules: list[torch.nn.Module], opt: torch.optim.Optimizer, compute, gain: float) -> None:
        """Zero grads, accumulate `compute(round)` over the rounds (x gain / rounds), average, step."""
        for m in modules:
            m.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        for r in range(self.rounds):
            loss, stats = compute(r)
            self._record(stats)
            finite = torch.isfinite(loss.detach())
            self._nonfinite |= ~finite
            self._finite_seen |= finite
            self._record({'Progress/nonfinite_losses': (~finite).float()})
            (loss * (gain / self.rounds)).backward()
        params = [p for m in modules for p in m.parameters()]
        self.dist.sync_grads(params)
        self._record({'Progress/nonfinite_grads': sanitize_grads(params)})  # after the all-reduce: same everywhere
        opt.step()
        for m in modules:
            m.requires_grad_(False)

    def train_step(self) -> None:
        loss, bg = self.loss, self.batch_gpu
        # G^S
        g_lat = [loss.sample_latents(bg, self.source.sample_labels(bg), self.device) for _ in range(self.rounds)]
        self._phase([self.G_s], self.opt_G, lambda r: loss.generator_main(g_lat[r]), 1.0)
        if self.g_interval and self.batch_idx % self.g_interval == 0:
            reg_lat = [loss.sample_latents(bg, self.source.sample_labels(bg), self.device) for _ in range(self.rounds)]
            self._phase([self.G_s], self.opt_G, lambda r: loss.generator_reg(reg_lat[r]), float(self.g_interval))

        # D^S and D^T share the real batch and the student's fakes
        reals = [self.source.next() for _ in range(self.rounds)]
        d_lat = [loss.sample_latents(bg, self.source.sample_labels(bg), self.device) for _ in range(self.rounds)]
        fakes = [loss.fake_images(lat) for lat in d_lat]
        lazy_r1 = self.d_interval is not None
        do_r1 = lazy_r1 and self.batch_idx % self.d_interval == 0
        for which, D in loss.discriminators().items():
            mods = [D] + ([loss.nickel] if which == 'DS' and loss.nickel is not None else [])
            main = (lambda r, w=which: loss.discriminator_main(w, fakes[r], d_lat[r].c, reals[r][0], reals[r][1],
                                                               teacher_latents=d_lat[r],
                                                               with_r1=not lazy_r1 and loss.r1_gamma > 0))
            self._phase(mods, self.opt_D[which], main, 1.0)
            if do_r1:
                self._phase([D], self.opt_D[which],
                            lambda r, w=which: loss.discriminator_reg(w, reals[r][0], reals[r][1]),
                            float(self.d_interval))

        # EMA, counters. w_avg moved with each process's own latents (G^S runs in training mode): average it.
        self.dist.average_buffers(self.G_s)
        update_ema(self.G_ema, self.G_s, ema_beta(self.batch, self.cur_nimg, self.opts['ema_kimg'],
                                                  self.opts['ema_rampup']))
        self.cur_nimg += self.batch
        self.batch_idx += 1

    @property
    def tick_stats(self) -> dict[str, list[torch.Tensor]]:
        """The values recorded since the tick started: {key: [one flat tensor per record]}."""
        return self._stats

    def reset_tick_stats(self) -> None:
        """Forget the values recorded so far in this tick (e.g. between timed steps)."""
        self._stats = {}

    def _record(self, stats: dict) -> None:
        for key, value in stats.items():
            self._stats.setdefault(key, []).append(value.detach().float().flatten())

    # -- tick-boundary work (never draws random numbers)

    def _reduce_stats(self) -> dict:
        """{key: {'num', 'mean', 'std'}} over all processes."""
        keys = sorted(self._stats)
        keys = self.dist.broadcast_object(keys)
        moments = []
        for key in keys:
            v = torch.cat(self._stats[key]).double() if key in self._stats else torch.zeros([0], dtype=torch.float64)
            moments.append(torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64), v.sum(), v.square().sum()]))
        out = {}
        if not moments:
            return out
        m = torch.stack(moments).to(self.device)
        if self.dist.active:
            torch.distributed.all_reduce(m)
        for key, (num, s, sq) in zip(keys, m.cpu().tolist()):
            if num > 0:
                mean = s / num
                out[key] = {'num': int(num), 'mean': mean, 'std': math.sqrt(max(sq / num - mean * mean, 0.0))}
        return out

    def _start_tick_counters(self) -> None:
        self._stats: dict[str, list] = {}
        self._nonfinite = torch.zeros([], dtype=torch.bool, device=self.device)  # some loss was NaN/inf
        self._finite_seen = torch.zeros([], dtype=torch.bool, device=self.device)  # some loss was finite
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)  # Resources/peak_gpu_mem_gb is per tick

    def _check_finite(self) -> None:
        """Stop when a weight is NaN/inf, or when no loss of the tick was finite. A single non-finite loss (an
        overflow) is not the end: its gradients were sanitised, and stats.jsonl counts it."""
        bad = bool((self._nonfinite & ~self._finite_seen).item())
        if not bad:
            for m in self._trained_modules():
                if any(not torch.isfinite(p).all() for p in m.parameters()):
                    bad = True
                    break
        if self.dist.any(bad):
            snaps = rd.list_snapshots(self.run_dir)
            kept = f'the last good snapshot is {snaps[-1]}' if snaps else 'no snapshot was written yet'
            raise GanPruneError(f'training diverged near kimg {self.cur_nimg / 1000:.1f}: a loss or weight became '
                                f'NaN/inf; {kept}; resume from {self.run_dir} with a lower --lr or a higher --gamma')

    @torch.no_grad()
    def _generate_grid(self, G: torch.nn.Module) -> torch.Tensor:
        imgs = []
        for z, c in zip(self.grid_z.split(self.batch_gpu), self.grid_c.split(self.batch_gpu)):
            imgs.append(G(z.to(self.device), c.to(self.device), noise_mode='const', force_fp32=self.force_fp32).cpu())
        return torch.cat(imgs)

    def _save_initial_images(self) -> None:
        if not self.is_main:
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            n = self.grid[0] * self.grid[1]
            if hasattr(self.source, 'dataset'):
                ds = self.source.dataset
                reals = np.stack([ds[i % len(ds)][0] for i in range(n)])
                rd.save_image_grid(reals, os.path.join(self.run_dir, 'reals.png'), self.grid)
            rd.save_image_grid(self._generate_grid(self.G_t), os.path.join(self.run_dir, 'teacher.png'), self.grid)
            rd.save_image_grid(self._generate_grid(self.G_ema), os.path.join(self.run_dir, 'fakes_init.png'), self.grid)

    def _snapshot(self) -> str | None:
        """Grid, snapshot pickle, resume checkpoint and metrics (collective)."""
        state = self.resume_state()
        checks = self.dist.gather_objects([module_checksum(m) for m in self._trained_modules()])
        if any(c != checks[0] for c in checks[1:]):
            raise GanPruneError('the training processes hold different weights (replicas diverged); '
                                'report this with the command line')
        path = None
        if self.is_main:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
                rd.save_image_grid(self._generate_grid(self.G_ema),
                                   os.path.join(self.run_dir, f'fakes{rd.kimg_tag(self.cur_nimg)}.png'), self.grid)
                modules = {'G': self.G_s, 'G_ema': self.G_ema, 'D': self.D_s}
                D_teacher = self.D_t if self.D_t is not None else self.D_teacher_frozen
                if D_teacher is not None:
                    modules['D_teacher'] = D_teacher
                path = rd.save_snapshot(self.run_dir, self.cur_nimg, modules,
                                        extra={'training_set_kwargs': copy.deepcopy(self.training_set_kwargs)})
                rd.save_resume(self.run_dir, state)
                self._metrics(path)
        self.dist.barrier()
        return path

    def _metrics(self, snapshot_path: str) -> None:
        metrics = str(self.opts['metrics'] or 'none')
        if metrics.lower() == 'none':
            return
        from gan_prune.metrics.compute import compute_metrics
        data = None if self.opts.get('data_free') else self.opts['data']
        results = compute_metrics(self.G_ema, metrics, data=data, ref_G=self.G_t if data is None else None,
                                  detector=self.opts['metrics_detector'], num_gen=int(self.opts['metrics_num_gen']),
                                  device=self.device, log=self.log, trust=bool(self.opts['trust']))
        line = {'results': results, 'snapshot_pkl': os.path.basename(snapshot_path), 'kimg': self.cur_nimg / 1000,
                'timestamp': time.time()}
        fileio.append_line(os.path.join(self.run_dir, METRICS_FILE), json.dumps(line, sort_keys=True))
        self.log('Metrics: ' + ', '.join(f'{k} {v:.4g}' for k, v in results.items()))

    # -- the loop

    def run(self) -> None:
        opts = self.opts
        self.setup()
        total_nimg = int(round(opts['kimg'] * 1000))
        tick_nimg = int(round(opts['tick'] * 1000))
        self.log(f'Run directory: {self.run_dir}')
        self.log(f'Teacher {opts["teacher"]}, student {opts["student"]}; KD {opts["kd"]}; data: {self.data_desc}')
        self.log(f'Device {self.device}, {self.world} process(es), batch {self.batch} = {self.world} x '
                 f'{self.rounds} round(s) x {self.batch_gpu}; {"fp32" if self.force_fp32 else "mixed precision"}')
        if self.resume_dir:
            self.log(f'Resuming at kimg {self.cur_nimg / 1000:.3f} (tick {self.cur_tick})')
        else:
            self._save_initial_images()
        if self.cur_nimg >= total_nimg:
            self.log(f'Nothing to do: the run already reached --kimg {opts["kimg"]}')
            return
        self._start_tick_counters()
        self._restore_process_state()  # last: setup above may have drawn random numbers

        from tqdm import tqdm
        bar = tqdm(total=total_nimg / 1000, initial=self.cur_nimg / 1000, unit='kimg', disable=not self.is_main,
                   bar_format='{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]',
                   file=sys.stderr, dynamic_ncols=True)
        tick_start_nimg, tick_start_time = self.cur_nimg, time.time()
        last_postfix = 0.0
        try:
            while True:
                self.train_step()
                bar.update(self.batch / 1000)
                now = time.time()
                if self.is_main and now - last_postfix > 1.0:
                    last_postfix = now
                    sec_per_kimg = (now - tick_start_time) / max((self.cur_nimg - tick_start_nimg) / 1000, 1e-9)
                    bar.set_postfix_str(self._postfix(sec_per_kimg), refresh=False)
                done = self.cur_nimg >= total_nimg
                if not done and self.cur_nimg < tick_start_nimg + tick_nimg:
                    continue
                self._end_tick(tick_start_nimg, tick_start_time, done)
                if done:
                    break
                tick_start_nimg, tick_start_time = self.cur_nimg, time.time()
        finally:
            bar.close()
            self.source.close()
        self.log('Done.')

    def _postfix(self, sec_per_kimg: float) -> str:
        parts = []
        for key, label in (('Loss/G/main', 'G'), ('Loss/DS/main', 'DS'), ('Loss/DT/main', 'DT')):
            if self._stats.get(key):
                parts.append(f'{label} {self._stats[key][-1].mean().item():.3f}')
        parts.append(f'{sec_per_kimg:.1f} s/kimg')
        return ', '.join(parts)

    def _end_tick(self, tick_start_nimg: int, tick_start_time: float, done: bool) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)  # the tick's kernels have finished before its time is taken
        self._check_finite()
        tick_time = time.time() - tick_start_time
        self.elapsed += tick_time
        self.cur_tick += 1
        kimg_done = (self.cur_nimg - tick_start_nimg) / 1000
        stats = self._reduce_stats()
        sec_per_kimg = tick_time / max(kimg_done, 1e-9)
        stats.update({
            'Progress/tick': rd.summarize([self.cur_tick]), 'Progress/kimg': rd.summarize([self.cur_nimg / 1000]),
            'Progress/nimg': rd.summarize([self.cur_nimg]), 'Timing/sec_per_tick': rd.summarize([tick_time]),
            'Timing/sec_per_kimg': rd.summarize([sec_per_kimg]), 'Timing/total_sec': rd.summarize([self.elapsed]),
        })
        if self.device.type == 'cuda':
            stats['Resources/peak_gpu_mem_gb'] = rd.summarize([torch.cuda.max_memory_allocated(self.device) / 2**30])
        losses = '  '.join(f'{k.split("/", 1)[1]} {v["mean"]:.4f}' for k, v in stats.items()
                           if k.startswith('Loss/') and k.endswith('/main'))
        self.log(f'tick {self.cur_tick:<5d} kimg {self.cur_nimg / 1000:<9.3f} time {_format_time(self.elapsed):<10s} '
                 f'sec/tick {tick_time:<7.1f} sec/kimg {sec_per_kimg:<8.2f} {losses}')
        if self.is_main:
            rd.append_stats(self.run_dir, stats)
        snap = int(self.opts['snap'])
        path = None
        if done or self.cur_tick % snap == 0:
            path = self._snapshot()
            if path:
                self.log(f'Snapshot {path}')
        self._start_tick_counters()
        if self.tick_callback is not None:
            self.tick_callback(dict(rank=self.rank, world=self.world, cur_nimg=self.cur_nimg, cur_tick=self.cur_tick,
                                    done=done, stats=stats, snapshot=path, run_dir=self.run_dir, G=self.G_s,
                                    G_ema=self.G_ema, D=self.D_s, D_teacher=self.D_t))


def _format_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h'
