"""Collect scalar training statistics from anywhere in the code and read them out periodically.

    training_stats.report('Loss/G', loss)          # any number of values, any time, any module
    collector = training_stats.Collector(regex='Loss/.*')
    collector.update()                               # once per reporting interval
    collector.mean('Loss/G'), collector.std('Loss/G'), collector.num('Loss/G')

Values are accumulated as count, sum and sum of squares in float64. With torch.distributed initialised and
init_multiprocessing() called, Collector.update() sums those moments over all processes.
"""
from __future__ import annotations

import re
import threading
from typing import Dict, List, Optional

import numpy as np
import torch

import dnnlib

_lock = threading.Lock()
_rank = 0
_sync_device: Optional[torch.device] = None
_totals: Dict[str, torch.Tensor] = {}  # name -> float64 [count, sum, sum of squares], on the CPU


def init_multiprocessing(rank: int, sync_device: Optional[torch.device]) -> None:
    """Tell the collector this process's rank and the device used to sum statistics across processes
    (None: no cross-process sync)."""
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device


def _moments(value) -> torch.Tensor:
    values = torch.as_tensor(value).detach().flatten().to(device='cpu', dtype=torch.float64)
    values = values[torch.isfinite(values)] if values.numel() else values
    return torch.stack([torch.tensor(float(values.numel()), dtype=torch.float64), values.sum(), values.square().sum()])


def report(name: str, value):
    """Record `value` (a number, array or tensor of any shape; NaN/inf ignored) under `name`; return `value`."""
    moments = _moments(value)
    with _lock:
        if name in _totals:
            _totals[name] += moments
        else:
            _totals[name] = moments
    return value


def report0(name: str, value):
    """Like report(), but only rank 0 contributes values (other ranks still register the name)."""
    report(name, value if _rank == 0 else [])
    return value


class Collector:
    """Reads the statistics reported since the previous update() for every name matching `regex`.

    keep_previous: names with no new values keep their last statistics instead of reading as empty.
    """

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen: Dict[str, torch.Tensor] = {}    # totals at the previous update()
        self._latest: Dict[str, torch.Tensor] = {}  # moments of the last interval
        self.update()
        self._latest.clear()

    def names(self) -> List[str]:
        """Matching names reported so far, sorted."""
        with _lock:
            return sorted(name for name in _totals if self._regex.fullmatch(name))

    def update(self) -> None:
        """Take the values reported since the previous call as the current interval."""
        names = self.names()
        if not names:
            return
        with _lock:
            totals = torch.stack([_totals[name] for name in names])
        if _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = totals.to(_sync_device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        if not self._keep_previous:
            self._latest.clear()
        for name, total in zip(names, totals):
            delta = total - self._seen.get(name, torch.zeros(3, dtype=torch.float64))
            self._seen[name] = total
            if delta[0] > 0 or not self._keep_previous:
                self._latest[name] = delta

    def num(self, name: str) -> int:
        """Number of values of `name` in the last interval."""
        return int(self._latest[name][0]) if name in self._latest else 0

    def mean(self, name: str) -> float:
        """Mean of `name` in the last interval (NaN if there were no values)."""
        count = self.num(name)
        return float(self._latest[name][1] / count) if count else float('nan')

    def std(self, name: str) -> float:
        """Standard deviation of `name` in the last interval (NaN if there were no values)."""
        count = self.num(name)
        if not count:
            return float('nan')
        mean = float(self._latest[name][1] / count)
        return float(np.sqrt(max(float(self._latest[name][2] / count) - mean ** 2, 0.0)))

    def as_dict(self) -> dnnlib.EasyDict:
        """{name: EasyDict(num, mean, std)} for every name of the last interval."""
        return dnnlib.EasyDict({name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                                for name in self._latest})

    def __getitem__(self, name: str) -> float:
        return self.mean(name)
