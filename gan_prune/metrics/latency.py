"""CPU/GPU latency of a generator call, measured the same way everywhere (demo, results table, benchmarks)."""
from __future__ import annotations

import time

import torch

from gan_prune.core.bench import machine_description  # noqa: F401  (part of this module's API)


@torch.no_grad()
def generator_latency(G: torch.nn.Module, batch: int = 4, repeats: int = 7, warmup: int = 2,
                      device: str | torch.device = 'cpu') -> dict[str, list[float]]:
    """Time `repeats` calls of G(z, c) on `batch` images (fp32, const noise, no grad) after `warmup` calls.

    Returns {'wall_ms': [...], 'cpu_ms': [...]}, one entry per timed call: wall clock, and process CPU time
    (what the call costs however busy the machine is; compare it with torch.set_num_threads(1)).
    """
    device = torch.device(device)
    was_training = G.training
    G.eval()
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0)).to(device)
    c = torch.zeros([batch, G.c_dim], device=device)
    wall, cpu = [], []
    try:
        for i in range(warmup + repeats):
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            G(z, c, noise_mode='const', force_fp32=True)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if i >= warmup:
                wall.append((time.perf_counter() - start_wall) * 1000)
                cpu.append((time.process_time() - start_cpu) * 1000)
    finally:
        G.train(was_training)
    return {'wall_ms': wall, 'cpu_ms': cpu}
