"""CPU/GPU latency of a generator call, measured the same way everywhere (demo, results table, benchmarks)."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch


@torch.no_grad()
def generator_latency(G: torch.nn.Module, batch: int = 4, repeats: int = 7, warmup: int = 2,
                      device: str | torch.device = 'cpu', clock: str = 'wall') -> dict:
    """Median milliseconds of one G(z, c) call on `batch` images (fp32, const noise, no grad).

    clock 'wall' (time.perf_counter) or 'cpu' (process CPU time: what the call costs regardless of other load;
    use it with torch.set_num_threads(1)). Returns {'median_ms', 'min_ms', 'runs_ms', 'batch', 'clock'}.
    """
    if clock not in ('wall', 'cpu'):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timer = time.perf_counter if clock == 'wall' else time.process_time
    device = torch.device(device)
    was_training = G.training
    G.eval()
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0)).to(device)
    c = torch.zeros([batch, G.c_dim], device=device)
    runs = []
    try:
        for i in range(warmup + repeats):
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = timer()
            G(z, c, noise_mode='const', force_fp32=True)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if i >= warmup:
                runs.append((timer() - start) * 1000)
    finally:
        G.train(was_training)
    return dict(median_ms=statistics.median(runs), min_ms=min(runs), runs_ms=runs, batch=batch, clock=clock)


def machine_description() -> str:
    """One line saying where a measurement was taken: CPU model, cores, torch version, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads'
