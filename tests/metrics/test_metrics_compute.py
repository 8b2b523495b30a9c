"""FID, KID, precision/recall on known distributions, and compute_metrics end to end on a toy generator."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_prune.data.datasets import write_dataset_zip
from gan_prune.errors import GanPruneError
from gan_prune.metrics import compute
from gan_prune.metrics.detectors import Detector


# ---------------------------------------------------------------------------------------------------------
# FID

def test_fid_of_a_gaussian_against_itself_is_zero():
    rng = np.random.RandomState(0)
    a = rng.randn(6, 6)
    cov = a @ a.T + np.eye(6)
    mu = rng.randn(6)
    assert abs(compute.fid_from_moments(mu, cov, mu, cov)) < 1e-8


def test_fid_closed_form_for_diagonal_gaussians():
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert compute.fid_from_moments(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_fid_closed_form_under_rotation():
    # FID is invariant to rotating both distributions: equals the diagonal closed form.
    rng = np.random.RandomState(3)
    q, _ = np.linalg.qr(rng.randn(4, 4))
    s1, s2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 0.5])
    mu1, mu2 = rng.randn(4), rng.randn(4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = compute.fid_from_moments(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fid_from_sampled_features_approaches_closed_form():
    from gan_prune.metrics.stats import FeatureStats
    rng = np.random.RandomState(1)
    a, b = FeatureStats(), FeatureStats()
    a.append(rng.randn(20000, 2))
    b.append(rng.randn(20000, 2) * 2 + [3, 0])
    expected = 9 + 2 * (1 - 2) ** 2
    assert compute.fid_from_moments(*a.mean_cov(), *b.mean_cov()) == pytest.approx(expected, rel=0.05)


def test_fid_with_singular_covariances_is_finite():
    rng = np.random.RandomState(2)
    x = rng.randn(3, 8)  # 3 samples in 8-d: rank-deficient covariance
    value = compute.fid_from_moments(x.mean(0), np.cov(x.T), x.mean(0) + 1, np.cov(x.T))
    assert np.isfinite(value) and value == pytest.approx(8.0, abs=1e-2)


# ---------------------------------------------------------------------------------------------------------
# KID

def test_kid_near_zero_for_same_distribution_and_positive_for_shifted():
    rng = np.random.RandomState(0)
    x, y = rng.randn(400, 16), rng.randn(400, 16)
    same = compute.kid_from_features(x, y, num_subsets=20, max_subset_size=200)
    shifted = compute.kid_from_features(x, y + 1.0, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)


def test_kid_matches_explicit_unbiased_mmd_on_one_subset():
    rng = np.random.RandomState(4)
    x, y = rng.randn(7, 3), rng.randn(7, 3) + 0.3
    d = 3

    def k(a, b):
        return (a @ b / d + 1) ** 3

    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    # With subsets as large as the sets, every subset is the whole set (in some order).
    got = compute.kid_from_features(x, y, num_subsets=3, max_subset_size=1000)
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_needs_two_samples():
    with pytest.raises(GanPruneError, match='at least 2'):
        compute.kid_from_features(np.zeros([1, 3]), np.zeros([5, 3]))


# ---------------------------------------------------------------------------------------------------------
# Precision / recall

def test_precision_recall_identical_sets_is_one_and_disjoint_is_zero():
    rng = np.random.RandomState(0)
    x = rng.randn(300, 8).astype(np.float32)
    assert compute.precision_recall(x, x.copy(), k=3, chunk=64) == (1.0, 1.0)
    assert compute.precision_recall(x, x + 100.0, k=3, chunk=64) == (0.0, 0.0)


def test_precision_recall_detects_mode_collapse():
    # Generated samples all from a small region of the real distribution: high precision, low recall.
    rng = np.random.RandomState(1)
    real = rng.randn(500, 2).astype(np.float32)
    gen = (rng.randn(500, 2) * 0.1).astype(np.float32)
    precision, recall = compute.precision_recall(real, gen, k=3)
    assert precision > 0.9 and recall < 0.3


def test_precision_recall_subsamples_to_equal_sizes_and_needs_k_plus_one():
    rng = np.random.RandomState(2)
    real = rng.randn(400, 4).astype(np.float32)
    p, r = compute.precision_recall(real, real[:100].copy(), k=3)
    assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0
    with pytest.raises(GanPruneError, match='more than 3'):
        compute.precision_recall(real, real[:3], k=3)


# ---------------------------------------------------------------------------------------------------------
# Names

def test_metric_names_and_keys():
    assert compute.parse_metrics('fid, KID,pr,fid') == ['fid', 'kid', 'pr']
    with pytest.raises(GanPruneError, match='unknown metric'):
        compute.parse_metrics('fid,is')
    assert compute.result_keys('fid', 'inception', True) == ['fid']
    assert compute.result_keys('pr', 'effnet-lite0', False) == ['precision_effnet-lite0', 'recall_effnet-lite0']
    assert compute.display_name('fid') == 'FID'
    assert compute.display_name('fid_effnet-lite0') == 'FD (effnet-lite0)'
    assert compute.display_name('kid_effnet-lite0') == 'KID (effnet-lite0)'


def test_images_to_uint8_convention():
    img = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 5.0]).view(1, 1, 1, 6)
    assert compute.images_to_uint8(img).flatten().tolist() == [0, 0, 128, 255, 255, 255]


# ---------------------------------------------------------------------------------------------------------
# compute_metrics on a toy generator and a tiny dataset

class ToyG(torch.nn.Module):
    """A generator with the StyleGAN2-ADA calling convention: mean colour from z, plus random noise."""

    def __init__(self, z_dim=4, c_dim=0, res=16, shift=0.0, noise=0.3):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, c_dim, 4, res, 3
        self.lin = torch.nn.Linear(z_dim + c_dim, 3)
        self.register_buffer('shift', torch.tensor(float(shift)))
        self.noise = noise
        self.calls = []
        torch.nn.init.eye_(self.lin.weight)
        torch.nn.init.zeros_(self.lin.bias)

    def forward(self, z, c, truncation_psi=1, noise_mode='const', force_fp32=False):
        self.calls.append(dict(noise_mode=noise_mode, training=self.training, c=c.clone()))
        colour = torch.tanh(0.5 * self.lin(torch.cat([z, c], 1))) * 0.5 + self.shift
        img = colour[:, :, None, None].expand(-1, -1, self.img_resolution, self.img_resolution)
        if noise_mode == 'random':
            img = img + self.noise * torch.randn_like(img)
        return img


class PixelDetector(Detector):
    """A cheap detector: 4x4 average-pooled pixels (48-d)."""

    name = 'pixels'
    dim = 48

    def __init__(self):
        super().__init__(torch.device('cpu'))

    def _features(self, images_uint8_rgb):
        return F.adaptive_avg_pool2d(images_uint8_rgb.float() / 255.0, 4).flatten(1)


def _toy_images(G, n, seed):
    torch.manual_seed(seed)
    z = torch.randn([n, G.z_dim])
    with torch.no_grad():
        img = G(z, torch.zeros([n, G.c_dim]), noise_mode='random')
    return compute.images_to_uint8(img).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope='module')
def toy_dataset(tmp_path_factory):
    """64 images drawn from ToyG itself, so the toy generator matches the dataset's distribution."""
    path = tmp_path_factory.mktemp('data') / 'toy.zip'
    return write_dataset_zip(str(path), _toy_images(ToyG(), 64, seed=123))


def test_compute_metrics_against_dataset(toy_dataset, tmp_path):
    G = ToyG()
    det = PixelDetector()
    common = dict(data=toy_dataset, detector=det, num_gen=64, batch=16, cache_dir=str(tmp_path))
    good = compute.compute_metrics(G, 'fid,kid,pr', **common)
    assert set(good) == {'fid_pixels', 'kid_pixels', 'precision_pixels', 'recall_pixels'}
    bad = compute.compute_metrics(ToyG(shift=0.6), ['fid', 'kid', 'pr'], **common)
    assert bad['fid_pixels'] > 10 * good['fid_pixels']
    assert bad['kid_pixels'] > 10 * abs(good['kid_pixels'])
    assert good['precision_pixels'] > 0.5 and bad['precision_pixels'] < 0.2
    assert all(call['noise_mode'] == 'random' for call in G.calls)


def test_compute_metrics_is_seeded_batch_independent_and_restores_state(toy_dataset, tmp_path):
    G = ToyG().train()
    det = PixelDetector()
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = compute.compute_metrics(G, 'fid', data=toy_dataset, detector=det, num_gen=32, batch=8, seed=5,
                                cache_dir=str(tmp_path))
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    assert G.training and not any(call['training'] for call in G.calls)  # sampled in eval mode, mode restored
    b = compute.compute_metrics(G, 'fid', data=toy_dataset, detector=det, num_gen=32, batch=32, seed=5,
                                cache_dir=str(tmp_path))
    assert a['fid_pixels'] == pytest.approx(b['fid_pixels'], rel=1e-6)
    c = compute.compute_metrics(G, 'fid', data=toy_dataset, detector=det, num_gen=32, batch=8, seed=6,
                                cache_dir=str(tmp_path))
    assert c['fid_pixels'] != a['fid_pixels']


def test_reference_statistics_are_cached(toy_dataset, tmp_path):
    det = PixelDetector()
    calls = []
    original = det._features

    def counting(images):
        calls.append(len(images))
        return original(images)

    det._features = counting
    logs = []
    kwargs = dict(data=toy_dataset, detector=det, num_gen=16, batch=16, cache_dir=str(tmp_path), log=logs.append)
    compute.compute_metrics(ToyG(), 'fid', **kwargs)
    assert sum(calls) == 64 + 16 and 'computed and cached' in logs[0]
    calls.clear()
    logs.clear()
    compute.compute_metrics(ToyG(), 'fid', **kwargs)
    assert sum(calls) == 16 and 'from cache' in logs[0]
    assert any('singular' in line for line in logs)  # 16 samples for 48-d features
    calls.clear()
    compute.compute_metrics(ToyG(), 'fid', num_real=32, **kwargs)  # another real count: another entry
    assert sum(calls) == 32 + 16


def test_compute_metrics_against_teacher(tmp_path):
    teacher = ToyG()
    det = PixelDetector()
    common = dict(ref_G=teacher, detector=det, num_gen=64, num_ref=64, batch=32, cache_dir=str(tmp_path))
    same = compute.compute_metrics(ToyG(), 'fid,pr', **common)
    worse = compute.compute_metrics(ToyG(shift=0.6), 'fid,pr', **common)
    assert worse['fid_pixels'] > 10 * same['fid_pixels']
    assert same['recall_pixels'] > worse['recall_pixels']
    # The teacher is sampled with another seed than the student: not the same images.
    assert same['fid_pixels'] > 0
    logs = []
    compute.compute_metrics(ToyG(), 'fid', log=logs.append, **common)
    assert 'from cache' in logs[0]
    with torch.no_grad():
        teacher.lin.bias += 0.01  # another teacher: its statistics are not reused
    compute.compute_metrics(ToyG(), 'fid', log=logs.append, **common)
    assert 'computed and cached' in logs[-1]


def test_gen_cache_embeds_the_samples_once(toy_dataset, tmp_path):
    det = PixelDetector()
    calls = []
    original = det._features
    det._features = lambda images: calls.append(len(images)) or original(images)
    common = dict(detector=det, num_gen=32, batch=16, cache_dir=str(tmp_path))
    plain = [compute.compute_metrics(ToyG(), 'fid,kid', data=toy_dataset, **common),
             compute.compute_metrics(ToyG(), 'fid,pr', ref_G=ToyG(shift=0.1), **common)]
    calls.clear()
    cache = {}
    G = ToyG()
    cached = [compute.compute_metrics(G, 'fid,kid', data=toy_dataset, gen_cache=cache, **common),
              compute.compute_metrics(G, 'fid,pr', ref_G=ToyG(shift=0.1), gen_cache=cache, **common)]
    assert cached == plain
    assert sum(calls) == 32  # references came from the disk cache; G's 32 samples went through once
    assert len(G.calls) == 2  # two batches of 16, in the first call only


def test_conditional_generator_gets_dataset_labels(tmp_path):
    G = ToyG(c_dim=3)
    labels = [0, 1, 2, 1] * 4
    data = write_dataset_zip(str(tmp_path / 'cond.zip'), _toy_images(ToyG(), 16, seed=1), labels=labels)
    compute.compute_metrics(G, 'fid', data=data, detector=PixelDetector(), num_gen=16, batch=8, cache=False)
    cs = torch.cat([call['c'] for call in G.calls])
    assert cs.shape == (16, 3) and torch.all(cs.sum(1) == 1)
    with pytest.raises(GanPruneError, match='conditional'):
        data2 = write_dataset_zip(str(tmp_path / 'float.zip'), _toy_images(ToyG(), 4, seed=1),
                                  labels=[[0.5]] * 4)
        compute.compute_metrics(G, 'fid', data=data2, detector=PixelDetector(), num_gen=4, cache=False)


def test_compute_metrics_argument_errors(toy_dataset):
    with pytest.raises(GanPruneError, match='exactly one reference'):
        compute.compute_metrics(ToyG(), 'fid', detector=PixelDetector(), num_gen=4)
    with pytest.raises(GanPruneError, match='exactly one reference'):
        compute.compute_metrics(ToyG(), 'fid', data=toy_dataset, ref_G=ToyG(), detector=PixelDetector())
    with pytest.raises(GanPruneError, match='px'):
        compute.compute_metrics(ToyG(res=8), 'fid', data=toy_dataset, detector=PixelDetector(), num_gen=4,
                                cache=False)
    with pytest.raises(GanPruneError, match='differs'):
        compute.compute_metrics(ToyG(), 'fid', ref_G=ToyG(z_dim=5), detector=PixelDetector(), num_gen=4,
                                cache=False)
