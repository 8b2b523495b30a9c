import math

import numpy as np
import pytest
import torch
from torch import nn

from gan_prune.distill.dime import (DiMELoss, KernelMMD, MomentsDiME, mmd2_unbiased, parse_dime_spec,
                                    resolve_weight_files)
from gan_prune.distill.embedders import Embedder
from gan_prune.distill.teacher_stats import EmbeddingStats, TeacherStats
from gan_prune.errors import GanPruneError


class PooledConvEmbedder(Embedder):
    """A small frozen embedder for fast tests: conv, ReLU, global pooling."""

    def __init__(self, dim=6, name='test-conv', seed=0):
        super().__init__(name, dim, normalize=False)
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.freeze()

    def embed(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------------ moments

def test_moments_hand_value():
    est = MomentsDiME(mu1=np.zeros(2), mu2=np.zeros(2))
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # batch means (2, 3) -> 2.5; batch mean squares (5, 10) -> 7.5
    assert est(student).item() == pytest.approx(10.0)
    est2 = MomentsDiME(mu1=np.array([2.0, 0.0]), mu2=np.array([5.0, 0.0]))
    assert est2(student).item() == pytest.approx(0.5 * 3 + 0.5 * 10)


def test_moments_zero_when_matching_exactly():
    student = torch.randn(16, 32) * 3 + 1
    est = MomentsDiME(student.mean(0), student.square().mean(0))
    assert est(student).item() == 0.0
    shifted = student + 0.5
    assert est(shifted).item() > 0.4
    # Without stored statistics the moments of a teacher batch are used.
    free = MomentsDiME()
    assert free.needs_teacher
    assert free(student, student.clone()).item() == 0.0
    assert free(shifted, student).item() > 0.4
    with pytest.raises(ValueError):
        free(student)
    with pytest.raises(ValueError):
        MomentsDiME(mu1=np.zeros(3))


def test_moments_gradient_only_to_student():
    teacher = torch.randn(8, 5, requires_grad=True)
    student = torch.randn(8, 5, requires_grad=True)
    MomentsDiME()(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_moments_dimension_mismatch():
    with pytest.raises(ValueError):
        MomentsDiME(np.zeros(3), np.zeros(3))(torch.zeros(2, 4))


# ------------------------------------------------------------------------------------------------ MMD

def test_mmd_hand_value_fixed_bandwidth():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [2.0]])
    e = math.exp
    expected = e(-0.5) + e(-2.0) - 2 * (1 + e(-2.0) + 2 * e(-0.5)) / 4
    assert mmd2_unbiased(x, y, scales=(1.0,), bandwidth=1.0).item() == pytest.approx(expected, rel=1e-6)
    # Averaging over bandwidths: scale 2 means sigma 2.
    two = e(-1 / 8) + e(-4 / 8) - 2 * (1 + e(-4 / 8) + 2 * e(-1 / 8)) / 4
    got = mmd2_unbiased(x, y, scales=(1.0, 2.0), bandwidth=1.0).item()
    assert got == pytest.approx((expected + two) / 2, rel=1e-6)


def test_mmd_unbiased_in_expectation():
    g = torch.Generator().manual_seed(0)
    values = torch.stack([mmd2_unbiased(torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g),
                                        bandwidth=2.0) for _ in range(400)])
    stderr = values.std() / math.sqrt(len(values))
    assert abs(values.mean().item()) < 4 * stderr.item()
    # The biased V-statistic (diagonals kept) would be clearly positive: the unbiased one is not.
    assert values.mean().item() < 0.5 * values.std().item()


def test_mmd_large_samples_near_zero_and_shift_positive():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same = mmd2_unbiased(x, y).item()
    shifted = mmd2_unbiased(x, y + 1.0).item()
    scaled = mmd2_unbiased(x, y * 2.0).item()
    assert abs(same) < 2e-3
    assert shifted > 50 * max(abs(same), 1e-4)
    assert scaled > 50 * max(abs(same), 1e-4)


def test_mmd_requires_two_samples():
    with pytest.raises(ValueError):
        mmd2_unbiased(torch.zeros(1, 3), torch.zeros(4, 3))


def test_kernel_mmd_bank_and_gradients():
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(300, 6, generator=g)
    est = KernelMMD(bank=bank, bank_batch=64)
    assert not est.needs_teacher
    assert est.sample_bank().shape == (64, 6)
    student = (torch.randn(32, 6, generator=g) + 2).requires_grad_(True)
    loss = est(student)
    assert loss.item() > 0.05
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert not est.bank.requires_grad
    # Fresh teacher embeddings instead of a bank: no gradient reaches them.
    teacher = torch.randn(32, 6, generator=g, requires_grad=True)
    fresh = KernelMMD()
    assert fresh.needs_teacher
    fresh(torch.randn(32, 6, generator=g, requires_grad=True), teacher).backward()
    assert teacher.grad is None
    with pytest.raises(ValueError):
        fresh(torch.randn(4, 6))
    with pytest.raises(ValueError):
        KernelMMD(scales=(0.0, 1.0))


# ------------------------------------------------------------------------------------------------ spec parsing

def test_parse_dime_spec():
    assert parse_dime_spec('clip:RN50=15,dino-resnet50=20') == [('clip:RN50', 15.0), ('dino-resnet50', 20.0)]
    assert parse_dime_spec(' effnet-lite0 ') == [('effnet-lite0', 1.0)]
    assert parse_dime_spec('clip:ViT-B-32=0.5,') == [('clip:ViT-B-32', 0.5)]
    for bad in ['', 'clip:RN50=x', 'a=1,a=2', '=3', 'clip:RN50=-1', 'clip:RN50=nan']:
        with pytest.raises(GanPruneError):
            parse_dime_spec(bad)


def test_resolve_weight_files():
    names = ['clip:RN50', 'dino-resnet50']
    assert resolve_weight_files(names, ['clip:RN50=a.pt', 'dino-resnet50=b.pth']) == {
        'clip:RN50': 'a.pt', 'dino-resnet50': 'b.pth'}
    assert resolve_weight_files(['clip:RN50', 'effnet-lite0'], ['rn50.pt']) == {'clip:RN50': 'rn50.pt'}
    assert resolve_weight_files(names, ['clip:RN50=a.pt', 'b.pth']) == {'clip:RN50': 'a.pt', 'dino-resnet50': 'b.pth'}
    assert resolve_weight_files(names, None) == {}
    with pytest.raises(GanPruneError):
        resolve_weight_files(names, ['a.pt'])  # ambiguous
    with pytest.raises(GanPruneError):
        resolve_weight_files(names, {'clip:RN101': 'x.pt'})


# ------------------------------------------------------------------------------------------------ DiMELoss

def test_dime_loss_weights_and_gradient_flow():
    emb_a, emb_b = PooledConvEmbedder(4, 'a', seed=1), PooledConvEmbedder(5, 'b', seed=2)
    teacher_img = torch.rand(6, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        phi_a = emb_a(teacher_img)
    loss = DiMELoss([(emb_a, MomentsDiME(phi_a.mean(0), phi_a.square().mean(0)), 15.0),
                     (emb_b, KernelMMD(), 20.0)])
    assert loss.needs_teacher_images
    loss.train()  # a parent switching to training must not unfreeze the embedders
    assert not emb_a.training and not any(p.requires_grad for p in loss.parameters())

    student = (torch.rand(6, 3, 16, 16) * 2 - 1).requires_grad_(True)
    teacher_img.requires_grad_(True)
    terms = loss.term_values(student, teacher_img)
    total = loss(student, teacher_img)
    assert total.item() == pytest.approx(15 * terms['a'].item() + 20 * terms['b'].item(), rel=1e-5)
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher_img.grad is None
    assert all(p.grad is None for p in loss.parameters())

    # Teacher images themselves as the student: the moment term vanishes exactly.
    same = loss.term_values(teacher_img.detach(), teacher_img.detach())
    assert same['a'].item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        loss(student)  # the MMD term has no bank: teacher images are needed


def test_dime_loss_build_from_stats(tmp_path):
    from gan_prune.features.effnet_lite import FEATURE_DIM
    stats = TeacherStats({'effnet-lite0': EmbeddingStats('effnet-lite0', 10, np.zeros(FEATURE_DIM),
                                                         np.ones(FEATURE_DIM), np.random.rand(8, FEATURE_DIM))},
                         normalize=False)
    loss = DiMELoss.build('effnet-lite0=20', estimator='moments', stats=stats)
    assert loss.names == ['effnet-lite0'] and loss.weights == [20.0]
    assert not loss.needs_teacher_images
    est = loss.estimators[0]
    assert torch.equal(est.mu2, torch.ones(FEATURE_DIM))
    img = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    value = loss(img)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert img.grad.abs().sum() > 0

    mmd = DiMELoss.build('effnet-lite0', estimator='mmd', stats=stats, bank_batch=4)
    assert not mmd.needs_teacher_images and mmd.estimators[0].sample_bank().shape == (4, FEATURE_DIM)

    with pytest.raises(GanPruneError):
        DiMELoss.build('effnet-lite0', stats=stats, normalize=True)
    with pytest.raises(GanPruneError):
        DiMELoss.build('effnet-lite0', estimator='kl', stats=stats)
    bad_dim = TeacherStats({'effnet-lite0': EmbeddingStats('effnet-lite0', 1, np.zeros(3), np.zeros(3))}, False)
    with pytest.raises(GanPruneError):
        DiMELoss.build('effnet-lite0', stats=bad_dim)
    other = TeacherStats({'clip:RN50': EmbeddingStats('clip:RN50', 1, np.zeros(3), np.zeros(3))}, False)
    with pytest.raises(GanPruneError):
        DiMELoss.build('effnet-lite0', stats=other)
    with pytest.raises(GanPruneError):
        DiMELoss.build('effnet-lite0', stats=str(tmp_path / 'missing.npz'))


def test_dime_batch_estimates_per_group_of_images_as_released():
    """--dime-batch 8 on a batch of 16: the mean of the moment estimates of the two groups of 8."""
    torch.manual_seed(0)
    emb = PooledConvEmbedder(4, 'a', seed=1)
    img = torch.rand([16, 3, 8, 8]) * 2 - 1
    with torch.no_grad():  # the statistics are those of these 16 images
        e = emb(img)
    mu1, mu2 = e.mean(0), e.square().mean(0)
    whole = DiMELoss([(emb, MomentsDiME(mu1, mu2), 2.0)])
    grouped = DiMELoss([(emb, MomentsDiME(mu1, mu2), 2.0)], chunk=8)
    halves = (whole(img[:8]) + whole(img[8:])) / 2
    torch.testing.assert_close(grouped(img), halves)
    # The 16 images match their own moments exactly; each group of 8 does not (the release's noisier estimate).
    assert whole(img) < 1e-6 and grouped(img) > 1e-3
    # Uneven: 10 images in groups of about 4 -> 3 groups of 4, 3, 3, weighted by size.
    ten = img[:10]
    uneven = (4 * whole(ten[:4]) + 3 * whole(ten[4:7]) + 3 * whole(ten[7:])) / 10
    torch.testing.assert_close(DiMELoss([(emb, MomentsDiME(mu1, mu2), 2.0)], chunk=4)(ten), uneven)
    torch.testing.assert_close(DiMELoss([(emb, MomentsDiME(mu1, mu2), 2.0)], chunk=32)(img), whole(img))


# ------------------------------------------------------------------------------------------------ the registry

def test_estimator_choices_and_facts_come_from_the_registry():
    from gan_prune.cli.distill import command
    from gan_prune.distill.dime import DIME_ESTIMATORS
    assert DIME_ESTIMATORS.names() == ['moments', 'mmd']
    option = next(p for p in command.params if p.name == 'dime_estimator')
    assert list(option.type.choices) == DIME_ESTIMATORS.names()
    assert all(f'{name}: ' in option.help for name in DIME_ESTIMATORS.names())
    assert DIME_ESTIMATORS.info('mmd')['needs_bank'] and not DIME_ESTIMATORS.info('moments')['needs_bank']
    with pytest.raises(GanPruneError, match="unknown DiME estimator 'kl'.*moments, mmd"):
        DIME_ESTIMATORS.get('kl')


class _MeanGap(nn.Module):
    needs_teacher = False

    def forward(self, student, teacher=None):
        return student.mean(0).abs().mean()


def test_a_registered_estimator_is_built_and_validated(monkeypatch):
    """A new estimator is one registration: DiMELoss.build dispatches to it and the options check its facts."""
    from gan_prune.distill import dime, loop
    from gan_prune.registry import Registry
    registry = Registry('DiME estimator')
    for name in dime.DIME_ESTIMATORS:
        registry.register(name, **dime.DIME_ESTIMATORS.info(name))(dime.DIME_ESTIMATORS.get(name))
    registry.register('mean-gap', needs_bank=False, min_images=3, summary='mean |phi|')(lambda entry, **kw: _MeanGap())
    monkeypatch.setattr(dime, 'DIME_ESTIMATORS', registry)
    from gan_prune.features.effnet_lite import FEATURE_DIM
    stats = TeacherStats({'effnet-lite0': EmbeddingStats('effnet-lite0', 1, np.zeros(FEATURE_DIM),
                                                         np.ones(FEATURE_DIM))}, normalize=False)
    loss = DiMELoss.build('effnet-lite0', estimator='mean-gap', stats=stats)
    assert isinstance(loss.estimators[0], _MeanGap)
    required = dict(teacher='t.pkl', student='s.pkl', data='d.zip')
    assert loop.resolve_options(dict(required, dime_estimator='mean-gap', dime_batch=3))['dime_estimator'] == 'mean-gap'
    with pytest.raises(GanPruneError, match='mean-gap needs at least 3 images'):
        loop.resolve_options(dict(required, dime_estimator='mean-gap', dime_batch=2))
    with pytest.raises(GanPruneError, match="must be 'moments', 'mmd' or 'mean-gap', got 'kl'"):
        loop.resolve_options(dict(required, dime_estimator='kl'))
