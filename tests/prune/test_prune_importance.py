"""Channel importance criteria on small generators: shapes, determinism, masks, planted channels."""
import copy

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.prune.importance import (CRITERIA, ContentAwareImportance, GradientUnmaskedImportance,
                                        RandomImportance, WeightL1Importance, keep_indices, salt_and_pepper)
from gan_prune.prune.masks import MaskProvider, OnesMask
from gan_prune.prune.surgery import feature_maps, scoring_layers


def small_generator(architecture='skip', c_dim=0, img_resolution=16, seed=0):
    from training import networks
    torch.manual_seed(seed)
    return networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=img_resolution, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture=architecture)
                              ).eval().requires_grad_(False)


class ZeroMask(MaskProvider):
    name = 'zero'

    def __call__(self, images):
        return torch.zeros_like(images[:, :1])


SAMPLING = dict(samples=6, batch=4, seed=0)


def build(name, **options):
    """A criterion from the registry with the options its facts say it takes (small numbers for diversity)."""
    facts = CRITERIA.info(name)
    offered = dict(mask=OnesMask(), noise_prob=0.05, micro_batch=4, directions=3, strength=5.0, pca_samples=200)
    offered.update(options)
    return CRITERIA.build(name, **{k: v for k, v in offered.items() if k in facts['options']})


@pytest.mark.parametrize('architecture,c_dim', [('skip', 0), ('resnet', 3), ('orig', 0)])
def test_every_criterion_scores_every_feature_map(architecture, c_dim):
    G = small_generator(architecture, c_dim)
    sizes = feature_maps(G)
    assert list(sizes) == ['b4.const', 'b4.out', 'b8.mid', 'b8.out', 'b16.mid', 'b16.out']
    for name in CRITERIA:
        crit = build(name)
        opts = dict(SAMPLING, samples=4) if name == 'diversity' else SAMPLING
        scores = crit.scores(G, **opts)
        assert set(scores) == set(sizes), name
        for fm, s in scores.items():
            assert s.shape == (sizes[fm],) and s.dtype == torch.float64, (name, fm)
            assert torch.isfinite(s).all() and (s >= 0).all(), (name, fm)
        assert any(float(s.max()) > 0 for s in scores.values()), name


def test_scoring_layers_follow_cagan():
    G = small_generator()
    layers = scoring_layers(G)
    syn = G.synthesis
    assert layers['b4.const'] is syn.b4.conv1
    assert layers['b8.mid'] is syn.b8.conv1
    assert layers['b4.out'] is syn.b8.conv0 and layers['b8.out'] is syn.b16.conv0
    assert layers['b16.out'] is syn.b16.torgb  # only the last toRGB is scored


def test_scoring_does_not_touch_the_teacher():
    G = small_generator()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    ContentAwareImportance(OnesMask()).scores(G, **SAMPLING)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert not any(p.requires_grad for p in G.parameters())


def test_gradient_scores_are_deterministic_for_a_seed():
    G = small_generator()
    a = ContentAwareImportance(OnesMask()).scores(G, **SAMPLING)
    b = ContentAwareImportance(OnesMask()).scores(G, **SAMPLING)
    c = ContentAwareImportance(OnesMask()).scores(G, **dict(SAMPLING, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_gradient_unmasked_is_content_aware_with_all_ones_mask():
    G = small_generator()
    a = GradientUnmaskedImportance().scores(G, **SAMPLING)
    b = ContentAwareImportance(OnesMask()).scores(G, **SAMPLING)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert GradientUnmaskedImportance().describe()['mask'] == 'none'


def test_registry_facts_say_what_each_criterion_needs():
    assert CRITERIA.names() == ['content-aware', 'gradient-unmasked', 'l1-out', 'weight-l1', 'random', 'diversity']
    assert [n for n in CRITERIA if CRITERIA.info(n)['needs_mask']] == ['content-aware']
    assert [n for n in CRITERIA if CRITERIA.info(n)['needs_gradients']] == ['content-aware', 'gradient-unmasked',
                                                                            'diversity']
    assert not CRITERIA.info('l1-out')['needs_gradients'] and CRITERIA.info('l1-out')['needs_samples']
    assert CRITERIA.info('diversity')['samples'] == 5000 and CRITERIA.info('content-aware')['samples'] == 400
    with pytest.raises(TypeError):
        ContentAwareImportance()  # no silent all-ones default: the mask is required


def test_mask_restricts_the_perturbation():
    G = small_generator()
    scores = ContentAwareImportance(ZeroMask()).scores(G, **SAMPLING)
    assert all(float(s.abs().max()) == 0 for s in scores.values())  # nothing perturbed -> zero loss -> zero grads


def test_salt_and_pepper_statistics():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 3, 64, 64)
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., :32] = 1
    noisy = salt_and_pepper(images, mask, 0.05, gen)
    changed = (noisy != images).any(dim=1)
    assert not changed[..., 32:].any()
    frac = changed[..., :32].float().mean().item()
    assert 0.035 < frac < 0.065
    values = noisy[(noisy != 0)]
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    # all colour channels of a hit pixel get the same value
    assert torch.equal(noisy[:, 0], noisy[:, 1]) and torch.equal(noisy[:, 1], noisy[:, 2])


def test_planted_important_channel_scores_highest():
    G = small_generator()
    planted = copy.deepcopy(G)
    with torch.no_grad():
        planted.synthesis.b16.conv1.bias[5] = 30.0  # a strong constant activation into the scored last toRGB
        planted.synthesis.b8.conv1.bias[2] = 30.0   # b8.out channel 2 feeds b16.conv0
    scores = ContentAwareImportance(OnesMask()).scores(planted, **SAMPLING)
    assert int(scores['b16.out'].argmax()) == 5
    assert int(scores['b8.out'].argmax()) == 2
    assert 5 in keep_indices(scores['b16.out'], 2).tolist()


def test_dead_channel_scores_zero():
    G = small_generator()
    with torch.no_grad():
        G.synthesis.b16.conv1.weight[3] = 0  # channel 3 of b16.out is lrelu(bias = 0) = 0 everywhere
    scores = ContentAwareImportance(OnesMask()).scores(G, **SAMPLING)
    assert float(scores['b16.out'][3]) == 0 and float(scores['b16.out'].max()) > 0
    assert 3 not in keep_indices(scores['b16.out'], 7).tolist()


def test_weight_l1_and_random():
    G = small_generator()
    with torch.no_grad():
        G.synthesis.b8.conv1.weight[:, 7] *= 100
    w = WeightL1Importance().scores(G)
    assert int(w['b8.mid'].argmax()) == 7
    r1, r2 = RandomImportance().scores(G, seed=3), RandomImportance().scores(G, seed=3)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    assert not torch.equal(r1['b4.out'], RandomImportance().scores(G, seed=4)['b4.out'])


def test_keep_indices_and_registry():
    s = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert keep_indices(s, 2).tolist() == [1, 3]
    assert keep_indices(s, 3).tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        keep_indices(s, 0)
    with pytest.raises(GanPruneError, match="unknown criterion 'magic'"):
        CRITERIA.build('magic')
    with pytest.raises(GanPruneError, match='at least 1'):
        ContentAwareImportance(OnesMask()).scores(small_generator(), samples=0, batch=4)


def test_micro_batch_does_not_change_scores():
    G = small_generator()
    a = ContentAwareImportance(OnesMask(), micro_batch=1).scores(G, samples=4, batch=4, seed=0)
    b = ContentAwareImportance(OnesMask(), micro_batch=4).scores(G, samples=4, batch=4, seed=0)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-9 * float(b[k].abs().max())), k
