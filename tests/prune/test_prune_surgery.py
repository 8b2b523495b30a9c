"""Surgery: slicing a teacher into a SlimGenerator is exact (every tensor touching a feature map is cut)."""
import copy

import pytest
import torch

from gan_prune.prune.surgery import feature_maps, identity_kept, slice_generator, slim_kwargs


def teacher(architecture='skip', c_dim=0, num_fp16_res=0, seed=0):
    from training import networks
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, architecture=architecture,
                                                 num_fp16_res=num_fp16_res,
                                                 conv_clamp=256 if num_fp16_res else None)).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, as in a trained network
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
    return G.requires_grad_(False)


def render(G, seed=0, c_dim=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([3, G.z_dim], generator=gen)
    c = torch.eye(max(c_dim, 2))[[0, 1, 0]][:, :c_dim]
    return G(z, c, truncation_psi=0.9, noise_mode='const', force_fp32=True, **kwargs)


CONFIGS = [('skip', 0, 0), ('resnet', 3, 0), ('orig', 0, 0), ('skip', 0, 2)]


@pytest.mark.parametrize('architecture,c_dim,fp16', CONFIGS)
def test_keeping_everything_reproduces_the_teacher_exactly(architecture, c_dim, fp16):
    G = teacher(architecture, c_dim, fp16)
    S = slice_generator(G, identity_kept(G))
    assert torch.equal(render(S, c_dim=c_dim), render(G, c_dim=c_dim))
    assert torch.equal(S.mapping.w_avg, G.mapping.w_avg)
    assert S.num_ws == G.num_ws and S.img_resolution == G.img_resolution


def _kept(G, seed):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(size, generator=gen)[: max(1, size // 2 + 1)].sort().values
            for name, size in feature_maps(G).items()}


def _silence_removed_channels(G, kept):
    """Zero the weights that READ each removed channel; the teacher then ignores those channels entirely."""
    G = copy.deepcopy(G)
    syn = G.synthesis
    res_list = list(syn.block_resolutions)

    def removed(name):
        size = feature_maps(G)[name]
        mask = torch.ones(size, dtype=torch.bool)
        mask[kept[name]] = False
        return mask

    with torch.no_grad():
        for i, res in enumerate(res_list):
            block = getattr(syn, f'b{res}')
            mid = 'b4.const' if res == 4 else f'b{res}.mid'
            block.conv1.weight[:, removed(mid)] = 0
            out_removed = removed(f'b{res}.out')
            if hasattr(block, 'torgb'):
                block.torgb.weight[:, out_removed] = 0
            if i + 1 < len(res_list):
                nxt = getattr(syn, f'b{res_list[i + 1]}')
                nxt.conv0.weight[:, out_removed] = 0
                if hasattr(nxt, 'skip'):
                    nxt.skip.weight[:, out_removed] = 0
    return G


@pytest.mark.parametrize('architecture,c_dim,fp16', CONFIGS[:3])
def test_slicing_matches_teacher_with_removed_channels_silenced(architecture, c_dim, fp16):
    # Zero weight columns add nothing to the demodulation sums, so the silenced teacher computes exactly what a
    # correctly sliced student computes; a wrong index on any weight, bias or style row would show up here.
    G = teacher(architecture, c_dim, fp16)
    kept = _kept(G, seed=1)
    silenced = _silence_removed_channels(G, kept)
    S = slice_generator(silenced, kept)
    assert feature_maps(S) == {k: len(v) for k, v in kept.items()}
    expected, got = render(silenced, c_dim=c_dim), render(S, c_dim=c_dim)
    assert (expected - got).abs().max() <= 1e-5 * max(1, float(expected.abs().max()))
    # ... and a different choice of indices does not match.
    other = slice_generator(silenced, _kept(G, seed=2))
    assert (render(other, c_dim=c_dim) - expected).abs().max() > 1e-3


def test_sliced_tensors_are_teacher_rows_and_columns():
    G = teacher('resnet')
    kept = _kept(G, seed=3)
    S = slice_generator(G, kept)
    t, s = G.synthesis, S.synthesis
    assert torch.equal(s.b4.const, t.b4.const[kept['b4.const']])
    assert torch.equal(s.b8.conv0.weight, t.b8.conv0.weight[kept['b8.mid']][:, kept['b4.out']])
    assert torch.equal(s.b8.conv0.affine.weight, t.b8.conv0.affine.weight[kept['b4.out']])
    assert torch.equal(s.b8.conv1.affine.bias, t.b8.conv1.affine.bias[kept['b8.mid']])
    assert torch.equal(s.b16.skip.weight, t.b16.skip.weight[kept['b16.out']][:, kept['b8.out']])
    assert torch.equal(s.b16.torgb.weight, t.b16.torgb.weight[:, kept['b16.out']])
    assert torch.equal(s.b16.torgb.bias, t.b16.torgb.bias)
    assert torch.equal(s.b16.conv1.noise_const, t.b16.conv1.noise_const)
    assert float(s.b16.torgb.weight_gain) == pytest.approx(float(t.b16.torgb.weight_gain))
    assert float(s.b16.skip.weight_gain) == pytest.approx(float(t.b16.skip.weight_gain))


def test_slim_teacher_can_be_pruned_again():
    G = teacher()
    S1 = slice_generator(G, _kept(G, seed=4))
    S2 = slice_generator(S1, _kept(S1, seed=5))
    assert S2.init_kwargs['gain_channels'] == feature_maps(G)  # the original fan-ins are carried along
    assert render(S2).shape == (3, 3, 16, 16)
    kwargs = slim_kwargs(G, feature_maps(G))
    assert 'channel_base' not in kwargs['synthesis_kwargs'] and kwargs['channels'] == feature_maps(G)


def test_bad_kept_indices_are_rejected():
    G = teacher()
    kept = identity_kept(G)
    with pytest.raises(ValueError, match='unique'):
        slice_generator(G, dict(kept, **{'b8.out': torch.tensor([0, 0])}))
    with pytest.raises(ValueError, match='unique'):
        slice_generator(G, dict(kept, **{'b8.out': torch.tensor([99])}))
    with pytest.raises(ValueError, match='missing'):
        slice_generator(G, {k: v for k, v in kept.items() if k != 'b4.const'})
