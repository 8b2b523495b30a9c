"""The distillation training loop behind `gan-prune distill`: `distill(**options)`.

One iteration (batch = `batch` images over all processes, split into rounds of `batch_gpu` per process):
  1. G^S step: adversarial against D^S (and D^T) + KD; every `g_reg_interval` iterations an extra
     path-length step (lazy regularisation, loss scaled by the interval);
  2. D^S step: adversarial + NICKEL; every `d_reg_interval` iterations an extra R1 step;
  3. D^T step (unless teacher_d is off): adversarial; lazily R1;
  4. EMA of G^S into G_ema with a half-life of `ema_kimg`.
Each of G^S, D^S, D^T has its own Adam (betas 0, 0.99) with StyleGAN2's lazy-regularisation scaling
lr * c, betas ** c, c = k / (k + 1).

Devices: CUDA when available (mixed precision as the networks are configured), else CPU in fp32. Several
processes: launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK) or spawned here for --gpus N; NCCL on GPUs,
gloo on CPU. Gradients are averaged with one all-reduce per step (the data-parallel scheme of
DistributedDataParallel, done by hand because every step toggles which network is trained and R1 / path
length differentiate twice, which DDP's reducer does not follow). Replicas are checked for equality at every
snapshot.

Exact resume: resume.pt (written with every snapshot) holds every weight, optimiser state, the path-length
mean, counters, each process's RNG state and data position. Work done at tick boundaries never draws random
numbers, so a resumed run continues bit for bit where the checkpoint was taken.
"""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from gan_prune import fileio
from gan_prune.defaults import DISTILL
from gan_prune.distill import rundir as rd
from gan_prune.distill.losses import DistillLoss
from gan_prune.errors import GanPruneError
from gan_prune.core.device import resolve_device
from gan_prune.core.fingerprint import module_fingerprint as module_checksum  # replica comparison

RESUME_FORMAT = 'gan_prune.distill.resume.v1'
TEACHER_STATS_FILE = 'teacher_stats.npz'
METRICS_FILE = 'metrics.jsonl'
# Options that may change when resuming a run directory; every other option must stay as it was.
RESUME_OVERRIDABLE = ('kimg', 'snap', 'tick', 'metrics', 'metrics_num_gen', 'metrics_detector', 'workers', 'lr',
                      'gamma', 'pl_weight', 'gpus', 'device', 'batch_gpu', 'grid', 'resume', 'trust')


# ------------------------------------------------------------------------------------------------------------
# Options

def resolve_options(options: dict) -> dict:
    """DISTILL defaults, then the options the `kd` preset sets (gan_prune.distill.presets), then `options` (only
    what the user gave: an option given here always wins over the preset); for `resume=RUN_DIR`, the run's saved
    options updated with the overridable ones. Raises GanPruneError for unknown or inconsistent options.

    `trust` is never read from a run directory: a resumed run trusts its files (lets them run code) only when
    `options` says so, so a run directory handed over by someone else cannot make us run code."""
    unknown = sorted(set(options) - set(DISTILL))
    if unknown:
        raise GanPruneError(f'unknown distill option {unknown[0]!r}; see gan-prune distill --help')
    options = _absolute_paths(options)
    resume = options.get('resume')
    if resume and os.path.isdir(resume):
        saved = rd.read_training_options(resume)
        opts = dict(DISTILL)
        opts.update({k: v for k, v in saved.items() if k in DISTILL})
        for key, value in options.items():
            if key in RESUME_OVERRIDABLE or key in rd.FINGERPRINTED_INPUTS:  # a moved input: checked by fingerprint
                opts[key] = value
            elif _jsonable(value) != _jsonable(opts.get(key)):
                raise GanPruneError(f'option {key} cannot change when resuming {resume} (it was {opts.get(key)!r}); '
                                    f'start a new run instead')
        opts['resume'] = os.path.abspath(resume)
        opts['trust'] = bool(options.get('trust', False))
    else:
        from gan_prune.distill.presets import apply_preset
        opts = apply_preset(DISTILL, options)
        opts = _absolute_paths(opts)  # defaults such as outdir too
    opts['embed_weights'] = list(opts.get('embed_weights') or [])
    _validate(opts)
    return opts


# Options naming a local file or folder: stored as absolute paths, so a run resumes from any working directory.
PATH_OPTIONS = ('teacher', 'student', 'data', 'dime_stats', 'parser_weights', 'outdir')


# Spec families whose argument is a file: 'torchscript:FILE' (--dime, --cagan-net), 'vgg16:FILE', 'inception:FILE'.
SPEC_OPTIONS_WITH_FILES = ('dime', 'cagan_net', 'metrics_detector')
FILE_SPEC_FAMILIES = ('torchscript', 'vgg16', 'inception')


def _spec_parts(spec: str) -> list[tuple[str, str, str]]:
    """'torchscript:embed.pt=5,effnet-lite0' -> [('torchscript', 'embed.pt', '=5'), ('effnet-lite0', '', '')]."""
    parts = []
    for part in spec.split(','):
        head, sep, weight = part.rpartition('=') if '=' in part else (part, '', '')
        family, _, arg = head.partition(':')
        parts.append((family, arg, sep + weight))
    return parts


def _spec_files(spec: Any) -> list[str]:
    """The files a spec option names (the arguments of its torchscript:, vgg16: and inception: terms)."""
    if not isinstance(spec, str):
        return []
    return [arg.strip() for family, arg, _ in _spec_parts(spec)
            if family.strip().lower() in FILE_SPEC_FAMILIES and arg.strip()]


def _absolute_spec_files(spec: Any) -> Any:
    """'torchscript:embed.pt=5,effnet-lite0=1' -> 'torchscript:/abs/embed.pt=5,effnet-lite0=1' (existing files only)."""
    if not _spec_files(spec):
        return spec
    parts = []
    for family, arg, weight in _spec_parts(spec):
        path = os.path.expanduser(arg.strip())
        if family.strip().lower() in FILE_SPEC_FAMILIES and arg.strip() and os.path.isfile(path):
            arg = os.path.abspath(path)
        parts.append(f'{family}:{arg}{weight}' if arg else f'{family}{weight}')
    return ','.join(parts)


def _absolute_paths(options: dict) -> dict:
    """`options` with local paths made absolute (URLs, builtin:NAME and names looked up elsewhere unchanged)."""
    def absolute(value: Any, must_exist: bool = False) -> Any:
        if not isinstance(value, str) or not value or '://' in value or fileio.local_path(value) is None:
            return value
        path = os.path.expanduser(value)
        return os.path.abspath(path) if not must_exist or os.path.exists(path) else value

    out = dict(options)
    for key in PATH_OPTIONS:
        if key in out:
            out[key] = absolute(out[key])
    for key in SPEC_OPTIONS_WITH_FILES:
        if key in out:
            out[key] = _absolute_spec_files(out[key])
    for key in ('resume', 'cagan_mask'):  # also a mode name ('none', 'face-parser'): only existing paths
        if key in out:
            out[key] = absolute(out[key], must_exist=True)
    if out.get('embed_weights'):
        entries = []
        for entry in out['embed_weights']:
            spec, sep, path = entry.partition('=')
            entries.append(f'{spec}={absolute(path, must_exist=True)}' if sep else absolute(entry, must_exist=True))
        out['embed_weights'] = entries
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _validate(o: dict) -> None:
    resuming_dir = bool(o.get('resume')) and os.path.isdir(o['resume'])
    if not o.get('teacher'):
        raise GanPruneError('no teacher given: pass --teacher PKL (the network the student was pruned from)')
    if not o.get('student'):
        raise GanPruneError('no student given: pass --student PKL (from gan-prune prune)')
    if bool(o.get('data')) == bool(o.get('data_free')):
        raise GanPruneError('give exactly one of --data PATH (the training images) or --data-free (teacher samples '
                            'as real images)')
    if o.get('resume') and not resuming_dir and not os.path.isfile(o['resume']):
        raise GanPruneError(f'--resume {o["resume"]} is neither a run directory nor a snapshot .pkl')
    _validate_kd(o)
    if o['ds_init'] not in ('random', 'teacher'):
        raise GanPruneError(f"--ds-init must be 'random' or 'teacher', got {o['ds_init']!r}")
    if o['dime_estimator'] not in ('moments', 'mmd'):
        raise GanPruneError(f"--dime-estimator must be 'moments' or 'mmd', got {o['dime_estimator']!r}")
    for key in ('kimg', 'tick', 'lr', 'ema_kimg'):
        if not (isinstance(o[key], (int, float)) and o[key] > 0):
            raise GanPruneError(f'--{key.replace("_", "-")} must be positive, got {o[key]}')
    for key in ('batch', 'snap', 'gpus', 'pl_batch_shrink', 'nickel_levels', 'metrics_num_gen'):
        if int(o[key]) < 1:
            raise GanPruneError(f'--{key.replace("_", "-")} must be at least 1, got {o[key]}')
    for key in ('gamma', 'pl_weight', 'nickel_weight', 'cagan_l1', 'cagan_perceptual', 'pl_decay', 'workers'):
        if o[key] < 0:
            raise GanPruneError(f'--{key.replace("_", "-")} must be >= 0, got {o[key]}')
    if not 0 <= o['style_mixing'] <= 1:
        raise GanPruneError(f'--style-mixing is a probability in [0, 1], got {o["style_mixing"]}')
    for key in ('g_reg_interval', 'd_reg_interval'):
        if o[key] is not None and int(o[key]) < 1:
            raise GanPruneError(f'--{key.replace("_", "-")} must be at least 1 (or None for no lazy regularisation)')
    rd.parse_grid(o['grid'])
    if o['device'] not in ('auto', 'cpu', 'cuda') and not str(o['device']).startswith('cuda:'):
        raise GanPruneError(f"--device must be auto, cpu or cuda, got {o['device']!r}")
    _validate_specs(o)


def _validate_kd(o: dict) -> None:
    """The KD method and the options of its terms; what a term needs comes from the facts it declares."""
    from gan_prune.distill.presets import get_preset
    from gan_prune.distill.terms import KD_TERMS
    terms = get_preset(str(o['kd'])).terms
    if o['kd_noise'] not in ('shared', 'independent'):
        raise GanPruneError(f"--kd-noise must be 'shared' or 'independent', got {o['kd_noise']!r}")
    if not isinstance(o['dime_batch'], int) or o['dime_batch'] < 1:
        raise GanPruneError(f'--dime-batch must be a whole number of images >= 1, got {o["dime_batch"]!r}')
    if o['dime_estimator'] == 'mmd' and o['dime_batch'] < 4:
        raise GanPruneError(f'--dime-estimator mmd needs at least 4 images per estimate; --dime-batch '
                            f'{o["dime_batch"]} is too small')
    masked = [t for t in terms if KD_TERMS.info(t).get('uses_mask')]
    if masked and str(o.get('cagan_mask')) == 'face-parser' and not o.get('parser_weights'):
        raise GanPruneError(f'--kd {o["kd"]} masks its KD terms with the teacher image\'s face-parsing mask, which '
                            f'needs --parser-weights 79999_iter.pth (BiSeNet, github.com/zllrunning/face-parsing.'
                            f'PyTorch); or pass --cagan-mask none (every pixel) or --cagan-mask FILE (your own model)')


def _validate_specs(o: dict) -> None:
    """Names used only later (embedders when the losses are built, metrics at the first snapshot), checked now."""
    from gan_prune.distill.dime import check_embedder_specs
    from gan_prune.metrics.compute import parse_metrics
    from gan_prune.metrics.detectors import DETECTOR_CHOICES, EFFNET_LITE0, INCEPTION
    for option, key, check in (('--dime', 'dime', check_embedder_specs), ('--metrics', 'metrics', parse_metrics)):
        value = o.get(key)
        if value and str(value).strip().lower() != 'none':
            try:
                check(value)
            except GanPruneError as e:
                raise GanPruneError(f'{option}: {e}') from e
    detector = str(o.get('metrics_detector') or EFFNET_LITE0)
    if detector not in (EFFNET_LITE0, INCEPTION) and not detector.startswith(INCEPTION + ':'):
        raise GanPruneError(f'--metrics-detector: unknown detector {detector!r}; choose one of: '
                            f'{", ".join(DETECTOR_CHOICES)}')


def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as set by torchrun; (0, 1, 0) for a plain process."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', str(rank)))
    return rank, world, local


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


# ------------------------------------------------------------------------------------------------------------
# Processes

class Dist:
    """The few collective operations the loop needs; all no-ops in a single process."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t / self.world

    def sync_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes with one flat all-reduce (missing grads count as zeros)."""
        if not self.active or not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating buffers (mapping.w_avg moves with each process's batch)."""
        if not self.active:
            return
        bufs = [b for b in module.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.flatten() for b in bufs])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def gather_objects(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


# ------------------------------------------------------------------------------------------------------------
# Entry point

def distill(tick_callback: Callable[[dict], None] | None = None, **options) -> str:
    """Train a pruned student with the NICKEL & DiME objective (or a baseline); returns the run directory.

    Options are the keys of gan_prune.defaults.DISTILL (see `gan-prune distill --help`). With `resume` set to a
    run directory the run continues exactly where its last snapshot left it. `tick_callback(info)` is called
    on every process after each tick with counters, the tick's stats and the live networks.
    """
    opts = resolve_options(options)
    rank, world, local_rank = world_from_env()
    new_run = not (opts.get('resume') and os.path.isdir(opts['resume']))
    if new_run and rank == 0:
        from gan_prune.distill.presets import preset_summary
        print(preset_summary(opts, options), flush=True)
    opts = fetch_weights(opts, progress=rank == 0)
    if world > 1:  # launched by torchrun
        return _run_process(rank, world, local_rank, opts, None, tick_callback)
    gpus = int(opts['gpus'])
    if gpus > 1:
        return _spawn(gpus, opts, tick_callback)
    return _run_process(0, 1, 0, opts, None, tick_callback)


def fetch_weights(opts: dict, progress: bool = True) -> dict:
    """`opts` with the weights files of the frozen networks its KD terms use: given, found locally, or
    downloaded once from their official sources (gan_prune.distill.official_weights). The resolved paths go
    into the options, so training_options.json records which files the run used."""
    from gan_prune.distill import official_weights as ow
    from gan_prune.distill.dime import parse_dime_spec
    from gan_prune.distill.presets import get_preset
    terms = get_preset(str(opts['kd'])).terms
    opts = dict(opts)
    log = print if progress else (lambda msg: None)
    dime = str(opts.get('dime') or '')
    if 'dime' in terms and dime.strip().lower() not in ('', 'none'):
        names = [n for n, _ in parse_dime_spec(dime)]
        opts['embed_weights'] = ow.resolve_embed_weights(names, opts['embed_weights'], progress=progress, log=log)
    if 'cagan' in terms and opts['cagan_perceptual'] > 0 and str(opts['cagan_net']) == 'lpips-vgg':
        opts['cagan_net'] = f'lpips-vgg:{ow.fetch("vgg16", progress=progress, log=log)}'
    return opts


def _input_files(opts: dict) -> list[tuple[str, str]]:
    """(option, path) of every file or folder the run reads."""
    inputs = [(f'--{key.replace("_", "-")}', opts.get(key))
              for key in ('teacher', 'student', 'data', 'dime_stats', 'parser_weights')]
    if opts.get('cagan_mask') not in (None, 'none', 'face-parser'):
        inputs.append(('--cagan-mask', opts['cagan_mask']))
    if opts.get('resume') and os.path.isfile(opts['resume']):
        inputs.append(('--resume', opts['resume']))
    for entry in opts.get('embed_weights') or []:
        inputs.append(('--embed-weights', entry.partition('=')[2] or entry))
    for key in SPEC_OPTIONS_WITH_FILES:
        inputs += [(f'--{key.replace("_", "-")}', path) for path in _spec_files(opts.get(key))]
    return [(label, path) for label, path in inputs if path]


def _prepare_run_dir(opts: dict) -> tuple[str, fileio.ExclusiveLock]:
    """The run directory, locked for this process, with training_options.json written (options and the inputs'
    fingerprints). Refuses a run whose files would replace or change an input, and a resume whose teacher,
    student or data is not the one the run started with."""
    inputs = _input_files(opts)
    if opts.get('resume') and os.path.isdir(opts['resume']):
        run_dir = opts['resume']
        lock = rd.lock_run_dir(run_dir)
        try:
            fileio.refuse_overwriting_inputs(run_dir, inputs, out_label='run directory')
            rd.refuse_inputs_written_by_run(run_dir, inputs)
            saved = rd.read_training_options(run_dir).get(rd.FINGERPRINTS_KEY)
            current = rd.input_fingerprints(opts)
            if saved is None:
                print(f'Note: {run_dir} records no input fingerprints (made by an older version); the current '
                      f'teacher, student and data are recorded now', flush=True)
            else:
                rd.check_input_fingerprints(run_dir, saved, current)
            # Record overrides such as a longer --kimg, and where the inputs are now.
            rd.write_training_options(run_dir, dict(opts, **{rd.FINGERPRINTS_KEY: current}))
        except BaseException:
            lock.release()
            raise
        return run_dir, lock
    fileio.refuse_overwriting_inputs(opts['outdir'], inputs, out_label='--outdir')
    fingerprints = rd.input_fingerprints(opts)
    run_dir = rd.create_run_dir(opts['outdir'], opts.get('desc') or default_desc(opts))
    lock = rd.lock_run_dir(run_dir)
    try:
        rd.write_training_options(run_dir, dict(opts, **{rd.FINGERPRINTS_KEY: fingerprints}))
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def default_desc(opts: dict) -> str:
    data = 'datafree' if opts.get('data_free') else os.path.splitext(os.path.basename(str(opts['data']).rstrip('/')))[0]
    return f'distill-{opts["kd"]}-{data}-batch{opts["batch"]}'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _spawn(gpus: int, opts: dict, tick_callback) -> str:
    import torch.multiprocessing as mp
    run_dir, lock = _prepare_run_dir(opts)
    port = _free_port()
    with lock:  # this process waits for the spawned ones: it holds the run directory for them
        try:
            mp.spawn(_spawned_process, args=(gpus, opts, run_dir, port, tick_callback), nprocs=gpus, join=True)
        except mp.ProcessRaisedException as e:
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            last = lines[-1] if lines else str(e)
            raise GanPruneError(last.split('GanPruneError: ', 1)[-1]) from None
    return run_dir


def _spawned_process(rank: int, world: int, opts: dict, run_dir: str, port: int, tick_callback) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    _run_process(rank, world, rank, opts, run_dir, tick_callback)


def _run_process(rank: int, world: int, local_rank: int, opts: dict, run_dir: str | None, tick_callback) -> str:
    device = resolve_device(str(opts['device']), local_rank)
    created_group = False
    if world > 1 and not torch.distributed.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world)
        created_group = True
    if world > 1 and device.type == 'cpu':
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # processes share the cores
    dist = Dist(rank, world, device)
    lock = None
    try:
        if run_dir is None:
            run_dir, lock = _prepared_by_rank0(opts, dist)
        try:
            trainer = Trainer(opts, run_dir, dist, device, tick_callback)
            if rank == 0:
                with rd.LogTee(os.path.join(run_dir, rd.LOG_FILE)):
                    trainer.run()
            else:
                trainer.run()
        except BaseException:
            _log_failure(run_dir, rank)
            raise
    finally:
        if lock is not None:
            lock.release()
        if created_group:
            torch.distributed.destroy_process_group()
    return run_dir


def _prepared_by_rank0(opts: dict, dist: Dist) -> tuple[str, fileio.ExclusiveLock | None]:
    """Process 0 prepares and locks the run directory; every process gets its path, or the one-line reason why
    there is none (so the others stop too instead of waiting for a run that never starts)."""
    run_dir, lock, problem = None, None, None
    if dist.rank == 0:
        try:
            run_dir, lock = _prepare_run_dir(opts)
        except Exception as e:  # pylint: disable=broad-except
            problem = e
    described = None if problem is None else (str(problem) if isinstance(problem, GanPruneError)
                                              else f'{type(problem).__name__}: {problem}')
    shared_dir, message = dist.broadcast_object((run_dir, described))
    if problem is not None:
        raise problem
    if message is not None:
        raise GanPruneError(message)
    return shared_dir, lock


def _log_failure(run_dir: str, rank: int) -> None:
    """Append the traceback of the exception being handled to the run's log.txt: the terminal shows one line,
    the log keeps what is needed to diagnose a failure afterwards (also an intermittent one)."""
    try:
        with open(os.path.join(run_dir, rd.LOG_FILE), 'a', encoding='utf-8') as f:
            f.write(f'\n{time.strftime("%Y-%m-%d %H:%M:%S")} process {rank} failed:\n{traceback.format_exc()}\n')
    except OSError:
        pass  # the run directory itself is the problem; the error still reaches the terminal


# ------------------------------------------------------------------------------------------------------------
# The trainer

class Trainer:
    """Everything one process needs for a run: networks, losses, optimisers, data, counters."""

    def __init__(self, opts: dict, run_dir: str, dist: Dist, device: torch.device, tick_callback=None):
        self.opts, self.run_dir, self.dist, self.device = opts, run_dir, dist, device
        self.rank, self.world = dist.rank, dist.world
        self.tick_callback = tick_callback
        self.is_main = self.rank == 0
        self.resume_dir = opts['resume'] if opts.get('resume') and os.path.isdir(opts['resume']) else None
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

    def setup(self) -> None:
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

        self._load_networks()
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

    def _load_networks(self) -> None:
        import gan_prune
        opts, device = self.opts, self.device
        trust = bool(opts.get('trust'))
        teacher = gan_prune.load_network_pkl(opts['teacher'], trust=trust)
        student = gan_prune.load_network_pkl(opts['student'], trust=trust)
        for name, data, key in (('teacher', teacher, 'G_ema'), ('teacher', teacher, 'D'), ('student', student, 'G_ema')):
            if not isinstance(data.get(key), torch.nn.Module):
                raise GanPruneError(f'the {name} pickle {opts[name]} has no {key} network')
        self.G_t = teacher['G_ema']
        D_teacher = teacher['D']
        G_s = G_ema = student['G_ema']
        D_s = None
        warm = opts.get('resume') if opts.get('resume') and not self.resume_dir else None
        if warm:  # warm start from a snapshot: its G, G_ema, D (= D^S) and D_teacher replace the initial ones
            snap = gan_prune.load_network_pkl(warm, trust=trust)
            G_s, G_ema, D_s = snap.get('G', G_s), snap.get('G_ema', G_s), snap.get('D')
            D_teacher = snap.get('D_teacher', D_teacher)
            self.log(f'Warm start from {warm}')
        self.G_s = copy.deepcopy(G_s).train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(G_ema).eval().requires_grad_(False).to(device)
        self.G_t = self.G_t.eval().requires_grad_(False).to(device)
        D_teacher = copy.deepcopy(D_teacher)
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
        per_process = self.dist.gather_objects({'rng': rd.get_rng_state(self.device), 'data': self.source.state_dict()})
        return {
            'format': RESUME_FORMAT,
            'cur_nimg': self.cur_nimg, 'cur_tick': self.cur_tick, 'batch_idx': self.batch_idx,
            'elapsed': self.elapsed, 'world': self.world,
            'G': self.G_s.state_dict(), 'G_ema': self.G_ema.state_dict(), 'D': self.D_s.state_dict(),
            'D_teacher': self.D_t.state_dict() if self.D_t is not None else None,
            'kd_terms': {name: term.state_dict() for name, term in self.loss.trainable_terms().items()},
            'path_length': self.loss.path_length.state_dict(),
            'opt_G': self.opt_G.state_dict(), 'opt_D': {k: o.state_dict() for k, o in self.opt_D.items()},
            'processes': per_process,
        }

    def _load_resume(self) -> None:
        state = rd.load_resume(self.resume_dir)
        if state.get('format') != RESUME_FORMAT:
            raise GanPruneError(f'{self.resume_dir}/{rd.RESUME_FILE} has an unknown format; start a new run')
        try:
            self.G_s.load_state_dict(state['G'])
            self.G_ema.load_state_dict(state['G_ema'])
            self.D_s.load_state_dict(state['D'])
            if self.D_t is not None:
                self.D_t.load_state_dict(state['D_teacher'])
            for name, term in self.loss.trainable_terms().items():
                if 'kd_terms' in state:
                    term.load_state_dict(state['kd_terms'][name])
                else:  # checkpoints written before the KD terms had a registry
                    term.nickel.load_state_dict(state['nickel'])
            self.loss.path_length.load_state_dict(state['path_length'])
            self.opt_G.load_state_dict(state['opt_G'])
            for k, opt in self.opt_D.items():
                opt.load_state_dict(state['opt_D'][k])
        except (RuntimeError, KeyError, ValueError) as e:
            raise GanPruneError(f'{self.resume_dir}/{rd.RESUME_FILE} does not match the networks of this run '
                                f'({type(e).__name__}); resume with the original teacher and student files') from e
        self.cur_nimg, self.cur_tick = int(state['cur_nimg']), int(state['cur_tick'])
        self.batch_idx, self.elapsed = int(state['batch_idx']), float(state['elapsed'])
        self._resume_processes = state['processes']
        if int(state['world']) != self.world:
            self.log(f'Note: the run used {state["world"]} processes and now {self.world}; training continues but '
                     f'not bit-identically')
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
