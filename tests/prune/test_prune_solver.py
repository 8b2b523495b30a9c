"""Rate solver: the paper's channel tables and rates on paper256 (no weights needed), rate -> ratio, errors."""
import pytest

from gan_prune.errors import GanPruneError
from gan_prune.prune.solver import (format_plan, parse_channel_overrides, ratio_channels, solve_channels,
                                    standard_shape)

PAPER256 = standard_shape(256, channel_base=16384, channel_max=512)
RESOLUTIONS = [4, 8, 16, 32, 64, 128, 256]

# method.md section 3: ratio -> (channels per block, conv+toRGB rate, rate incl. mapping and affine), in percent.
PAPER_TABLE = {
    0.50: ([256, 256, 256, 256, 128, 64, 32], 74.96, 74.94),
    0.70: ([154, 154, 154, 154, 77, 39, 20], 90.71, 90.70),
    0.80: ([103, 103, 103, 103, 52, 26, 13], 95.87, 95.85),
    0.90: ([52, 52, 52, 52, 26, 13, 7], 98.92, 98.90),
    0.95: ([26, 26, 26, 26, 13, 7, 4], 99.70, 99.68),
}


def _per_block(channels):
    return [channels[f'b{r}.out'] for r in RESOLUTIONS]


def test_teacher_macs_match_method_md():
    assert PAPER256.macs(PAPER256.channels, 'conv') == 14_897_111_040
    assert PAPER256.macs(PAPER256.channels, 'total') == 14_903_009_280


@pytest.mark.parametrize('ratio', sorted(PAPER_TABLE))
def test_paper_ratios_give_paper_channels_and_rates(ratio):
    channels, conv_rate, total_rate = PAPER_TABLE[ratio]
    plan = solve_channels(PAPER256, ratio=ratio, convention='conv')
    assert _per_block(plan.channels) == channels
    assert plan.channels['b4.const'] == channels[0]
    assert all(plan.channels[f'b{r}.mid'] == c for r, c in zip(RESOLUTIONS[1:], channels[1:]))
    assert round(plan.rate * 100, 2) == pytest.approx(conv_rate, abs=1e-9)
    total = solve_channels(PAPER256, ratio=ratio, convention='total')
    assert round(total.rate * 100, 2) == pytest.approx(total_rate, abs=1e-9)


def test_paper_rates_exact_for_half_and_ninety_percent():
    # 74.96 % and 98.92 % are reproduced exactly (to the paper's two decimals, not by rounding luck).
    assert abs(solve_channels(PAPER256, ratio=0.5).rate - 0.7496) < 5e-5
    assert abs(solve_channels(PAPER256, ratio=0.9).rate - 0.9892) < 5e-5


# The paper's rounded rates build the paper's students (method.md section 3; issue 14).
PAPER_RATES = {0.7496: 0.50, 0.9073: 0.70, 0.9892: 0.90, 0.9969: 0.95}


@pytest.mark.parametrize('target', sorted(PAPER_RATES))
def test_paper_rounded_rates_give_paper_channel_tables(target):
    plan = solve_channels(PAPER256, rate=target)
    assert _per_block(plan.channels) == PAPER_TABLE[PAPER_RATES[target]][0]
    assert plan.target_rate == target
    assert abs(plan.rate - target) < 2e-4


def test_9892_gives_52_channels_not_51():
    # 98.9199 % is just below 0.9892; the nearest configuration is still the r = 0.9 table.
    plan = solve_channels(PAPER256, rate=0.9892)
    assert plan.rate < 0.9892 and plan.channels['b4.out'] == 52


def _step_rates(shape=PAPER256):
    steps = {0.0} | {1 - k / c for c in (512, 256, 128, 64) for k in range(1, c)}
    return sorted({solve_channels(shape, ratio=r).rate for r in steps})


@pytest.mark.parametrize('target', [0.5, 0.7496, 0.9, 0.9573, 0.99])
def test_rate_gives_the_nearest_uniform_configuration(target):
    plan = solve_channels(PAPER256, rate=target)
    assert plan.target_rate == target
    best = min(abs(r - target) for r in _step_rates())
    assert abs(plan.rate - target) == pytest.approx(best, abs=1e-15)


def test_rate_9573_resolves_to_the_nearest_configuration():
    plan = solve_channels(PAPER256, rate=0.9573)
    assert _per_block(plan.channels) == [104, 104, 104, 104, 52, 26, 13]
    assert 0.79 < plan.ratio <= 0.8
    assert 0.9573 <= plan.rate < 0.9590
    assert 'nearest' in format_plan(plan) and 'target 95.73%' in format_plan(plan)


def test_rate_zero_keeps_everything():
    plan = solve_channels(PAPER256, rate=0.0)
    assert plan.channels == PAPER256.channels and plan.rate == 0


@pytest.mark.parametrize('bad', [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_is_an_error(bad):
    with pytest.raises(GanPruneError, match='outside'):
        solve_channels(PAPER256, rate=bad)


def test_unreachable_rate_is_an_error():
    with pytest.raises(GanPruneError, match='0 channels'):
        solve_channels(PAPER256, rate=0.99999)


def test_ratio_errors():
    with pytest.raises(GanPruneError, match='outside'):
        solve_channels(PAPER256, ratio=1.0)
    tiny = standard_shape(16, channel_base=32, channel_max=8)  # 8, 4, 2 channels
    assert ratio_channels(tiny.channels, 0.99) == {k: 1 for k in tiny.channels}  # ceil((1 - r) C) >= 1
    with pytest.raises(GanPruneError, match='not both'):
        solve_channels(PAPER256, rate=0.5, ratio=0.5)


def test_channel_overrides():
    assert parse_channel_overrides('128:32, 256:16') == {128: 32, 256: 16}
    with pytest.raises(GanPruneError, match='RES:COUNT'):
        parse_channel_overrides('128=32')
    plan = solve_channels(PAPER256, ratio=0.5, overrides={256: 16})
    assert _per_block(plan.channels) == [256, 256, 256, 256, 128, 64, 16]
    solved = solve_channels(PAPER256, rate=0.9, overrides={4: 512})
    assert solved.channels['b4.const'] == solved.channels['b4.out'] == 512 and abs(solved.rate - 0.9) < 1e-3
    with pytest.raises(GanPruneError, match='no block at resolution'):
        solve_channels(PAPER256, ratio=0.5, overrides={512: 4})
    with pytest.raises(GanPruneError, match='1..64'):
        solve_channels(PAPER256, ratio=0.5, overrides={256: 65})
    with pytest.raises(GanPruneError, match='fixes every block'):
        solve_channels(PAPER256, rate=0.5, overrides={r: 8 for r in RESOLUTIONS})


def test_unknown_convention_is_an_error():
    with pytest.raises(GanPruneError, match='rate-convention'):
        solve_channels(PAPER256, ratio=0.5, convention='flops')


def test_format_plan_states_rate_and_convention():
    text = format_plan(solve_channels(PAPER256, ratio=0.9))
    assert '98.92%' in text and "'conv'" in text and 'b256' in text and '52' in text
