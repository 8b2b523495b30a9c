"""Loss terms of the distillation loop, and which network each of them can change (gradient routing)."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from gan_prune.distill import cagan_kd as K
from gan_prune.distill import losses as L
from gan_prune.errors import GanPruneError

RES = 16


def tiny_generator(cmax, seed):
    import dnnlib
    from training import networks
    torch.manual_seed(seed)
    return networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=RES, img_channels=3,
                              mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                              synthesis_kwargs=dnnlib.EasyDict(channel_base=RES * cmax, channel_max=cmax))


def tiny_discriminator(seed):
    import dnnlib
    from training import networks
    torch.manual_seed(seed)
    return networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=RES * 8, channel_max=8,
                                  epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2))


@pytest.fixture(scope='module')
def nets():
    G_t = tiny_generator(8, seed=0).eval()
    G_s = tiny_generator(4, seed=1).train()
    G_s.mapping.load_state_dict(G_t.mapping.state_dict())
    return G_s, G_t, tiny_discriminator(2).train(), tiny_discriminator(3).train()


class _MeanEmbedDiME(torch.nn.Module):
    """DiME-shaped stand-in: scalar distance of the student batch mean colour to a fixed target."""

    def forward(self, img):
        return (img.mean(dim=[0, 2, 3]) - 0.3).abs().sum()


def _all_grads(*modules):
    for m in modules:
        m.requires_grad_(True)
        m.zero_grad(set_to_none=True)


def _has_grad(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_dime_term_reaches_only_the_student_generator(nets):
    G_s, G_t, D_s, D_t = nets
    loss = L.DistillLoss(G_s, G_t, D_s, D_t, dime=_MeanEmbedDiME(), style_mixing=0.5)
    lat = loss.sample_latents(4, torch.zeros([4, 0]), torch.device('cpu'))
    _all_grads(G_s, G_t, D_s, D_t)  # worst case: everything would accept a gradient
    img_s, _ = L.synthesize(G_s, lat)
    loss.dime(img_s).backward()
    assert _has_grad(G_s)
    assert not _has_grad(G_t) and not _has_grad(D_s) and not _has_grad(D_t)


def test_nickel_term_reaches_only_the_student_discriminator(nets):
    from gan_prune.distill.nickel import DiscriminatorFeatureTap, GeneratorFeatureTap, NickelLoss
    G_s, G_t, D_s, D_t = nets
    with GeneratorFeatureTap(G_t, 8) as gt, DiscriminatorFeatureTap(D_s, 8) as dt:
        nickel = NickelLoss(gt.channels, dt.channels, levels=2)
    loss = L.DistillLoss(G_s, G_t, D_s, D_t, nickel=nickel, nickel_res=8)
    lat = loss.sample_latents(4, torch.zeros([4, 0]), torch.device('cpu'))
    _all_grads(G_s, G_t, D_s, D_t)
    before = copy.deepcopy(G_t.state_dict())
    value = loss.nickel_term(lat)
    assert value.ndim == 0 and value > 0
    value.backward()
    assert _has_grad(D_s)
    assert not _has_grad(G_t) and not _has_grad(G_s) and not _has_grad(D_t)
    for k, v in G_t.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # No hook is left on the networks (it would end up in snapshots).
    assert not D_s.b16._forward_hooks and not G_t.synthesis.b8._forward_hooks


def test_generator_main_terms_and_stats(nets):
    G_s, G_t, D_s, D_t = nets
    loss = L.DistillLoss(G_s, G_t, D_s, D_t, dime=_MeanEmbedDiME(), style_mixing=0.9)
    lat = loss.sample_latents(4, torch.zeros([4, 0]), torch.device('cpu'))
    total, stats = loss.generator_main(lat)
    expected = stats['Loss/G/adv_DS'].mean() + stats['Loss/G/adv_DT'].mean() + stats['Loss/G/dime'][0]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(stats['Loss/G/adv_DS'], F.softplus(-stats['Loss/scores/fake_DS']))
    only_ds = L.DistillLoss(G_s, G_t, D_s, None)
    assert 'Loss/G/adv_DT' not in only_ds.generator_main(lat)[1]


def test_discriminator_losses_and_r1(nets):
    G_s, G_t, D_s, D_t = nets
    loss = L.DistillLoss(G_s, G_t, D_s, D_t, r1_gamma=4.0)
    lat = loss.sample_latents(4, torch.zeros([4, 0]), torch.device('cpu'))
    fake = loss.fake_images(lat)
    assert not fake.requires_grad
    real = torch.rand([4, 3, RES, RES]) * 2 - 1
    c = torch.zeros([4, 0])
    main, stats = loss.discriminator_main('DT', fake, c, real, c)
    torch.testing.assert_close(main.detach(), (F.softplus(stats['Loss/scores/fake_DT_D'])
                                               + F.softplus(-stats['Loss/scores/real_DT'])).mean())
    reg, rstats = loss.discriminator_reg('DT', real, c)
    torch.testing.assert_close(reg.detach(), rstats['Loss/DT/r1_penalty'].mean() * 2.0)
    both, bstats = loss.discriminator_main('DT', fake, c, real, c, with_r1=True)
    torch.testing.assert_close(both.detach(), main.detach() + reg.detach())


def test_r1_penalty_matches_the_analytic_gradient():
    w = torch.randn([1, 2, 3, 3])
    x = torch.randn([5, 2, 3, 3], requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3]) + 1.0
    torch.testing.assert_close(L.r1_penalty(logits, x), w.square().sum().expand(5))


def test_path_length_mean_and_penalty():
    reg = L.PathLengthRegularizer(decay=0.5)
    ws = torch.randn([3, 2, 4], requires_grad=True)
    A = torch.randn([4, 2 * 4 * 4])
    img = torch.tanh((ws @ A).sum(1)).view(3, 2, 4, 4)  # a small non-linear "generator"
    penalty, lengths = reg(img, ws)
    assert penalty.shape == (3,) and torch.all(lengths > 0)
    torch.testing.assert_close(reg.pl_mean, lengths.mean() * 0.5)
    torch.testing.assert_close(penalty.detach(), (lengths - reg.pl_mean).square())
    penalty.mean().backward()
    assert ws.grad is not None


def test_style_mixing_shares_latents_between_student_and_teacher(nets):
    G_s, G_t, _, _ = nets
    never = L.MixedLatents.sample(6, 8, G_t.num_ws, torch.zeros([6, 0]), 0.0, torch.device('cpu'))
    assert never.z2 is None
    always = L.MixedLatents.sample(6, 8, G_t.num_ws, torch.zeros([6, 0]), 1.0, torch.device('cpu'))
    assert torch.all((always.cutoff >= 1) & (always.cutoff < G_t.num_ws))
    ws = L.map_latents(G_t, always)
    ws1 = G_t.mapping(always.z, always.c)
    ws2 = G_t.mapping(always.z2, always.c)
    for i, k in enumerate(always.cutoff.tolist()):
        torch.testing.assert_close(ws[i, :k], ws1[i, :k])
        torch.testing.assert_close(ws[i, k:], ws2[i, k:])
    assert always.head(2).z.shape[0] == 2 and always.head(2).cutoff.shape[0] == 2


def test_same_noise_gives_identical_images_for_identical_generators(nets):
    G_t = copy.deepcopy(nets[1])
    with torch.no_grad():
        for name, p in G_t.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)  # freshly built nets have strength 0: noise would not show
    twin = copy.deepcopy(G_t)
    lat = L.MixedLatents.sample(2, 8, G_t.num_ws, torch.zeros([2, 0]), 0.5, torch.device('cpu'))
    with torch.no_grad():
        with L.same_noise(torch.device('cpu')):
            a, _ = L.synthesize(G_t, lat)
        b, _ = L.synthesize(twin, lat)
        c, _ = L.synthesize(twin, lat)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(b, c)  # without the rewind the noise differs


def test_cagan_kd_terms(tmp_path):
    kd = K.CaganKD(None, l1_weight=3, perceptual_weight=3)
    x = torch.rand([2, 3, 8, 8])
    l1, perc = kd(x, x)
    assert l1.abs().max() == 0 and perc.abs().max() == 0
    l1, _ = kd(x + 0.25, x)
    torch.testing.assert_close(l1, torch.full([2], 0.25))
    masked = K.CaganKD(None, mask=lambda img: torch.zeros([img.shape[0], 1, 8, 8]))
    assert masked(x + 1, x)[0].abs().max() == 0


def test_perceptual_distance_with_an_embedder(tmp_path, save_tiny_embedder):
    spec = 'torchscript:' + save_tiny_embedder(tmp_path / 'tiny.pt', seed=0)
    dist = K.PerceptualDistance(spec, trust=True)  # a TorchScript file: the test trusts its own
    x = torch.rand([2, 3, 16, 16]) * 2 - 1
    y = torch.rand([2, 3, 16, 16]) * 2 - 1
    torch.testing.assert_close(dist(x, x), torch.zeros(2))
    assert torch.all(dist(x, y) > 0)
    assert all(not p.requires_grad for p in dist.parameters())


def test_perceptual_vgg_needs_a_local_weights_file(tmp_path):
    with pytest.raises(GanPruneError, match='VGG16 weights file not found'):
        K.PerceptualDistance(f'vgg16:{tmp_path}/missing.pth')


def test_perceptual_vgg_loads_a_torchvision_state_dict(tmp_path):
    import torchvision
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    torch.save(vgg.state_dict(), tmp_path / 'vgg16.pth')
    dist = K.PerceptualDistance(f'vgg16:{tmp_path}/vgg16.pth')
    for a, b in zip(dist.features.state_dict().values(), vgg.features.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand([2, 3, 32, 32]) * 2 - 1
    y = x.clone()
    y[1] = torch.rand([3, 32, 32]) * 2 - 1
    d = dist(x, y)
    assert d[0].abs() < 1e-6 and d[1] > 0
    # By hand: unit-normalised relu1_2 .. relu5_3 activations of the shifted/scaled input, squared differences.
    shift = torch.tensor(K.LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(K.LPIPS_SCALE).view(1, 3, 1, 1)
    fx, fy, want = (x - shift) / scale, (y - shift) / scale, torch.zeros(2)
    for idx, layer in enumerate(vgg.features[:max(K.VGG16_TAPS) + 1]):
        fx, fy = layer(fx), layer(fy)
        if idx in K.VGG16_TAPS:
            nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            want += (nx - ny).square().sum(1).mean(dim=[1, 2])
    torch.testing.assert_close(d, want.detach(), rtol=1e-4, atol=1e-6)
    # A state dict of another network is refused with one line.
    torch.save({'features.0.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(GanPruneError):
        K.PerceptualDistance(f'vgg16:{tmp_path}/other.pth')


def test_student_teacher_mismatch_is_a_user_error(nets):
    G_s, G_t, D_s, _ = nets
    import dnnlib
    from training import networks
    other = networks.Generator(z_dim=4, c_dim=0, w_dim=8, img_resolution=RES, img_channels=3,
                               mapping_kwargs=dnnlib.EasyDict(num_layers=1),
                               synthesis_kwargs=dnnlib.EasyDict(channel_base=RES * 4, channel_max=4))
    with pytest.raises(GanPruneError):
        L.DistillLoss(other, G_t, D_s)


def test_lpips_vgg_uses_the_packages_learned_weights_on_a_given_trunk(tmp_path, monkeypatch):
    import lpips
    import torchvision
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features.eval()
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, tmp_path / 'vgg16.pth')
    dist = K.PerceptualDistance(f'lpips-vgg:{tmp_path}/vgg16.pth')
    package = torch.load(os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'vgg.pth'),
                         map_location='cpu', weights_only=True)
    x = torch.rand([2, 3, 32, 32]) * 2 - 1
    y = x.clone()
    y[1] = torch.rand([3, 32, 32]) * 2 - 1
    d = dist(x, y)
    assert d.shape == (2,) and d[0].abs() < 1e-6 and d[1] > 0
    # By hand: LPIPS = sum over relu1_2..relu5_3 of the spatial mean of w_k . (unit-normalised difference)^2.
    shift = torch.tensor(K.LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(K.LPIPS_SCALE).view(1, 3, 1, 1)
    fx, fy, want, tap = (x - shift) / scale, (y - shift) / scale, torch.zeros(2), 0
    with torch.no_grad():
        for idx, layer in enumerate(features[:max(K.VGG16_TAPS) + 1]):
            fx, fy = layer(fx), layer(fy)
            if idx in K.VGG16_TAPS:
                nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
                ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
                w = package[f'lin{tap}.model.1.weight'].view(1, -1, 1, 1)
                want += ((nx - ny).square() * w).sum(1).mean(dim=[1, 2])
                tap += 1
    torch.testing.assert_close(d, want, rtol=1e-4, atol=1e-6)
    # Gradients reach the student image only.
    x_s = x.clone().requires_grad_(True)
    dist(x_s, y).sum().backward()
    assert x_s.grad is not None and not any(p.requires_grad for p in dist.parameters())
    # Without a file, offline and with no cached copy: one line naming the file and the offline choice.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('GAN_PRUNE_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('GAN_PRUNE_WEIGHTS', str(tmp_path / 'none'))
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GanPruneError) as e:
        K.PerceptualDistance('lpips-vgg')
    assert '\n' not in str(e.value) and 'vgg16-397923af.pth' in str(e.value) and 'effnet-lite0' in str(e.value)
