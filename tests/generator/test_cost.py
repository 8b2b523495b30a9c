"""The MAC counting convention reproduces the numbers of method.md section 3, analytically and from networks."""
import math

import pytest

from gan_prune.generator import cost

PAPER256 = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}


def _uniform(ratio):
    return {r: c - int(c * ratio) for r, c in PAPER256.items()}


def test_paper256_teacher_macs():
    assert cost.synthesis_macs_for_channels(PAPER256, 256) == 14_897_111_040
    assert cost.synthesis_macs_for_channels(PAPER256, 256, convention='total') == 14_903_009_280


@pytest.mark.parametrize('ratio, channels, conv_rate, total_rate', [
    (0.50, [256, 256, 256, 256, 128, 64, 32], 74.96, 74.94),
    (0.70, [154, 154, 154, 154, 77, 39, 20], 90.71, 90.70),
    (0.80, [103, 103, 103, 103, 52, 26, 13], 95.87, 95.85),
    (0.90, [52, 52, 52, 52, 26, 13, 7], 98.92, 98.90),
    (0.95, [26, 26, 26, 26, 13, 7, 4], 99.70, 99.68),
])
def test_paper_rates(ratio, channels, conv_rate, total_rate):
    student = _uniform(ratio)
    assert list(student.values()) == channels
    for convention, expected in (('conv', conv_rate), ('total', total_rate)):
        t = cost.synthesis_macs_for_channels(PAPER256, 256, convention=convention)
        s = cost.synthesis_macs_for_channels(student, 256, convention=convention)
        assert round(100 * (1 - s / t), 2) == pytest.approx(expected, abs=1e-9)


def test_unknown_convention_rejected():
    with pytest.raises(ValueError):
        cost.synthesis_macs_for_channels(PAPER256, 256, convention='flops')


def test_generator_cost_matches_analytic_for_every_architecture():
    import dnnlib
    from training import networks
    for arch in ('skip', 'orig', 'resnet'):
        G = networks.Generator(z_dim=16, w_dim=16, c_dim=3, img_resolution=32, img_channels=3,
                               mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                               synthesis_kwargs=dnnlib.EasyDict(channel_base=256, channel_max=32, architecture=arch))
        channels = {r: min(256 // r, 32) for r in (4, 8, 16, 32)}
        for convention in cost.CONVENTIONS:
            report = cost.generator_cost(G, convention)
            expected = cost.synthesis_macs_for_channels(channels, 32, 3, arch, w_dim=16, z_dim=16, c_dim=3,
                                                        mapping_layers=2, convention=convention)
            assert report.total_macs == expected, (arch, convention)
        assert report.total_params == sum(p.numel() for p in G.parameters())
        assert [b.name for b in report.blocks] == ['b4', 'b8', 'b16', 'b32', 'mapping']


def test_paper256_builtin_parameter_count():
    from gan_prune.io.pickles import load_builtin
    G = load_builtin('paper256')['G_ema']
    report = cost.generator_cost(G)
    assert report.total_macs == 14_897_111_040
    synthesis = sum(b.params for b in report.blocks if b.name != 'mapping')
    mapping = report.blocks[-1].params
    assert math.isclose(synthesis / 1e6, 22.67, abs_tol=0.01)
    assert math.isclose(mapping / 1e6, 2.10, abs_tol=0.01)
    assert math.isclose(report.total_params / 1e6, 24.77, abs_tol=0.01)


def test_discriminator_cost_counts_every_parameter():
    from training import networks
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=32)
    report = cost.discriminator_cost(D)
    assert report.total_params == sum(p.numel() for p in D.parameters())
    assert report.total_macs > 0
