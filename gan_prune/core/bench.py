"""What the scripts in tools/ share: where a measurement was taken, the load on the machine, the repository's
report files, writing one tool's section of a report without touching the others, and the fixed-latent images and
feature moments that the FD comparisons between a generator and its teacher are made of.

Benchmark numbers belong in docs/benchmarks.md (medians, machine, the exact command), never in docstrings.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from typing import Protocol

import numpy as np
import torch

from gan_prune.core.device import module_device
from gan_prune.core.images import float_to_uint8
from gan_prune.fileio import atomic_write

_BENCH_HEADER = '# Benchmarks\n\nEach section is written by the tool named in it; rerun the command to refresh it.\n'


def machine_description() -> str:
    """One line saying where a measurement was taken: CPU model, cores, torch version, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread{"s" if threads != 1 else ""}'


def machine_line() -> str:
    """machine_description() and the Python version."""
    return f'{machine_description()}, Python {platform.python_version()}'


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ('n/a' where the system has none)."""
    try:
        return ', '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def repo_file(tool_file: str, *parts: str) -> str:
    """A path in the checkout that holds the script `tool_file` (tools/X.py -> <checkout>/<parts>)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(tool_file))), *parts)


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that reproduces this run, for the report: 'python tools/<script> <arguments>'."""
    args = sys.argv[1:] if argv is None else argv
    return ' '.join(['python', f'tools/{script}', *args])


def write_section(name: str, markdown: str, path: str) -> None:
    """Replace the block between `<!-- bench:name -->` and `<!-- /bench:name -->` of the report at `path`
    (appended if absent; a new docs/benchmarks.md gets its header), atomically."""
    begin, end = f'<!-- bench:{name} -->', f'<!-- /bench:{name} -->'
    block = f'{begin}\n{markdown.rstrip()}\n{end}'
    if os.path.exists(path):
        text = open(path, encoding='utf-8').read()
    else:
        text = _BENCH_HEADER if os.path.basename(path) == 'benchmarks.md' else ''
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + '\n\n' + block + '\n'
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(text), binary=False)


def add_report_option(parser: argparse.ArgumentParser, report: str = 'docs/benchmarks.md') -> None:
    """The --no-write option every benchmark has: print the numbers but leave the report alone."""
    parser.add_argument('--no-write', action='store_true', help=f'print only; leave {report} alone')


class FeatureDetector(Protocol):
    """What feature_moments needs of a detector (gan_prune.metrics.detectors): uint8 NCHW images -> [N, D]."""

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


def render(G: torch.nn.Module, num: int, seed: int, batch: int = 256) -> torch.Tensor:
    """`num` float images of G for the latents RandomState(seed).randn(num, z_dim), zero labels, constant noise,
    fp32: the same images on every run and device, so that a report's rows stay comparable. G runs where its
    weights are; the images come back on the CPU."""
    device = module_device(G)
    z = torch.from_numpy(np.random.RandomState(seed).randn(num, G.z_dim).astype(np.float32)).to(device)
    with torch.no_grad():
        return torch.cat([G(part, torch.zeros([len(part), G.c_dim], device=device), noise_mode='const',
                            force_fp32=True).cpu() for part in z.split(batch)])


def feature_moments(detector: FeatureDetector, images: torch.Tensor, batch: int = 128
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (sample) covariance of the detector's features of float images in [-1, 1], float64, as
    gan_prune.metrics.compute.fid_from_moments takes them."""
    with torch.no_grad():
        feats = torch.cat([detector.features(float_to_uint8(part)) for part in images.split(batch)])
    values = feats.double().numpy()
    return values.mean(axis=0), np.cov(values, rowvar=False)
