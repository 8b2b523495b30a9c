"""CAGAN's l1-out and DCP-GAN's diversity score against hand computations on tiny generators."""
import math

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.prune.importance import DiversityImportance, L1OutImportance, sample_latents
from gan_prune.prune.surgery import scoring_layers


def small_generator(seed=0):
    from training import networks
    torch.manual_seed(seed)
    return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)


def _constant_styles(layer, styles):
    """Make `layer`'s styles independent of w: affine weight 0, bias = styles."""
    with torch.no_grad():
        layer.affine.weight.zero_()
        layer.affine.bias.copy_(torch.as_tensor(styles, dtype=torch.float32))


def test_l1_out_matches_closed_form_for_constant_styles():
    G = small_generator()
    conv, torgb = G.synthesis.b8.conv1, G.synthesis.b16.torgb
    channels_in = conv.weight.shape[1]
    s = torch.arange(1, channels_in + 1, dtype=torch.float64)
    _constant_styles(conv, s)
    rgb_channels = torgb.weight.shape[1]
    s_rgb = torch.linspace(-2, 3, rgb_channels, dtype=torch.float64)
    _constant_styles(torgb, s_rgb)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        torgb.weight.fill_(1.0)
    scores = L1OutImportance().scores(G, samples=5, batch=2, seed=0)
    # Modulated: W' = s_i; demodulated by (9 sum_i s_i^2)^-1/2; sum over O outputs and 3x3 taps:
    # score_i = O * 9 * s_i / sqrt(9 sum s^2) = 3 O s_i / ||s||.
    out_channels = conv.weight.shape[0]
    expected = 3 * out_channels * s / s.norm()
    assert torch.allclose(scores['b8.mid'], expected, rtol=1e-5)
    # toRGB is not demodulated: W_eff = s_i * weight_gain = s_i / sqrt(C); |.| summed over 3 colours.
    expected_rgb = 3 * s_rgb.abs() / math.sqrt(rgb_channels)
    assert torch.allclose(scores['b16.out'], expected_rgb, rtol=1e-5)


def _reference_l1_out(G, samples, seed):
    """Per sample, per layer: build the effective weights explicitly, average them, take the L1 norm."""
    from training import networks
    z, c = sample_latents(G, samples, seed)
    with torch.no_grad():
        w = G.mapping(z, c)[:, 0].double()
    out = {}
    for name, layer in scoring_layers(G).items():
        weight = layer.weight.double()
        effective = []
        for n in range(samples):
            styles = layer.affine(w[n:n + 1].float())[0].double()
            modulated = weight * styles[None, :, None, None]
            if isinstance(layer, networks.ToRGBLayer):
                effective.append(modulated * layer.weight_gain)
            else:
                demod = (modulated.square().sum(dim=(1, 2, 3)) + 1e-8).rsqrt()
                effective.append(modulated * demod[:, None, None, None])
        out[name] = torch.stack(effective).mean(dim=0).abs().sum(dim=(0, 2, 3))
    return out


def test_l1_out_matches_explicit_effective_weights():
    G = small_generator(seed=3)
    scores = L1OutImportance().scores(G, samples=7, batch=3, seed=1)
    reference = _reference_l1_out(G, samples=7, seed=1)
    assert set(scores) == set(reference)
    for name in scores:
        assert torch.allclose(scores[name], reference[name], rtol=1e-4), name


def test_l1_out_renders_no_image():
    G = small_generator()

    def refuse(*args, **kwargs):
        raise AssertionError('l1-out must not run the synthesis network')
    G.synthesis.forward = refuse
    scores = L1OutImportance().scores(G, samples=4, batch=2, seed=0)
    assert all(float(v.max()) > 0 for v in scores.values())


def _reference_diversity(G, crit, samples, batch, seed):
    """DCP-GAN's score written out: per batch and direction, |dL/dW| means; variance across directions."""
    from gan_prune.prune.surgery import scoring_layers as layers_of
    components, var_ratio = crit.principal_components(G, seed, 'cpu')
    gen = torch.Generator().manual_seed(seed + 3)
    z, c = sample_latents(G, samples, seed)
    layers = layers_of(G)
    weights = [layer.weight.requires_grad_(True) for layer in layers.values()]
    totals = {name: torch.zeros(layer.weight.shape[1], dtype=torch.float64) for name, layer in layers.items()}
    for start in range(0, samples, batch):
        with torch.no_grad():
            ws = G.mapping(z[start:start + batch], c[start:start + batch])
        picks = torch.multinomial(var_ratio.double(), crit.directions, replacement=True, generator=gen)
        per_direction = []
        for d in components[picks]:
            with torch.no_grad():
                target = G.synthesis(ws + crit.strength * d, noise_mode='none')
            loss = (target - G.synthesis(ws, noise_mode='none')).abs().sum()
            grads = torch.autograd.grad(loss, weights)
            per_direction.append([g.abs().mean(dim=(0, 2, 3)).double() for g in grads])
        for k, name in enumerate(layers):
            g = torch.stack([p[k] for p in per_direction])  # [K, channels]
            totals[name] += ((g - g.mean(dim=0)) ** 2).mean(dim=0)
    for wt in weights:
        wt.requires_grad_(False)
    return totals


def test_diversity_matches_hand_computation():
    G = small_generator(seed=1)
    crit = DiversityImportance(directions=3, strength=5.0, pca_samples=300, micro_batch=2)
    scores = crit.scores(G, samples=6, batch=3, seed=2)
    reference = _reference_diversity(G, crit, samples=6, batch=3, seed=2)
    for name in scores:
        assert torch.allclose(scores[name], reference[name], rtol=1e-4, atol=1e-12 * float(reference[name].max())), name
        assert float(scores[name].max()) > 0, name


def test_diversity_pca_and_direction_draws():
    G = small_generator()
    crit = DiversityImportance(directions=4, pca_samples=400)
    components, var_ratio = crit.principal_components(G, seed=0, device='cpu')
    assert components.shape == (16, 16)
    assert torch.allclose(components @ components.T, torch.eye(16), atol=1e-4)  # orthonormal directions
    assert float(var_ratio.sum()) == pytest.approx(1.0) and bool((var_ratio[:-1] >= var_ratio[1:]).all())
    # The first direction carries the largest variance of the sampled w.
    z, c = sample_latents(G, 400, 2)
    with torch.no_grad():
        w = G.mapping(z, c)[:, 0].double()
    projected_var = ((w - w.mean(0)) @ components.double().T).var(dim=0)
    assert int(projected_var.argmax()) == 0
    # Draws follow the explained variance: a direction with ratio 0 is never drawn, frequencies track the ratios.
    ratio = torch.tensor([0.7, 0.3, 0.0])
    basis = torch.eye(3)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([crit.draw_directions(basis, ratio, gen) for _ in range(500)])
    counts = drawn.sum(dim=0)
    assert counts[2] == 0 and 0.65 < float(counts[0]) / len(drawn) < 0.75


def test_diversity_is_zero_when_every_direction_is_the_same():
    G = small_generator()
    crit = DiversityImportance(directions=3, pca_samples=100)
    crit.principal_components = lambda *_: (torch.eye(16)[:1], torch.ones(1))
    scores = crit.scores(G, samples=3, batch=3, seed=0)
    assert all(float(v.abs().max()) == 0 for v in scores.values())


def test_diversity_options_are_checked():
    with pytest.raises(GanPruneError, match='at least 2'):
        DiversityImportance(directions=1)
    with pytest.raises(GanPruneError, match='--pca-samples'):
        DiversityImportance(pca_samples=1)
