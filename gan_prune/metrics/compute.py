"""FID, KID and precision/recall of a generator against a dataset or against a teacher network's samples.

Conventions (those of StyleGAN2-ADA's metrics, so Inception numbers are comparable with theirs):
- generated images come from `G(z=z, c=c)` with noise_mode 'random' (force_fp32 off CUDA, where float16 is
  20-30x slower), c drawn from the dataset's labels (zeros [N, 0] when unconditional), converted with
  `(img * 127.5 + 128).clamp(0, 255).to(uint8)`; 1-channel images are repeated to 3 by the detector;
- FID: Frechet distance of two Gaussians (mean, population covariance), matrix square root with scipy, real part;
- KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over 100 random
  subsets of at most 1000 samples per side;
- precision/recall: k-NN radii (k = 3) in the detector's feature space (Kynkaanniemi et al. 2019), on two sets
  of equal size (the larger one is subsampled), as in that paper.
With any detector other than Inception the results are keyed and labelled with its name ("FD (effnet-lite0)").
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.linalg
import torch

from gan_prune.defaults import METRICS
from gan_prune.core.device import module_device, resolve_device
from gan_prune.core.images import float_to_uint8
from gan_prune.errors import GanPruneError
from gan_prune.registry import Registry
from gan_prune.metrics import stats as stats_mod
from gan_prune.metrics.detectors import Detector, build_detector

# A metric is a function (generated, reference, MetricOptions) -> one float per declared result. It declares
# `results` (its result keys, before the detector suffix), `needs_features` (every feature vector is kept, not
# only the mean and covariance) and `label` (the column heading of its first result).
METRIC_REGISTRY: Registry[Sequence[float]] = Registry('metric')
# Sampling convention of the cached teacher statistics; bump it when generator sampling changes.
GENERATOR_SAMPLING = 'z-randomstate-f32,noise-random,u8-127.5+128,v1'


# ----------------------------------------------------------------------------------------------------------
# The metrics themselves, on features or moments

def fid_from_moments(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) of two Gaussians."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise GanPruneError(f'cannot compare statistics of different feature sizes: {mu1.shape} vs {mu2.shape}')
    with warnings.catch_warnings():
        # Few samples make the covariances singular; scipy then warns on every call, the result stays usable.
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.all(np.isfinite(covmean)):
            # Nudge both covariances off the singular set and retry.
            eps = 1e-6 * np.eye(cov1.shape[0])
            covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(np.real(covmean)))


def _cubic_kernel(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    k = a @ b.T / d + 1
    return k * k * k  # much faster than ** 3 on large float64 matrices


def kid_from_features(gen_features: np.ndarray, real_features: np.ndarray, num_subsets: int = 100,
                      max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: mean over subsets of the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    x_all, y_all = np.asarray(gen_features, np.float64), np.asarray(real_features, np.float64)
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), max_subset_size)
    if m < 2:
        raise GanPruneError(f'KID needs at least 2 samples on each side; got {len(x_all)} generated and '
                            f'{len(y_all)} reference')
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx, kyy, kxy = _cubic_kernel(x, x, d), _cubic_kernel(y, y, d), _cubic_kernel(x, y, d)
        # Within-set sums leave out the diagonal (i == j): that is what makes the estimator unbiased.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kxy.sum() / (m * m)
    return float(total / num_subsets)


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0).sqrt_()


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (the row itself, at distance 0, is skipped)."""
    return torch.cat([_pairwise_distances(x[i:i + chunk], x).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(x), chunk)])


def _fraction_covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Share of queries inside at least one hypersphere (centre, radius)."""
    inside = [(_pairwise_distances(queries[i:i + chunk], centres) <= radii[None, :]).any(dim=1)
              for i in range(0, len(queries), chunk)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real_features: np.ndarray, gen_features: np.ndarray, k: int = 3, seed: int = 0,
                     device: str | torch.device = 'cpu', chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN hyperspheres.

    precision: share of generated samples inside the real manifold; recall: share of real samples inside the
    generated manifold. The larger set is subsampled (with `seed`) to the size of the smaller one.
    """
    real, gen = np.asarray(real_features, np.float32), np.asarray(gen_features, np.float32)
    n = min(len(real), len(gen))
    if n <= k:
        raise GanPruneError(f'precision/recall with k={k} needs more than {k} samples on each side; '
                            f'got {len(gen)} generated and {len(real)} reference')
    rng = np.random.RandomState(seed)
    if len(real) > n:
        real = real[np.sort(rng.choice(len(real), n, replace=False))]
    if len(gen) > n:
        gen = gen[np.sort(rng.choice(len(gen), n, replace=False))]
    real_t, gen_t = torch.from_numpy(real).to(device), torch.from_numpy(gen).to(device)
    with torch.inference_mode():
        precision = _fraction_covered(gen_t, real_t, _knn_radii(real_t, k, chunk), chunk)
        recall = _fraction_covered(real_t, gen_t, _knn_radii(gen_t, k, chunk), chunk)
    return precision, recall


@dataclass(frozen=True)
class MetricOptions:
    """What a metric may read besides the two sets of features."""
    seed: int = METRICS['seed']
    device: torch.device = torch.device('cpu')
    kid_subsets: int = METRICS['kid_subsets']
    kid_subset_size: int = METRICS['kid_subset_size']
    pr_neighbours: int = METRICS['pr_neighbours']


@METRIC_REGISTRY.register('fid', results=('fid',), needs_features=False, label='FID')
def fid_metric(gen: stats_mod.FeatureStats, ref: stats_mod.FeatureStats, opts: MetricOptions) -> list[float]:
    (mu_gen, cov_gen), (mu_ref, cov_ref) = gen.mean_cov(), ref.mean_cov()
    return [fid_from_moments(mu_gen, cov_gen, mu_ref, cov_ref)]


@METRIC_REGISTRY.register('kid', results=('kid',), needs_features=True, label='KID')
def kid_metric(gen: stats_mod.FeatureStats, ref: stats_mod.FeatureStats, opts: MetricOptions) -> list[float]:
    return [kid_from_features(gen.features(), ref.features(), opts.kid_subsets, opts.kid_subset_size,
                              seed=opts.seed)]


@METRIC_REGISTRY.register('pr', results=('precision', 'recall'), needs_features=True, label='Precision')
def precision_recall_metric(gen: stats_mod.FeatureStats, ref: stats_mod.FeatureStats,
                            opts: MetricOptions) -> list[float]:
    precision, recall = precision_recall(ref.features(), gen.features(), k=opts.pr_neighbours, seed=opts.seed,
                                         device=opts.device)
    return [precision, recall]


# ----------------------------------------------------------------------------------------------------------
# Names

def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """'fid,kid' or ['fid', 'kid'] -> validated, de-duplicated list in the given order."""
    items = metrics.split(',') if isinstance(metrics, str) else list(metrics)
    names = []
    for item in (s.strip().lower() for s in items):
        if not item:
            continue
        if item not in METRIC_REGISTRY:
            raise GanPruneError(f'unknown metric {item!r}; choose from: {", ".join(METRIC_REGISTRY.names())}')
        if item not in names:
            names.append(item)
    if not names:
        raise GanPruneError(f'no metric requested; choose from: {", ".join(METRIC_REGISTRY.names())}')
    return names


def result_keys(metric: str, detector_name: str, is_inception: bool) -> list[str]:
    """Keys of one metric's results: 'fid', 'kid', 'precision'/'recall', with '_<detector>' unless Inception."""
    base = list(METRIC_REGISTRY.info(metric)['results'])
    return base if is_inception else [f'{b}_{detector_name}' for b in base]


def display_name(key: str) -> str:
    """'fid' -> 'FID', 'fid_effnet-lite0' -> 'FD (effnet-lite0)', 'kid_x' -> 'KID (x)', 'recall' -> 'Recall'."""
    base, _, detector = key.partition('_')
    labels = {'precision': 'Precision', 'recall': 'Recall'}
    labels.update({METRIC_REGISTRY.info(name)['results'][0]: METRIC_REGISTRY.info(name)['label']
                   for name in METRIC_REGISTRY})
    label = labels.get(base, base)
    if not detector:
        return label
    # The Frechet distance is only "FID" in Inception features; elsewhere it is a Frechet distance (FD).
    return f'{"FD" if base == "fid" else label} ({detector})'


# ----------------------------------------------------------------------------------------------------------
# Images: from a dataset, from a generator

images_to_uint8 = float_to_uint8


def dataset_image_batches(dataset, num: int, batch: int) -> Iterator[torch.Tensor]:
    """The first `num` images of an ImageDataset, as uint8 NCHW batches."""
    for start in range(0, num, batch):
        images = [np.asarray(dataset[i][0]) for i in range(start, min(start + batch, num))]
        yield torch.from_numpy(np.stack(images))


def _dataset_label(dataset, index: int) -> np.ndarray:
    get_label = getattr(dataset, 'get_label', None)
    return np.asarray(get_label(index) if callable(get_label) else dataset[index][1], dtype=np.float32)


def make_label_sampler(c_dim: int, dataset=None) -> Callable[[int, np.random.RandomState], torch.Tensor]:
    """Labels for generation: zeros [n, 0] when unconditional, the dataset's labels, else uniform one-hot classes."""
    if c_dim == 0:
        return lambda n, rng: torch.zeros([n, 0])
    if dataset is not None:
        if not getattr(dataset, 'has_labels', False) or getattr(dataset, 'label_dim', None) != c_dim:
            raise GanPruneError(f'the generator is conditional (c_dim={c_dim}) but the dataset has no labels of that '
                                'size; use a dataset.json with matching labels, or --ref-pkl')
        return lambda n, rng: torch.from_numpy(
            np.stack([_dataset_label(dataset, int(i)) for i in rng.randint(len(dataset), size=n)]))
    return lambda n, rng: torch.nn.functional.one_hot(torch.from_numpy(rng.randint(c_dim, size=n)), c_dim).float()


def _generator_kwargs(device: torch.device) -> dict:
    kwargs: dict[str, object] = dict(noise_mode='random')
    if device.type != 'cuda':
        kwargs['force_fp32'] = True
    return kwargs


def generator_image_batches(G: torch.nn.Module, num: int, batch: int, seed: int,
                            label_sampler: Callable[[int, np.random.RandomState], torch.Tensor],
                            device: torch.device) -> Iterator[torch.Tensor]:
    """`num` uint8 images from G. z comes from numpy's RandomState(seed), so the images do not depend on `batch`."""
    z_rng, label_rng = np.random.RandomState(seed), np.random.RandomState(seed + 0x5EED)
    kwargs = _generator_kwargs(device)
    for start in range(0, num, batch):
        n = min(batch, num - start)
        z = torch.from_numpy(z_rng.randn(n, G.z_dim).astype(np.float32)).to(device)
        c = label_sampler(n, label_rng).to(device)
        with torch.no_grad():
            img = G(z=z, c=c, **kwargs)
        yield images_to_uint8(img)


@contextlib.contextmanager
def _eval_and_seeded(G: torch.nn.Module, seed: int, device: torch.device):
    """Eval mode (no w_avg updates) and a seeded noise RNG, restoring the caller's mode and RNG state after."""
    was_training = G.training
    devices = [device.index or 0] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        G.eval()
        try:
            yield
        finally:
            G.train(was_training)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', disable=not enabled, leave=False, dynamic_ncols=True)


def generator_stats(G: torch.nn.Module, detector: Detector, num: int, batch: int, seed: int,
                    label_sampler, device: torch.device, capture_all: bool, progress: bool = False,
                    desc: str = 'generated images') -> stats_mod.FeatureStats:
    """Detector statistics of `num` images sampled from G."""
    fstats = stats_mod.FeatureStats(capture_all=capture_all, max_items=num)
    with _eval_and_seeded(G, seed, device), _progress_bar(num, desc, progress) as bar:
        stats_mod.accumulate(generator_image_batches(G, num, batch, seed, label_sampler, device), detector, fstats,
                             bar.update)
    return fstats


def dataset_stats(dataset, detector: Detector, num: int, batch: int, capture_all: bool,
                  progress: bool = False) -> stats_mod.FeatureStats:
    """Detector statistics of the first `num` images of a dataset."""
    fstats = stats_mod.FeatureStats(capture_all=capture_all, max_items=num)
    with _progress_bar(num, 'real images', progress) as bar:
        stats_mod.accumulate(dataset_image_batches(dataset, num, batch), detector, fstats, bar.update)
    return fstats


# ----------------------------------------------------------------------------------------------------------
# Entry point used by the CLI and the training loop

def open_dataset(data, resolution: int | None = None, use_labels: bool = False):
    """A dataset path (zip or folder) -> ImageDataset; an ImageDataset-like object is returned as is."""
    if not isinstance(data, (str, bytes)) and not hasattr(data, '__fspath__'):
        return data
    from gan_prune.data.datasets import ImageDataset
    path = os.fspath(data)
    if not os.path.exists(path):
        raise GanPruneError(f'dataset not found: {path}; pass a zip or folder of images')
    return ImageDataset(path, resolution=resolution, use_labels=use_labels)


def _dataset_path(dataset) -> str | None:
    for attr in ('path', '_path'):
        value = getattr(dataset, attr, None)
        if isinstance(value, str):
            return value
    return None


def compute_metrics(G: torch.nn.Module, metrics: str | Sequence[str], data=None, ref_G=None,
                    detector: str | Detector = METRICS['detector'], num_gen: int = METRICS['num_gen'],
                    batch: int = METRICS['batch'], seed: int = METRICS['seed'], num_real: int | None = METRICS['num_real'],
                    num_ref: int | None = METRICS['num_ref'], device: str | torch.device | None = None,
                    cache: bool = METRICS['cache'], cache_dir: str | None = None, progress: bool = False,
                    kid_subsets: int = METRICS['kid_subsets'], kid_subset_size: int = METRICS['kid_subset_size'],
                    pr_neighbours: int = METRICS['pr_neighbours'],
                    log: Callable[[str], None] | None = None, gen_cache: dict | None = None,
                    trust: bool = False) -> dict[str, float]:
    """Compute FID / KID / precision-recall of generator G against `data` or against teacher `ref_G`.

    G: a StyleGAN2-ADA-style generator (z_dim, c_dim, forward(z=, c=, noise_mode=, force_fp32=)); it is used in
    eval mode and left in the mode it came in. data: dataset path or ImageDataset. ref_G: a teacher generator
    module or a pickle source (its G_ema), sampled with seed + 1 so that its samples are independent of G's.
    detector: a spec ('effnet-lite0', 'inception', 'inception:FILE') or a ready Detector (reuse it across calls).
    Returns {key: value}: keys 'fid', 'kid', 'precision', 'recall' for Inception, else suffixed with
    '_<detector name>' (e.g. 'fid_effnet-lite0'). Reference statistics are cached on disk when `cache`.
    gen_cache: a dict the caller keeps for one G across calls (say, against the data and then against the
    teacher), so that G's samples go through the detector once.
    trust: let an Inception file the toolkit does not know by checksum (TorchScript) and a `ref_G` pickle run
    code (--trust-pickle).
    """
    names = parse_metrics(metrics)
    if (data is None) == (ref_G is None):
        raise GanPruneError('metrics need exactly one reference: a dataset (--data) or a teacher network (--ref-pkl)')
    if num_gen < 2 or batch < 1:
        raise GanPruneError(f'need num_gen >= 2 and batch >= 1; got num_gen={num_gen}, batch={batch}')
    say = log or (lambda msg: None)
    device = resolve_device(device) if device is not None else module_device(G)
    if not isinstance(detector, Detector):
        detector = build_detector(detector, device=device, cache_dir=cache_dir, trust=trust)
    need_features = any(METRIC_REGISTRY.info(name)['needs_features'] for name in names)
    store = stats_mod.StatsCache(cache_dir, enabled=cache)

    if data is not None:
        dataset = open_dataset(data, resolution=G.img_resolution, use_labels=G.c_dim > 0)
        if getattr(dataset, 'resolution', G.img_resolution) != G.img_resolution:
            raise GanPruneError(f'the dataset is {dataset.resolution} px but the generator makes '
                                f'{G.img_resolution} px images; use a dataset at the generator\'s resolution')
        n_real = len(dataset) if num_real is None else min(int(num_real), len(dataset))
        if n_real < 2:
            raise GanPruneError('the dataset has fewer than 2 images; metrics need more')
        label_sampler = make_label_sampler(G.c_dim, dataset)
        compute_ref = lambda: dataset_stats(dataset, detector, n_real, batch, need_features, progress)  # noqa: E731
        path = _dataset_path(dataset)
        if path is None:
            store.enabled = False
            key = {}
        else:
            key = dict(kind='dataset', dataset=stats_mod.dataset_fingerprint(path), detector=detector.identity(),
                       num=n_real)
        what = f'{n_real} real images'
    else:
        if isinstance(ref_G, (str, bytes)) or hasattr(ref_G, '__fspath__'):
            import gan_prune
            ref_G = gan_prune.load_network_pkl(ref_G, trust=trust)['G_ema']
        ref_G = ref_G.to(device)
        if (ref_G.z_dim, ref_G.c_dim, ref_G.img_resolution) != (G.z_dim, G.c_dim, G.img_resolution):
            raise GanPruneError('the reference network differs from the evaluated one in z_dim, c_dim or resolution; '
                                'compare a student with its own teacher')
        n_ref = num_gen if num_ref is None else int(num_ref)
        ref_seed = seed + 1
        label_sampler = make_label_sampler(G.c_dim)
        compute_ref = lambda: generator_stats(ref_G, detector, n_ref, batch, ref_seed,  # noqa: E731
                                              make_label_sampler(ref_G.c_dim), device, need_features, progress,
                                              desc='teacher images')
        key = dict(kind='generator', generator=stats_mod.module_fingerprint(ref_G), detector=detector.identity(),
                   num=n_ref, seed=ref_seed, labels='onehot-uniform' if G.c_dim else 'none',
                   sampling=GENERATOR_SAMPLING, g_kwargs=_generator_kwargs(device))
        what = f'{n_ref} teacher images'

    ref_stats = store.get_or_compute(key, need_features, compute_ref)
    say(f'reference statistics ({what}, {detector.name}): '
        + {'hit': 'from cache', 'miss': 'computed and cached', 'disabled': 'computed'}[store.last_event])
    labels = ('dataset' if data is not None else 'uniform') if G.c_dim else 'none'  # conditional G: other samples
    gen_key = (num_gen, batch, seed, repr(sorted(detector.identity().items())), labels)
    gen_stats = gen_cache.get(gen_key) if gen_cache is not None else None
    if gen_stats is None or (need_features and not gen_stats.capture_all):
        gen_stats = generator_stats(G, detector, num_gen, batch, seed, label_sampler, device, need_features, progress)
        if gen_cache is not None:
            gen_cache[gen_key] = gen_stats

    if 'fid' in names and detector.dim and min(num_gen, ref_stats.num_items) <= detector.dim:
        say(f'note: {min(num_gen, ref_stats.num_items)} samples for {detector.dim}-d features: the covariances are '
            'singular and the Frechet distance is strongly biased; use more samples for numbers worth comparing')
    opts = MetricOptions(seed=seed, device=device, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                         pr_neighbours=pr_neighbours)
    results: dict[str, float] = {}
    for name in names:
        keys = result_keys(name, detector.name, detector.is_inception)
        values = METRIC_REGISTRY.build(name, gen_stats, ref_stats, opts)
        results.update({key: float(value) for key, value in zip(keys, values)})
    return results
