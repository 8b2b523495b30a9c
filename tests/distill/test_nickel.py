import pytest
import torch
from torch import nn

from gan_prune.distill.nickel import (DiscriminatorFeatureTap, GeneratorFeatureTap, NickelLoss, feature_resolutions,
                                      nearest_resolution, shared_resolution)
from gan_prune.distill.wavelets import haar_high_bands
from gan_prune.errors import GanPruneError

# ------------------------------------------------------------------------------------------------ small networks
# Real StyleGAN2-ADA networks when the compatibility layer imports; otherwise stand-ins with the same block layout
# (G.synthesis.b{r} and D.b{r} return (x, img); D.b{r} halves the resolution; D.b4 is the epilogue).


class _StandInSynthesisBlock(nn.Module):
    def __init__(self, c_in, c_out, resolution):
        super().__init__()
        self.resolution = resolution
        self.const = nn.Parameter(torch.randn(c_out, 4, 4)) if c_in == 0 else None
        self.conv1 = nn.Conv2d(c_in or c_out, c_out, 3, padding=1)
        self.torgb = nn.Conv2d(c_out, 3, 1)

    def forward(self, x, img):
        if self.const is not None:
            x = self.const[None].expand(img.shape[0], -1, -1, -1)
        else:
            x = nn.functional.interpolate(x, scale_factor=2)
        x = torch.relu(self.conv1(x))
        y = self.torgb(x)
        img = y if self.const is not None else nn.functional.interpolate(img, scale_factor=2) + y
        return x, img


class _StandInSynthesis(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block_resolutions = sorted(channels)
        prev = 0
        for r in self.block_resolutions:
            setattr(self, f'b{r}', _StandInSynthesisBlock(prev, channels[r], r))
            prev = channels[r]

    def forward(self, z):
        x, img = None, torch.zeros(z.shape[0], 3, 4, 4) + z.mean(1).view(-1, 1, 1, 1)
        for r in self.block_resolutions:
            x, img = getattr(self, f'b{r}')(x, img)
        return img


class StandInGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = 16, 0, 16, 3
        self.synthesis = _StandInSynthesis({4: 16, 8: 16, 16: 8})

    def forward(self, z, c, truncation_psi=1, noise_mode='const', force_fp32=False):
        return self.synthesis(z)


class _StandInDBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x, img):
        return torch.relu(self.conv1(x if x is not None else img)), None


class _StandInEpilogue(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c * 16, 1)

    def forward(self, x, img, cmap):
        return self.fc(x.flatten(1))


class StandInDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_resolutions = [16, 8]
        self.b16 = _StandInDBlock(3, 16)
        self.b8 = _StandInDBlock(16, 16)
        self.b4 = _StandInEpilogue(16)

    def forward(self, img, c):
        x = None
        for r in self.block_resolutions:
            x, _ = getattr(self, f'b{r}')(x, img)
        return self.b4(x, None, None)


def _real_networks():
    from training import networks
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    return G, D


@pytest.fixture(params=['stand-in', 'stylegan2-ada'])
def nets(request):
    torch.manual_seed(0)
    if request.param == 'stand-in':
        return StandInGenerator(), StandInDiscriminator()
    try:
        return _real_networks()
    except ImportError as e:
        pytest.skip(f'training.networks not importable yet: {e}')


# ------------------------------------------------------------------------------------------------ the loss

def test_zero_for_identical_positive_otherwise():
    loss = NickelLoss(8, 8, levels=4)
    assert not loss.has_projection and len(list(loss.parameters())) == 0
    f = torch.randn(2, 8, 16, 16)
    assert loss(f, f.clone()).item() == 0.0
    assert loss(f, f + 0.1 * torch.randn_like(f)).item() > 0


def test_hand_value_and_low_pass_ignored():
    loss = NickelLoss(1, 1, levels=1)
    teacher = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    # Bands: LH = -2.5, HL = -1.5, HH = 0.5; MSE against zeros = mean of squares.
    assert loss(teacher, torch.zeros_like(teacher)).item() == pytest.approx((6.25 + 2.25 + 0.25) / 3)
    # Constant offsets live in the discarded low-pass band at every level.
    f = torch.randn(1, 3, 16, 16)
    assert NickelLoss(3, 3, levels=4)(f, f + 5.0).item() == pytest.approx(0.0, abs=1e-10)


def test_sum_over_levels_matches_definition():
    t, s = torch.randn(2, 4, 12, 12), torch.randn(2, 4, 12, 12)
    expected = sum(((hs - ht) ** 2).mean() for ht, hs in zip(haar_high_bands(t, 3), haar_high_bands(s, 3)))
    assert NickelLoss(4, 4, levels=3)(t, s).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_only_to_student_and_projection():
    loss = NickelLoss(teacher_channels=6, student_channels=4, levels=2)
    assert loss.has_projection
    assert loss.projection.weight.shape == (6, 4, 1, 1)
    teacher = torch.randn(2, 6, 8, 8, requires_grad=True)
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = loss(teacher, student)
    assert value.dtype == torch.float32 and value.item() > 0
    value.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss.projection.weight.grad is not None and loss.projection.weight.grad.abs().sum() > 0


def test_half_precision_inputs_computed_in_float32():
    loss = NickelLoss(3, 3, levels=2)
    t = torch.randn(1, 3, 8, 8).half()
    s = torch.randn(1, 3, 8, 8).half().requires_grad_(True)
    value = loss(t, s)
    assert value.dtype == torch.float32
    value.backward()
    assert s.grad.dtype == torch.float16


def test_shape_errors():
    with pytest.raises(ValueError):
        NickelLoss(4, 4)(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError):
        NickelLoss(4, 4)(torch.zeros(1, 4, 8, 8), torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError):
        NickelLoss(4, 4, levels=0)


# ------------------------------------------------------------------------------------------------ taps

def test_feature_resolutions_and_nearest(nets):
    G, D = nets
    assert feature_resolutions(G) == [4, 8, 16]
    assert feature_resolutions(G.synthesis) == [4, 8, 16]
    assert sorted(feature_resolutions(D)) == [4, 8]
    assert nearest_resolution(G, 64) == 16
    assert nearest_resolution(G, 8) == 8
    assert nearest_resolution(G, 6) == 8          # closer to 8 than to 4 on a log scale
    assert nearest_resolution(G, 2 ** 2.5) == 8   # exact tie between 4 and 8 goes to the larger
    assert nearest_resolution(D, 64) == 8
    assert shared_resolution(G, D, 64) == 8
    assert shared_resolution(G, D, 3) == 4


def test_taps_capture_block_outputs(nets):
    G, D = nets
    z = torch.randn(2, G.z_dim)
    c = torch.zeros(2, G.c_dim)
    with GeneratorFeatureTap(G, 8) as g_tap:
        img = G(z, c, noise_mode='const', force_fp32=True)
        feature = g_tap.pop()
    assert feature.shape == (2, g_tap.channels, 8, 8)
    assert g_tap.channels == G.synthesis.b8.conv1.weight.shape[0]
    with pytest.raises(RuntimeError):
        g_tap.pop()  # cleared after use
    G(z, c, noise_mode='const', force_fp32=True)
    assert g_tap.feature is None  # removed on exit

    with DiscriminatorFeatureTap(D, 8) as d_tap:
        D(img, c)
        d_feature = d_tap.pop()
    assert d_feature.shape == (2, d_tap.channels, 8, 8)
    assert d_tap.block is D.b16  # the block whose output is 8x8

    with pytest.raises(GanPruneError):
        GeneratorFeatureTap(G, 32)
    with pytest.raises(GanPruneError):
        DiscriminatorFeatureTap(D, 16)


def test_end_to_end_trains_only_student_discriminator(nets):
    G, D = nets
    G.requires_grad_(True)
    res = shared_resolution(G, D, 64)
    z = torch.randn(4, G.z_dim)
    c = torch.zeros(4, G.c_dim)
    g_tap, d_tap = GeneratorFeatureTap(G, res), DiscriminatorFeatureTap(D, res)
    x_teacher = G(z, c, noise_mode='const', force_fp32=True)
    teacher_feature = g_tap.pop()
    D(x_teacher.detach(), c)
    loss_fn = NickelLoss(g_tap.channels, d_tap.channels, levels=4)
    value = loss_fn(teacher_feature, d_tap.pop())
    assert value.item() > 0
    value.backward()
    assert all(p.grad is None for p in G.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    if loss_fn.has_projection:
        assert loss_fn.projection.weight.grad is not None
    g_tap.remove()
    d_tap.remove()
