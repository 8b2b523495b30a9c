"""Render images from a generator with the conventions of stylegan2-ada-pytorch's generate.py.

Same seed, same pickle, same image as that tool:
- latent: float64 `numpy.random.RandomState(seed).randn(1, z_dim)`;
- label: zeros [1, c_dim] with a one at --class for conditional generators;
- call: `G(z, label, truncation_psi=psi, noise_mode=mode)`, one seed at a time (batch 1);
- pixels: `img * 127.5 + 128`, clamped to [0, 255], cast to uint8, NHWC;
- files: `seed{seed:04d}.png` (and `proj{i:02d}.png` for projected W), written atomically.
We add a `grid.png` of all images. Noise mode 'random' draws from torch's RNG seeded with the image's seed, so
it is reproducible here (the original leaves that RNG unseeded).
Precision 'auto' renders fp16 blocks in fp32 on the CPU (float16 convolutions are 20-30x slower there) and
natively on CUDA; 'native' always runs the network's own precision, as the original tool does.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np
import torch

from gan_prune.core.device import resolve_device
from gan_prune.core.images import image_grid, to_hwc_uint8, write_png
from gan_prune.errors import GanPruneError

NOISE_MODES = ('const', 'random', 'none')
PRECISIONS = ('auto', 'fp32', 'native')


def force_fp32_for(precision: str, device: torch.device) -> bool:
    """Whether to pass force_fp32=True: always for 'fp32', on the CPU for 'auto', never for 'native'."""
    if precision not in PRECISIONS:
        raise GanPruneError(f'--precision {precision!r} is unknown; choose one of {", ".join(PRECISIONS)}')
    return precision == 'fp32' or (precision == 'auto' and torch.device(device).type != 'cuda')


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (ranges inclusive, order kept)."""
    seeds: list[int] = []
    for item in str(text).replace(' ', '').split(','):
        if not item:
            continue
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', item)
        if m is None:
            raise GanPruneError(f'--seeds: {item!r} is not a seed or a range; use e.g. --seeds 0-15 or --seeds 1,5,9')
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise GanPruneError(f'--seeds: range {item!r} runs backwards; write {hi}-{lo}')
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise GanPruneError('--seeds is empty; use e.g. --seeds 0-15')
    for s in seeds:
        if s >= 2 ** 32:
            raise GanPruneError(f'--seeds: {s} is too large (numpy seeds are below 2**32)')
    return seeds


def _warn_if_nonfinite(G: torch.nn.Module, src: str) -> None:
    """Rendering goes on (the images show what the network does), after a warning on stderr."""
    import sys
    from gan_prune.generator.finite import describe, nonfinite_tensors
    found = nonfinite_tensors(G)
    if found:
        print(f'warning: {describe(f"G_ema of {src}", found)}; its images will be NaN (black)', file=sys.stderr,
              flush=True)


def seed_latent(seed: int, z_dim: int) -> torch.Tensor:
    """[1, z_dim] float64 latent of `seed`, as the original generate.py draws it."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim))


def class_label(c_dim: int, class_idx: int | None) -> torch.Tensor:
    """[1, c_dim] label: one-hot at class_idx for conditional generators, empty otherwise."""
    label = torch.zeros([1, c_dim])
    if c_dim != 0:
        if class_idx is None:
            raise GanPruneError(f'this generator is conditional ({c_dim} classes); pass --class between 0 and {c_dim - 1}')
        if not 0 <= class_idx < c_dim:
            raise GanPruneError(f'--class {class_idx} is out of range; this generator has classes 0..{c_dim - 1}')
        label[:, class_idx] = 1
    return label


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """NCHW float in [-1, 1] -> NHWC uint8, as the original tools convert."""
    return to_hwc_uint8(img)


make_grid = image_grid


@torch.no_grad()
def render_seeds(G: torch.nn.Module, seeds: list[int], truncation_psi: float = 1.0, noise_mode: str = 'const',
                 class_idx: int | None = None, device: str | torch.device = 'cpu',
                 precision: str = 'auto') -> Iterator[tuple[int, np.ndarray]]:
    """Yield (seed, HWC uint8 image) per seed, rendered one at a time exactly like the original tool."""
    if noise_mode not in NOISE_MODES:
        raise GanPruneError(f'--noise-mode {noise_mode!r} is unknown; choose one of {", ".join(NOISE_MODES)}')
    device = torch.device(device)
    extra = {'force_fp32': True} if force_fp32_for(precision, device) else {}
    label = class_label(int(G.c_dim), class_idx).to(device)
    for seed in seeds:
        z = seed_latent(seed, int(G.z_dim)).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            torch.manual_seed(seed)
            img = G(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode, **extra)
        yield seed, to_uint8(img)[0]


def render_seeds_with(run, seeds: list[int], truncation_psi: float = 1.0, noise_mode: str = 'const',
                      class_idx: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (seed, HWC uint8 image) per seed through a runtime backend (gan_prune.runtime.backends), batch 1."""
    if noise_mode not in NOISE_MODES:
        raise GanPruneError(f'--noise-mode {noise_mode!r} is unknown; choose one of {", ".join(NOISE_MODES)}')
    label = class_label(int(run.c_dim), class_idx)
    for seed in seeds:
        z = seed_latent(seed, int(run.z_dim)).to(torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = run(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode)
        yield seed, to_uint8(img)[0]


def _exported_or_none(src: str, backend: str, trust: bool):
    """The backend for an exported model file (.onnx, TorchScript), or None when `src` is a network pickle.
    `trust` (--trust-pickle) lets a TorchScript file, a program, load."""
    from gan_prune.runtime.exported import exported_kind, load_exported
    if exported_kind(src) is None:
        return None
    return load_exported(src, None if backend == 'eager' else backend, trust=trust)


@torch.no_grad()
def render_projected(G: torch.nn.Module, ws: np.ndarray, noise_mode: str = 'const',
                     device: str | torch.device = 'cpu', precision: str = 'auto') -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, image) for each [num_ws, w_dim] entry of a projected-W array."""
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (int(G.num_ws), int(G.w_dim)):
        raise GanPruneError(f'projected W has shape {tuple(ws.shape)}; this generator needs [K, {G.num_ws}, {G.w_dim}]')
    device = torch.device(device)
    extra = {'force_fp32': True} if force_fp32_for(precision, device) else {}
    for idx, w in enumerate(torch.from_numpy(np.asarray(ws)).to(device)):
        yield idx, to_uint8(G.synthesis(w[None], noise_mode=noise_mode, **extra))[0]


def generate_images(src: str, outdir: str, seeds: list[int] | None = None, truncation_psi: float = 1.0,
                    noise_mode: str = 'const', class_idx: int | None = None, projected_w: str | None = None,
                    grid: bool = True, device: str | torch.device = 'cpu', precision: str = 'auto',
                    trust: bool = False, progress: bool = False, log=None, backend: str = 'eager') -> list[str]:
    """Render `seeds` (or a projected-W npz) of the G_ema in pickle `src` into `outdir`; returns written paths.

    `backend` names a runtime backend (gan_prune.runtime.backends.BACKENDS); 'eager' renders exactly as the
    original tool. `src` may also be a model written by `gan-prune export` (run by its own backend; a TorchScript
    one only with `trust`, since it is a program). `trust` (--trust-pickle) lets code in `src` run.
    """
    from gan_prune import load_network_pkl
    from gan_prune.runtime.backends import BACKENDS
    if seeds is None and projected_w is None:
        raise GanPruneError('nothing to render: pass --seeds (e.g. 0-15) or --projected-w FILE')
    BACKENDS.get(backend)
    if projected_w is not None and backend != 'eager':
        raise GanPruneError('--projected-w renders W directly; use it with --backend eager')
    run = _exported_or_none(src, backend, trust)
    if run is not None:
        if projected_w is not None:
            raise GanPruneError(f'{src} is an exported model (z in, img out); --projected-w needs a network pickle')
        assert seeds is not None  # one of seeds, projected_w is given (checked above)
        return _write_images(outdir, render_seeds_with(run, seeds, truncation_psi, noise_mode, class_idx),
                             lambda s: f'seed{s:04d}.png', len(seeds), grid, progress)
    data = load_network_pkl(src, trust=trust)
    G = data.get('G_ema')
    if G is None:
        raise GanPruneError(f'{src} holds no G_ema; is it a StyleGAN2-ADA network pickle?')
    _warn_if_nonfinite(G, src)
    requested, device = str(device), resolve_device(device)
    G = G.to(device).eval()
    if int(G.c_dim) == 0 and class_idx is not None and log is not None:
        log('warning: --class is ignored, this generator is unconditional')
        class_idx = None
    if projected_w is not None:
        if not os.path.isfile(projected_w):
            raise GanPruneError(f'--projected-w {projected_w}: no such file')
        ws = np.load(projected_w)['w']
        items = render_projected(G, ws, noise_mode, device, precision)
        names, total = (lambda i: f'proj{i:02d}.png'), len(ws)
    elif backend != 'eager':
        assert seeds is not None  # one of seeds, projected_w is given (checked above)
        runs_on_cpu_only = not BACKENDS.info(backend).get('needs_module', True)  # onnxruntime, torchscript
        run = BACKENDS.build(backend, G, device='cpu' if runs_on_cpu_only and requested == 'auto' else device)
        items = render_seeds_with(run, seeds, truncation_psi, noise_mode, class_idx)
        names, total = (lambda s: f'seed{s:04d}.png'), len(seeds)
    else:
        assert seeds is not None  # one of seeds, projected_w is given (checked above)
        items = render_seeds(G, seeds, truncation_psi, noise_mode, class_idx, device, precision)
        names, total = (lambda s: f'seed{s:04d}.png'), len(seeds)
    return _write_images(outdir, items, names, total, grid, progress)


def _write_images(outdir: str, items, names, total: int, grid: bool, progress: bool) -> list[str]:
    """Write each (key, image) as names(key) in outdir, then grid.png; returns the written paths."""
    from tqdm import tqdm
    os.makedirs(outdir, exist_ok=True)
    written, images = [], []
    for key, img in tqdm(items, total=total, desc='generating', unit='img', disable=not progress, leave=False):
        path = os.path.join(outdir, names(key))
        write_png(img, path)
        written.append(path)
        images.append(img)
    if grid and len(images) > 1:
        path = os.path.join(outdir, 'grid.png')
        write_png(make_grid(images), path)
        written.append(path)
    return written
