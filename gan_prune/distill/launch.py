"""Starting a distillation run: `distill(**options)` resolves the options, prepares the run directory and runs
one Trainer per process: a plain process, the processes torchrun launched (RANK / WORLD_SIZE / LOCAL_RANK), or
--gpus N processes spawned here; NCCL on GPUs, gloo on CPU."""
from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Callable

import torch

from gan_prune import fileio
from gan_prune.core.device import resolve_device
from gan_prune.distill import rundir as rd
from gan_prune.distill.collective import Dist
from gan_prune.distill.options import default_desc, fetch_weights, input_files, resolve_options, resume_run_dir
from gan_prune.distill.trainer import Trainer
from gan_prune.errors import GanPruneError


def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as set by torchrun; (0, 1, 0) for a plain process."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', str(rank)))
    return rank, world, local


# Entry point

def distill(tick_callback: Callable[[dict], None] | None = None, **options) -> str:
    """Train a pruned student with the NICKEL & DiME objective (or a baseline); returns the run directory.

    Options are the keys of gan_prune.defaults.DISTILL (see `gan-prune distill --help`). With `resume` set to a
    run directory the run continues exactly where its last snapshot left it. `tick_callback(info)` is called
    on every process after each tick with counters, the tick's stats and the live networks.
    """
    opts = resolve_options(options)
    rank, world, local_rank = world_from_env()
    new_run = resume_run_dir(opts) is None
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

def _prepare_run_dir(opts: dict) -> tuple[str, fileio.ExclusiveLock]:
    """The run directory, locked for this process, with training_options.json written (options and the inputs'
    fingerprints). Refuses a run whose files would replace or change an input, and a resume whose teacher,
    student or data is not the one the run started with."""
    inputs = input_files(opts)
    run_dir = resume_run_dir(opts)
    if run_dir:
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
