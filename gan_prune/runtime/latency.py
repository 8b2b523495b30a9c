"""CPU/GPU latency of a generator call, measured the same way everywhere (demo, results table, benchmarks)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from gan_prune.core.bench import machine_description  # noqa: F401  (part of this module's API)


@torch.no_grad()
def generator_latency(G: torch.nn.Module, batch: int = 4, repeats: int = 7, warmup: int = 2,
                      device: str | torch.device = 'cpu', backend: str = 'eager') -> dict[str, list[float]]:
    """Time `repeats` calls of G(z, c) on `batch` images through an inference backend, after `warmup` calls.

    backend: a name from gan_prune.runtime.backends.BACKENDS ('eager', 'compile', 'cpu-kernels', ...); every
    backend runs float32 on the CPU, with const noise and no grad. Returns {'wall_ms': [...], 'cpu_ms': [...]},
    one entry per timed call: wall clock, and process CPU time (what the call costs however busy the machine
    is; compare it with torch.set_num_threads(1)).
    """
    from gan_prune.runtime.backends import BACKENDS
    was_training = G.training
    try:
        run = BACKENDS.build(backend, G, device=device)
        return time_calls(run, int(G.z_dim), int(G.c_dim), batch=batch, repeats=repeats, warmup=warmup,
                          device=device)
    finally:
        G.train(was_training)


@torch.no_grad()
def time_calls(run: Callable[..., torch.Tensor], z_dim: int, c_dim: int, batch: int = 4, repeats: int = 7,
               warmup: int = 2, device: str | torch.device = 'cpu') -> dict[str, list[float]]:
    """Time `repeats` calls of run(z, c, noise_mode='const') after `warmup` calls (see generator_latency)."""
    device = torch.device(device)
    z = torch.randn([batch, z_dim], generator=torch.Generator().manual_seed(0)).to(device)
    c = torch.zeros([batch, c_dim], device=device)
    wall, cpu = [], []
    for i in range(warmup + repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run(z, c, noise_mode='const')
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if i >= warmup:
            wall.append((time.perf_counter() - start_wall) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
    return {'wall_ms': wall, 'cpu_ms': cpu}
