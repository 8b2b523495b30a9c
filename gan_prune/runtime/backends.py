"""Inference backends: one registry, one interface.

A backend is built from a loaded generator (or an exported model file) and a device, and is called like the
generator: ``backend(z, c, truncation_psi=..., noise_mode=...) -> img`` (NCHW float32, the generator's range).
Every backend runs fp32 on the CPU, so a student with fp16 blocks never takes the slow half-precision path there.

    run = BACKENDS.build('eager', G, device='cpu')
    img = run(z, c, truncation_psi=0.7)
"""

from __future__ import annotations

import warnings

import torch

from gan_prune.errors import GanPruneError
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


@BACKENDS.register('cpu-kernels', needs_module=True, devices=('cpu',))
class CpuKernelsBackend(Backend):
    """Hand-written CPU kernels (torch ops gan_prune::*) for the layers they fit, the reference layers elsewhere.

    The fastest CPU path for pruned students (docs/benchmarks.md, section "backends"); needs a C++ compiler once.
    """

    def __init__(self, G: torch.nn.Module, device: str | torch.device = 'cpu') -> None:
        if torch.device(device).type != 'cpu':
            raise GanPruneError(f'the cpu-kernels backend runs on the CPU only, not {device}; use --backend eager')
        super().__init__(G, device)
        from gan_prune.runtime.cpu_kernels import CpuKernelsGenerator
        self.runner = CpuKernelsGenerator(self.G)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        if c is None:
            c = torch.zeros([z.shape[0], self.c_dim])
        return self.runner(z.to(self.device), c.to(self.device), truncation_psi=truncation_psi, noise_mode=noise_mode)


# Largest difference from the eager image (in the generator's value range, about [-1, 1]) that the compiled
# function may show on its first call; float32 reordering stays far below it, a miscompiled graph far above.
COMPILE_TOLERANCE = 1e-3


@BACKENDS.register('compile', needs_module=True)
class CompileBackend(EagerBackend):
    """torch.compile (inductor) of the float32 reference path; checked against eager on each new input shape.

    Where the compiled images differ from eager ones by more than COMPILE_TOLERANCE, the backend says so in one
    line and runs eager from then on: a wrong image is never returned. Compiling takes minutes on a small CPU.
    """

    def __init__(self, G: torch.nn.Module, device: str | torch.device = 'cpu') -> None:
        super().__init__(G, device)
        self.compiled = torch.compile(self._reference, dynamic=False)
        self.checked: set[tuple] = set()
        self.fallback_reason: str | None = None

    def _reference(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float, noise_mode: str) -> torch.Tensor:
        # Non-fused modulation: on the CPU a batched convolution beats the grouped one of the fused path.
        extra = {'force_fp32': True, 'fused_modconv': False} if self.device.type != 'cuda' else {}
        return self.G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, **extra)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        if c is None:
            c = torch.zeros([z.shape[0], self.c_dim], device=self.device)
        z, c = z.to(self.device), c.to(self.device)
        if self.fallback_reason is not None:
            return self._reference(z, c, truncation_psi, noise_mode)
        with torch._dynamo.config.patch(recompile_limit=1024, accumulated_recompile_limit=8192):
            img = self.compiled(z, c, truncation_psi, noise_mode)
        key = (tuple(z.shape), float(truncation_psi), noise_mode)
        if key not in self.checked and noise_mode != 'random':
            expected = self._reference(z, c, truncation_psi, noise_mode)
            error = float((img - expected).abs().max())
            if not error <= COMPILE_TOLERANCE:
                self.fallback_reason = (f'torch.compile rendered images {error:.3g} away from eager ones (tolerance '
                                        f'{COMPILE_TOLERANCE}); the compile backend runs eager instead')
                warnings.warn(self.fallback_reason, RuntimeWarning, stacklevel=2)
                return expected
            self.checked.add(key)
        return img
