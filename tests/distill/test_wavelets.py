import math

import pytest
import torch

from gan_prune.distill.wavelets import haar_dwt2, haar_dwt2_level, haar_high_bands


def test_single_2x2_block_by_hand():
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    x = torch.tensor([[a, b], [c, d]])
    ll, lh, hl, hh = haar_dwt2_level(x)
    assert ll.shape == (1, 1)
    assert ll.item() == pytest.approx((a + b + c + d) / 2)
    assert lh.item() == pytest.approx((a + b - c - d) / 2)
    assert hl.item() == pytest.approx((a - b + c - d) / 2)
    assert hh.item() == pytest.approx((a - b - c + d) / 2)


def test_4x4_by_hand_and_edge_orientation():
    # Horizontal edge (top rows 1, bottom rows 0) only shows up in LH at the block row that straddles it ...
    x = torch.zeros(4, 4)
    x[:1] = 1.0
    ll, lh, hl, hh = haar_dwt2_level(x)
    assert torch.allclose(ll, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(lh, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.count_nonzero(hl) == 0 and torch.count_nonzero(hh) == 0
    # ... a vertical edge only in HL, a checkerboard only in HH.
    v = torch.zeros(4, 4)
    v[:, :1] = 1.0
    _, lh_v, hl_v, hh_v = haar_dwt2_level(v)
    assert torch.allclose(hl_v, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.count_nonzero(lh_v) == 0 and torch.count_nonzero(hh_v) == 0
    checker = torch.tensor([[1.0, -1.0] * 2, [-1.0, 1.0] * 2] * 2)
    ll_c, lh_c, hl_c, hh_c = haar_dwt2_level(checker)
    assert torch.allclose(hh_c, torch.full((2, 2), 2.0))
    assert torch.count_nonzero(ll_c) + torch.count_nonzero(lh_c) + torch.count_nonzero(hl_c) == 0


def test_4x4_arange_matches_hand_formula():
    x = torch.arange(16.0).reshape(4, 4)
    ll, lh, hl, hh = haar_dwt2_level(x)
    # Block (0, 0) holds 0, 1, 4, 5.
    assert ll[0, 0].item() == pytest.approx(5.0)       # (0 + 1 + 4 + 5) / 2
    assert lh[0, 0].item() == pytest.approx(-4.0)      # (0 + 1 - 4 - 5) / 2
    assert hl[0, 0].item() == pytest.approx(-1.0)      # (0 - 1 + 4 - 5) / 2
    assert hh[0, 0].item() == pytest.approx(0.0)
    # A linear ramp has the same detail coefficients in every block.
    assert torch.allclose(lh, torch.full((2, 2), -4.0)) and torch.allclose(hl, torch.full((2, 2), -1.0))
    assert torch.allclose(ll, torch.tensor([[5.0, 9.0], [21.0, 25.0]]))


def test_odd_sizes_zero_padded():
    x = torch.arange(1.0, 10.0).reshape(3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    ll, lh, hl, hh = haar_dwt2_level(x)
    assert ll.shape == (2, 2)
    # Right column pads with zeros: block (0, 1) holds 3, 0, 6, 0.
    assert ll[0, 1].item() == pytest.approx((3 + 6) / 2)
    assert lh[0, 1].item() == pytest.approx((3 - 6) / 2)
    assert hl[0, 1].item() == pytest.approx((3 + 6) / 2)
    assert hh[0, 1].item() == pytest.approx((3 - 6) / 2)
    # Bottom-right block holds only 9.
    for band in (ll, lh, hl, hh):
        assert band[1, 1].item() == pytest.approx(9 / 2)
    # Zero padding keeps the energy (the padded zeros carry none).
    total = sum(band.square().sum() for band in (ll, lh, hl, hh))
    assert total.item() == pytest.approx(x.square().sum().item())
    # Odd in one direction only.
    y = torch.randn(2, 3, 5, 8)
    assert haar_dwt2_level(y)[0].shape == (2, 3, 3, 4)


@pytest.mark.parametrize('shape', [(2, 3, 8, 8), (1, 4, 16, 6), (3, 2, 2)])
def test_parseval_single_level(shape):
    x = torch.randn(shape, dtype=torch.float64)
    bands = haar_dwt2_level(x)
    energy = sum(b.square().sum() for b in bands)
    assert torch.allclose(energy, x.square().sum(), rtol=1e-12)


def test_parseval_multi_level_and_shapes():
    x = torch.randn(2, 3, 32, 16, dtype=torch.float64)
    levels = haar_dwt2(x, levels=4)
    assert len(levels) == 4
    expected = [(16, 8), (8, 4), (4, 2), (2, 1)]
    for level, (h, w) in zip(levels, expected):
        assert level.low.shape == (2, 3, h, w)
        assert all(b.shape == (2, 3, h, w) for b in level.high)
    energy = levels[-1].low.square().sum() + sum(b.square().sum() for lv in levels for b in lv.high)
    assert torch.allclose(energy, x.square().sum(), rtol=1e-12)
    # Level j+1 transforms level j's low band.
    again = haar_dwt2_level(levels[0].low)
    assert torch.equal(again[0], levels[1].low)


def test_multi_level_odd_shapes():
    x = torch.randn(1, 1, 13, 7)
    shapes = [lv.low.shape[-2:] for lv in haar_dwt2(x, levels=4)]
    assert shapes == [(7, 4), (4, 2), (2, 1), (1, 1)]


def test_high_bands_stack_and_constant_input():
    x = torch.full((2, 5, 8, 8), 3.0)
    highs = haar_high_bands(x, levels=3)
    assert [h.shape for h in highs] == [(2, 5, 3, 4, 4), (2, 5, 3, 2, 2), (2, 5, 3, 1, 1)]
    assert all(torch.count_nonzero(h) == 0 for h in highs)  # a constant has no detail
    lows = haar_dwt2(x, levels=3)
    assert lows[-1].low[0, 0, 0, 0].item() == pytest.approx(3.0 * 2 ** 3)  # each level scales a constant by 2


def test_gradients_flow_and_linear():
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    loss = sum(h.square().sum() for h in haar_high_bands(x, levels=2))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    a, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    for la, lb, lab in zip(haar_dwt2(a, 2), haar_dwt2(b, 2), haar_dwt2(2 * a + b, 2)):
        assert torch.allclose(2 * la.low + lb.low, lab.low, atol=1e-5)


def test_levels_validation():
    with pytest.raises(ValueError):
        haar_dwt2(torch.zeros(4, 4), levels=0)
    assert math.isclose(float(haar_dwt2(torch.ones(1, 1), levels=1)[0].low), 0.5)
