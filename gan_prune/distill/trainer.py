"""The trainer: one process's networks, objective, optimisers, data and counters, and the loop over ticks.

One iteration (batch = `batch` images over all processes, split into rounds of `batch_gpu` per process) runs
the phases that are due (gan_prune.distill.phases: G^S, its lazy path-length step, D^S with NICKEL, its lazy R1
step, D^T and its R1 step), then moves G_ema towards G^S with a half-life of `ema_kimg`. The objective comes from
gan_prune.distill.objective, built once in `setup()`.
Each of G^S, D^S, D^T has its own Adam (betas 0, 0.99) with StyleGAN2's lazy-regularisation scaling
lr * c, betas ** c, c = k / (k + 1).

Exact resume: resume.pt (gan_prune.distill.checkpoint, written with every snapshot) holds every weight, optimiser
state, the path-length mean, counters, each process's RNG state and data position. Work done at tick boundaries
never draws random numbers, so a resumed run continues bit for bit where the checkpoint was taken.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from gan_prune import fileio
from gan_prune.core.fingerprint import module_fingerprint as module_checksum  # replica comparison
from gan_prune.distill import checkpoint
from gan_prune.distill import rundir as rd
from gan_prune.distill.collective import Dist
from gan_prune.distill.losses import DistillLoss
from gan_prune.distill.objective import GameNetworks, build_objective, teacher_stats_path
from gan_prune.distill.options import resume_run_dir, warm_start_snapshot
from gan_prune.distill.phases import Phase, StepInputs, build_phases
from gan_prune.distill.terms import TermEnv
from gan_prune.errors import GanPruneError

METRICS_FILE = 'metrics.jsonl'
# The statistics a trainer records (reduced at each tick by torch_utils.training_stats).
RECORDED_STATS = r'(Loss|Progress)/.*'


def batch_layout(batch: int, batch_gpu: int | None, world: int) -> tuple[int, int]:
    """(batch_gpu, rounds): per-process images per round and rounds per step, with batch = batch_gpu*rounds*world."""
    if batch % world:
        raise GanPruneError(f'--batch {batch} is not divisible by the {world} processes; use a multiple of {world}')
    per_process = batch // world
    batch_gpu = per_process if not batch_gpu else int(batch_gpu)
    if batch_gpu < 1 or per_process % batch_gpu:
        raise GanPruneError(f'--batch-gpu {batch_gpu} must divide the per-process batch {per_process}')
    return batch_gpu, per_process // batch_gpu


def lazy_adam(params: Iterable[torch.nn.Parameter], lr: float, interval: int | None) -> torch.optim.Adam:
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


def sanitize_grads(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
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


def fresh_discriminator(D_teacher: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A randomly initialised D with the teacher D's architecture (the same on every process for one seed);
    what --ds-init random starts D^S from. Leaves the global random state as it was."""
    kwargs = getattr(D_teacher, 'init_kwargs', None)
    if kwargs is None:
        raise GanPruneError('the teacher D carries no init_kwargs, so a fresh D^S cannot be built; '
                            'use --ds-init teacher')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(D_teacher)(*getattr(D_teacher, 'init_args', ()), **kwargs)


class Trainer:
    """Everything one process needs for a run: networks, objective, optimisers, phases, data, counters.

    Nothing is built before `setup()`; after it, `train_step()` runs one iteration and `run()` the whole loop
    (which calls setup itself)."""

    # Built by setup().
    G_s: torch.nn.Module
    G_ema: torch.nn.Module
    G_t: torch.nn.Module
    D_s: torch.nn.Module
    D_t: torch.nn.Module | None
    D_teacher_frozen: torch.nn.Module | None
    loss: DistillLoss
    opt_G: torch.optim.Optimizer
    opt_D: dict[str, torch.optim.Optimizer]
    phases: list[Phase]
    source: Any  # gan_prune.data.datasets.RealImageSource or TeacherSampleDataset
    data_desc: str
    training_set_kwargs: dict | None
    grid_z: torch.Tensor
    grid_c: torch.Tensor

    def __init__(self, opts: dict, run_dir: str, dist: Dist, device: torch.device,
                 tick_callback: Callable[[dict], None] | None = None):
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
        self._resume_processes: list = []  # per-process RNG and data states of the checkpoint, restored last
        self._stats: dict[str, list[torch.Tensor]] = {}
        self._nonfinite = torch.zeros([], dtype=torch.bool, device=device)  # some loss of the tick was NaN/inf
        self._finite_seen = torch.zeros([], dtype=torch.bool, device=device)  # some loss of the tick was finite
        self._collector: Any = None  # a torch_utils.training_stats.Collector, made by setup()

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
        self.loss = build_objective(opts, GameNetworks(G_s=self.G_s, G_t=self.G_t, D_s=self.D_s, D_t=self.D_t),
                                    TermEnv(G_t=self.G_t, D_s=self.D_s, device=device, trust=bool(opts['trust']),
                                            log=self.log, teacher_stats=self._teacher_stats),
                                    all_reduce_mean=self.dist.all_reduce_mean if self.dist.active else None)
        self.opt_G = lazy_adam(self.G_s.parameters(), opts['lr'], self.g_interval)
        self.opt_D = {'DS': lazy_adam(list(self.D_s.parameters()) + self._kd_term_params(), opts['lr'],
                                      self.d_interval)}
        if self.D_t is not None:
            self.opt_D['DT'] = lazy_adam(self.D_t.parameters(), opts['lr'], self.d_interval)
        self.phases = build_phases(self.loss, self.opt_G, self.opt_D, self.g_interval, self.d_interval)
        from torch_utils import training_stats  # the compatibility layer in use (see gan_prune.compat)
        if self.dist.active:  # one trainer per process here: the collector sums over processes on this device
            training_stats.init_multiprocessing(self.rank, device)
        self._collector = training_stats.Collector(regex=RECORDED_STATS, keep_previous=False)
        for m in self._trained_modules():
            self.dist.broadcast_module(m)
        self.grid_z = torch.randn([self.grid[0] * self.grid[1], self.G_s.z_dim], generator=torch.Generator().manual_seed(seed))
        self.grid_c = self.source.sample_labels(self.grid_z.shape[0], generator=torch.Generator().manual_seed(seed))
        if self.resume_dir:
            self._load_resume(self.resume_dir)
        self.start_tick()

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
                D_s = fresh_discriminator(D_teacher, int(opts['seed']))
        self.D_s = copy.deepcopy(D_s).train().requires_grad_(False).to(device)
        self.D_t = D_teacher.train().requires_grad_(False).to(device) if opts['teacher_d'] else None
        self.D_teacher_frozen = None if opts['teacher_d'] else D_teacher  # kept for the snapshot
        self.training_set_kwargs = None

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

    def _teacher_stats(self) -> str:
        """The DiME teacher statistics: --dime-stats, or computed once into the run directory by the main process
        while the others wait."""
        path = teacher_stats_path(self.opts, self.run_dir, self.G_t, self.device, compute=self.is_main, log=self.log)
        if not self.opts.get('dime_stats'):
            self.dist.barrier()
        return path

    def _kd_term_params(self) -> list[torch.nn.Parameter]:
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

    def _load_resume(self, resume_dir: str) -> None:
        self._resume_processes = checkpoint.load_resume(self, resume_dir)
        if self.is_main:
            rd.truncate_stats(self.run_dir, self.cur_nimg)  # rows after the checkpoint are written again
            rd.truncate_metrics(os.path.join(self.run_dir, METRICS_FILE), self.cur_nimg)

    def _restore_process_state(self) -> None:
        """Last step of setup: RNG and data position of this process as they were at the checkpoint."""
        if not self._resume_processes:
            return
        procs = self._resume_processes
        mine = procs[self.rank] if self.rank < len(procs) else procs[0]
        self.source.load_state_dict(mine['data'])
        rd.set_rng_state(mine['rng'], self.device)

    # -- one training step

    def train_step(self) -> None:
        """One iteration: every phase that is due, in order, then the EMA of G^S and the counters."""
        inputs = StepInputs(self.loss, self.source, self.batch_gpu, self.rounds, self.device)
        for phase in self.phases:
            if phase.due(self.batch_idx):
                self._run_phase(phase, inputs.draw(phase.inputs))
        # w_avg moved with each process's own latents (G^S runs in training mode): average it.
        self.dist.average_buffers(self.G_s)
        update_ema(self.G_ema, self.G_s, ema_beta(self.batch, self.cur_nimg, self.opts['ema_kimg'],
                                                  self.opts['ema_rampup']))
        self.cur_nimg += self.batch
        self.batch_idx += 1

    def _run_phase(self, phase: Phase, rounds: list) -> None:
        """Zero grads, accumulate phase.compute(round) over the rounds (x gain / rounds), average, step."""
        for m in phase.modules:
            m.requires_grad_(True)
        phase.optimizer.zero_grad(set_to_none=True)
        for inputs in rounds:
            loss, stats = phase.compute(inputs)
            self._record(stats)
            finite = torch.isfinite(loss.detach())
            self._nonfinite |= ~finite
            self._finite_seen |= finite
            self._record({'Progress/nonfinite_losses': (~finite).float()})
            (loss * (phase.gain / self.rounds)).backward()
        params = phase.parameters()
        self.dist.sync_grads(params)
        self._record({'Progress/nonfinite_grads': sanitize_grads(params)})  # after the all-reduce: same everywhere
        phase.optimizer.step()
        for m in phase.modules:
            m.requires_grad_(False)

    @property
    def tick_stats(self) -> dict[str, list[torch.Tensor]]:
        """The values recorded since the tick started: {key: [one flat tensor per record]}."""
        return self._stats

    def reset_tick_stats(self) -> None:
        """Forget the values recorded so far in this tick (e.g. between timed steps)."""
        self._stats = {}

    def _record(self, stats: dict[str, torch.Tensor]) -> None:
        # Kept on the device until the tick ends: reading a value now would wait for the GPU.
        for key, value in stats.items():
            self._stats.setdefault(key, []).append(value.detach().float().flatten())

    # -- tick-boundary work (never draws random numbers)

    def reduce_tick_stats(self) -> dict[str, dict]:
        """{key: {'num', 'mean', 'std'}} of the tick's values over all processes (torch_utils.training_stats;
        NaN/inf values are left out, as there: Progress/nonfinite_losses counts them). Collective."""
        from torch_utils import training_stats
        if self._collector is None:
            raise RuntimeError('reduce_tick_stats() needs setup() first')
        keys = self.dist.broadcast_object(sorted(self._stats))  # every process reports the same names
        for key in keys:
            values = self._stats.get(key)
            training_stats.report(key, torch.cat(values) if values else [])
        self._collector.update()
        collector = self._collector
        return {key: {'num': collector.num(key), 'mean': collector.mean(key), 'std': collector.std(key)}
                for key in keys if collector.num(key) > 0}

    def start_tick(self) -> None:
        """Start a tick's records: statistics, the non-finite flags and the peak-memory counter."""
        self.reset_tick_stats()
        self._nonfinite = torch.zeros([], dtype=torch.bool, device=self.device)
        self._finite_seen = torch.zeros([], dtype=torch.bool, device=self.device)
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)  # Resources/peak_gpu_mem_gb is per tick

    def check_finite(self) -> None:
        """Stop when a weight is NaN/inf, or when no loss of the tick was finite. A single non-finite loss (an
        overflow) is not the end: its gradients were sanitised, and stats.jsonl counts it. Collective."""
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
        self.start_tick()
        self._restore_process_state()  # last: setup above may have drawn random numbers

        from tqdm import tqdm
        # Training ends at the first step that reaches --kimg, so the last batch may pass it: the bar counts to there.
        final_nimg = self.cur_nimg + -(-(total_nimg - self.cur_nimg) // self.batch) * self.batch
        # Counted in images, shown in kimg: float kimg steps would add up past the total ("<-00:00").
        bar = tqdm(total=final_nimg, initial=self.cur_nimg, unit='kimg', unit_scale=0.001, disable=not self.is_main,
                   bar_format='{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]',
                   file=sys.stderr, dynamic_ncols=True)
        tick_start_nimg, tick_start_time = self.cur_nimg, time.time()
        last_postfix = 0.0
        try:
            while True:
                self.train_step()
                bar.update(self.batch)
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
        from dnnlib.util import format_time
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)  # the tick's kernels have finished before its time is taken
        self.check_finite()
        tick_time = time.time() - tick_start_time
        self.elapsed += tick_time
        self.cur_tick += 1
        kimg_done = (self.cur_nimg - tick_start_nimg) / 1000
        stats = self.reduce_tick_stats()
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
        self.log(f'tick {self.cur_tick:<5d} kimg {self.cur_nimg / 1000:<9.3f} time {format_time(self.elapsed):<10s} '
                 f'sec/tick {tick_time:<7.1f} sec/kimg {sec_per_kimg:<8.2f} {losses}')
        if self.is_main:
            rd.append_stats(self.run_dir, stats)
        snap = int(self.opts['snap'])
        path = None
        if done or self.cur_tick % snap == 0:
            path = self._snapshot()
            if path:
                self.log(f'Snapshot {path}')
        self.start_tick()
        if self.tick_callback is not None:
            self.tick_callback(dict(rank=self.rank, world=self.world, cur_nimg=self.cur_nimg, cur_tick=self.cur_tick,
                                    done=done, stats=stats, snapshot=path, run_dir=self.run_dir, G=self.G_s,
                                    G_ema=self.G_ema, D=self.D_s, D_teacher=self.D_t))

