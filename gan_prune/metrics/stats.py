"""Streamed feature statistics and the on-disk cache of reference statistics.

`FeatureStats` accumulates detector features batch by batch: the mean and covariance (float64 running sums, for
FID) and, when asked, the features themselves (float32 bank, for KID and precision/recall). Reference statistics
(a dataset's, or a teacher network's samples) are cached as .npz files under <cache_dir>/metrics/, keyed by
everything that changes them: the dataset's path, size and mtime (or a hash of the network's tensors), the
detector (name, weights file, preprocessing), the number of items and the sampling options.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable

import numpy as np
import torch

from gan_prune.core.cache import cache_dir
from gan_prune.core.fingerprint import module_fingerprint as core_module_fingerprint
from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write

STATS_FORMAT_VERSION = 1


def default_cache_dir() -> str:
    """The toolkit's cache directory (gan_prune.core.cache.cache_dir)."""
    return cache_dir()


class FeatureStats:
    """Running mean/covariance of feature vectors (float64), optionally keeping every feature (float32)."""

    def __init__(self, capture_all: bool = False, max_items: int | None = None):
        self.capture_all = capture_all
        self.max_items = max_items
        self.num_items = 0
        self.dim: int | None = None
        self._sum: np.ndarray | None = None
        self._outer_sum: np.ndarray | None = None
        self._bank: list[np.ndarray] = []
        self._mean_cov: tuple[np.ndarray, np.ndarray] | None = None  # set when loaded from a file
        self.meta: dict = {}

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, features: np.ndarray | torch.Tensor) -> None:
        """Add a [N, D] batch; anything beyond max_items is dropped."""
        if self._mean_cov is not None:
            raise GanPruneError('statistics loaded from a file cannot be extended; compute them again')
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features)
        if features.ndim != 2:
            raise GanPruneError(f'features must be [N, D]; got shape {features.shape}')
        if self.max_items is not None:
            features = features[:max(self.max_items - self.num_items, 0)]
        if features.shape[0] == 0:
            return
        if self.dim is None:
            self.dim = features.shape[1]
            self._sum = np.zeros([self.dim], dtype=np.float64)
            self._outer_sum = np.zeros([self.dim, self.dim], dtype=np.float64)
        elif features.shape[1] != self.dim:
            raise GanPruneError(f'feature dimension changed from {self.dim} to {features.shape[1]}')
        x64 = features.astype(np.float64)
        self._sum += x64.sum(axis=0)
        self._outer_sum += x64.T @ x64
        if self.capture_all:
            self._bank.append(features.astype(np.float32))
        self.num_items += features.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] (population form, divided by N), both float64."""
        if self._mean_cov is not None:
            return self._mean_cov
        if self.num_items == 0:
            raise GanPruneError('no features were collected (empty dataset or num=0)')
        assert self._sum is not None and self._outer_sum is not None  # set by the first append
        mean = self._sum / self.num_items
        cov = self._outer_sum / self.num_items - np.outer(mean, mean)
        return mean, cov

    def features(self) -> np.ndarray:
        """All collected features [N, D] float32 (only with capture_all=True)."""
        if not self.capture_all:
            raise GanPruneError('these statistics did not keep the individual features (capture_all=False)')
        if not self._bank:
            return np.zeros([0, self.dim or 0], dtype=np.float32)
        if len(self._bank) > 1:
            self._bank = [np.concatenate(self._bank, axis=0)]
        return self._bank[0]

    def save(self, path: str) -> None:
        """Write mean, cov, count, meta (and features) to an .npz, atomically."""
        mean, cov = self.mean_cov()
        arrays = dict(mean=mean, cov=cov, num_items=np.int64(self.num_items),
                      meta=np.array(json.dumps(self.meta, sort_keys=True)),
                      format_version=np.int64(STATS_FORMAT_VERSION))
        if self.capture_all:
            arrays['features'] = self.features()
        _atomic_savez(path, arrays)

    @classmethod
    def load(cls, path: str) -> 'FeatureStats':
        with np.load(path, allow_pickle=False) as f:
            if int(f['format_version']) != STATS_FORMAT_VERSION:
                raise ValueError(f'unsupported statistics format in {path}')
            stats = cls(capture_all='features' in f.files)
            stats._mean_cov = (f['mean'].astype(np.float64), f['cov'].astype(np.float64))
            stats.num_items = int(f['num_items'])
            stats.dim = int(f['mean'].shape[0])
            stats.meta = json.loads(str(f['meta']))
            if stats.capture_all:
                stats._bank = [f['features'].astype(np.float32)]
        return stats


def _atomic_savez(path: str, arrays: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def accumulate(batches: Iterable[torch.Tensor], detector, stats: FeatureStats,
               progress: Callable[[int], None] | None = None) -> FeatureStats:
    """Run the detector over uint8 image batches until the iterator ends or `stats` is full."""
    for images in batches:
        stats.append(detector.features(images))
        if progress is not None:
            progress(int(images.shape[0]))
        if stats.is_full():
            break
    return stats


# ----------------------------------------------------------------------------------------------------------
# Cache keys

def dataset_fingerprint(path: str) -> dict:
    """Path, total size and newest mtime of a dataset zip or folder (a changed dataset gets a new cache entry)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        size, mtime, count = 0, 0, 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                st = os.stat(os.path.join(root, name))
                size, mtime, count = size + st.st_size, max(mtime, int(st.st_mtime)), count + 1
        return dict(path=path, size=size, mtime=mtime, files=count)
    st = os.stat(path)
    return dict(path=path, size=st.st_size, mtime=int(st.st_mtime))


def module_fingerprint(module: torch.nn.Module) -> dict:
    """The cache key part of a network: its class name and the sha256 of its weights."""
    return dict(cls=type(module).__name__, sha256=core_module_fingerprint(module))


def cache_path(key: dict, cache_dir: str | None = None) -> str:
    """<cache_dir>/metrics/<kind>-<detector>-<hash of the key>.npz"""
    text = json.dumps(dict(key, format_version=STATS_FORMAT_VERSION), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    detector = str(key.get('detector', {}).get('name', 'detector')).replace(os.sep, '_')
    return os.path.join(cache_dir or default_cache_dir(), 'metrics', f'{key.get("kind", "stats")}-{detector}-{digest}.npz')


class StatsCache:
    """Reference statistics on disk. A hit needs the same key; if features are needed, the entry must have them."""

    # Entries read recently in this process, so a training loop that evaluates every few thousand images does not
    # re-read a large feature bank from disk each time: path -> (file mtime_ns, stats). Kept small on purpose.
    _recent: dict[str, tuple[int, FeatureStats]] = {}
    _RECENT_MAX = 2

    def __init__(self, cache_dir: str | None = None, enabled: bool = True):
        self.cache_dir = cache_dir or default_cache_dir()
        self.enabled = enabled
        self.last_event = ''  # 'hit', 'miss' or 'disabled' after each get_or_compute (for logs and tests)

    def _read(self, path: str) -> FeatureStats | None:
        mtime = os.stat(path).st_mtime_ns
        recent = self._recent.get(path)
        if recent is not None and recent[0] == mtime:
            return recent[1]
        try:
            stats = FeatureStats.load(path)
        except Exception:  # a truncated or foreign file: recompute and overwrite it
            return None
        self._remember(path, mtime, stats)
        return stats

    @classmethod
    def _remember(cls, path: str, mtime: int, stats: FeatureStats) -> None:
        cls._recent.pop(path, None)
        cls._recent[path] = (mtime, stats)
        while len(cls._recent) > cls._RECENT_MAX:
            cls._recent.pop(next(iter(cls._recent)))

    def get_or_compute(self, key: dict, need_features: bool, compute: Callable[[], FeatureStats]) -> FeatureStats:
        if not self.enabled:
            self.last_event = 'disabled'
            return compute()
        path = cache_path(key, self.cache_dir)
        if os.path.isfile(path):
            stats = self._read(path)
            if stats is not None and stats.meta.get('key') == json.loads(json.dumps(key, default=str)) \
                    and (stats.capture_all or not need_features):
                self.last_event = 'hit'
                return stats
        self.last_event = 'miss'
        stats = compute()
        stats.meta = dict(stats.meta, key=json.loads(json.dumps(key, default=str)))
        try:
            stats.save(path)
        except OSError as e:
            raise GanPruneError(f'cannot write reference statistics to {path} ({e.strerror}); '
                                'pass a writable --cache-dir or --no-cache') from e
        self._remember(path, os.stat(path).st_mtime_ns, stats)
        return stats
