"""Inference backends: one registry, one interface.

A backend is built from a loaded generator (or an exported model file) and a device, and is called like the
generator: ``backend(z, c, truncation_psi=..., noise_mode=...) -> img`` (NCHW float32, the generator's range).
Every backend runs fp32 on the CPU, so a student with fp16 blocks never takes the slow half-precision path there.

    run = BACKENDS.build('eager', G, device='cpu')
    img = run(z, c, truncation_psi=0.7)
"""

from __future__ import annotations

import torch

from gan_prune.registry import Registry

BACKENDS: Registry = Registry('backend')


class Backend:
    """Base: holds the generator and device; subclasses implement ``__call__``."""

    def __init__(self, G: torch.nn.Module, device: str | torch.device = 'cpu') -> None:
        self.device = torch.device(device)
        self.G = G.to(self.device).eval()
        self.z_dim, self.c_dim = int(G.z_dim), int(G.c_dim)

    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        raise NotImplementedError


@BACKENDS.register('eager', needs_module=True)
class EagerBackend(Backend):
    """The PyTorch module itself; fp32 on the CPU (fp16 blocks would be 20-30x slower there), native on CUDA."""

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        if c is None:
            c = torch.zeros([z.shape[0], self.c_dim], device=self.device)
        extra = {'force_fp32': True} if self.device.type != 'cuda' else {}
        return self.G(z.to(self.device), c.to(self.device), truncation_psi=truncation_psi, noise_mode=noise_mode,
                      **extra)

