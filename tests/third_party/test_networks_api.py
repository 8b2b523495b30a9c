"""training.networks: the public interface (spec section 3) beyond what the golden numbers cover.

Constructor signatures and stored attributes, persistence, noise modes, truncation, w_avg tracking, the fused
and non-fused modulated convolution, fp16 blocks, frozen layers, numpy-scalar attributes from old pickles,
and the import contract of the module text that travels inside network pickles.
"""
import ast
import copy
import inspect
import pickle

import numpy as np
import pytest
import torch

from torch_utils import persistence
from training import networks

CLASSES = ['FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer', 'SynthesisBlock',
           'SynthesisNetwork', 'Generator', 'DiscriminatorBlock', 'MinibatchStdLayer', 'DiscriminatorEpilogue',
           'Discriminator']


def tiny_G(**overrides) -> torch.nn.Module:
    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    for key, value in overrides.items():
        if key in ('mapping_kwargs', 'synthesis_kwargs'):
            kwargs[key] = dict(kwargs[key], **value)
        else:
            kwargs[key] = value
    return networks.Generator(**kwargs)


def tiny_D(**overrides) -> torch.nn.Module:
    kwargs = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                  epilogue_kwargs=dict(mbstd_group_size=2))
    kwargs.update(overrides)
    return networks.Discriminator(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Signatures, attributes, persistence.

SIGNATURES = {
    'FullyConnectedLayer': "(in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0)",
    'Conv2dLayer': "(in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1, "
                   "resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False, trainable=True)",
    'MappingNetwork': "(z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None, "
                      "activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.995)",
    'SynthesisLayer': "(in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True, "
                      "activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False)",
    'ToRGBLayer': '(in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False)',
    'SynthesisBlock': "(in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip', "
                      "resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False, fp16_channels_last=False, "
                      "**layer_kwargs)",
    'SynthesisNetwork': '(w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0, '
                        '**block_kwargs)',
    'Generator': '(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={})',
    'DiscriminatorBlock': "(in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx, "
                          "architecture='resnet', activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None, "
                          "use_fp16=False, fp16_channels_last=False, freeze_layers=0)",
    'MinibatchStdLayer': '(group_size, num_channels=1)',
    'DiscriminatorEpilogue': "(in_channels, cmap_dim, resolution, img_channels, architecture='resnet', "
                             "mbstd_group_size=4, mbstd_num_channels=1, activation='lrelu', conv_clamp=None)",
    'Discriminator': "(c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768, "
                     "channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={}, "
                     "mapping_kwargs={}, epilogue_kwargs={})",
}

FORWARD_SIGNATURES = {
    'FullyConnectedLayer': '(x)',
    'Conv2dLayer': '(x, gain=1)',
    'MappingNetwork': '(z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False)',
    'SynthesisLayer': "(x, w, noise_mode='random', fused_modconv=True, gain=1)",
    'ToRGBLayer': '(x, w, fused_modconv=True)',
    'SynthesisBlock': '(x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs)',
    'SynthesisNetwork': '(ws, **block_kwargs)',
    'Generator': '(z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs)',
    'DiscriminatorBlock': '(x, img, force_fp32=False)',
    'MinibatchStdLayer': '(x)',
    'DiscriminatorEpilogue': '(x, img, cmap, force_fp32=False)',
    'Discriminator': '(img, c, **block_kwargs)',
}


@pytest.mark.parametrize('name', CLASSES)
def test_classes_are_persistent_with_reference_signatures(name):
    cls = getattr(networks, name)
    assert persistence.is_persistent(cls)
    assert cls.__name__ == name
    assert cls.__mro__[1].__module__ == 'training.networks'
    assert str(inspect.signature(cls.__mro__[1].__init__)).replace('self, ', '') == SIGNATURES[name]
    assert str(inspect.signature(cls.forward)).replace('self, ', '') == FORWARD_SIGNATURES[name]


def test_module_functions_signatures():
    assert str(inspect.signature(networks.normalize_2nd_moment)) == '(x, dim=1, eps=1e-08)'
    assert str(inspect.signature(networks.modulated_conv2d)) == (
        '(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None, demodulate=True, '
        'flip_weight=True, fused_modconv=True)')


def _own_attrs(module: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if not k.startswith('_') and k != 'training'}


def test_stored_attributes_match_the_spec():
    G = tiny_G(synthesis_kwargs=dict(architecture='resnet'))
    D = tiny_D()
    expected = {
        G: {'z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'num_ws'},
        G.mapping: {'z_dim', 'c_dim', 'w_dim', 'num_ws', 'num_layers', 'w_avg_beta'},
        G.mapping.fc0: {'activation', 'weight_gain', 'bias_gain'},
        G.synthesis: {'w_dim', 'img_resolution', 'img_resolution_log2', 'img_channels', 'block_resolutions',
                      'num_ws'},
        G.synthesis.b8: {'in_channels', 'w_dim', 'resolution', 'img_channels', 'is_last', 'architecture',
                         'use_fp16', 'channels_last', 'num_conv', 'num_torgb'},
        G.synthesis.b8.conv0: {'resolution', 'up', 'use_noise', 'activation', 'conv_clamp', 'padding', 'act_gain'},
        G.synthesis.b16.torgb: {'conv_clamp', 'weight_gain'},
        # bias=False: `bias` is a plain None attribute, not a state-dict key.
        G.synthesis.b8.skip: {'activation', 'up', 'down', 'conv_clamp', 'padding', 'weight_gain', 'act_gain', 'bias'},
        D: {'c_dim', 'img_resolution', 'img_resolution_log2', 'img_channels', 'block_resolutions'},
        D.b16: {'in_channels', 'resolution', 'img_channels', 'first_layer_idx', 'architecture', 'use_fp16',
                'channels_last', 'num_layers'},
        D.b4: {'in_channels', 'cmap_dim', 'resolution', 'img_channels', 'architecture'},
        D.b4.mbstd: {'group_size', 'num_channels'},
    }
    for module, attrs in expected.items():
        assert set(_own_attrs(module)) == attrs, type(module).__name__
    assert G.synthesis.b8.skip.bias is None and 'synthesis.b8.skip.bias' not in G.state_dict()


def test_float_attributes_are_python_floats():
    # numpy scalars pickle as numpy._core.* under numpy 2, which numpy 1.x environments cannot load.
    for net in (tiny_G(), tiny_D(c_dim=3)):
        for module in net.modules():
            for key, value in _own_attrs(module).items():
                assert not isinstance(value, np.generic), f'{type(module).__name__}.{key} is {type(value)}'
    layer = networks.SynthesisLayer(4, 4, w_dim=8, resolution=8)
    assert type(layer.act_gain) is float and layer.act_gain == pytest.approx(np.sqrt(2))
    fc = networks.FullyConnectedLayer(16, 4, lr_multiplier=0.01)
    assert type(fc.weight_gain) is float and fc.weight_gain == pytest.approx(0.01 / 4)


def test_numpy_scalar_attributes_from_old_pickles_still_work():
    torch.manual_seed(0)
    G = tiny_G(synthesis_kwargs=dict(architecture='resnet')).eval()
    D = tiny_D().eval()
    z = torch.randn(2, 16)
    img = G(z, None, noise_mode='const')
    logits = D(img, None)
    for net in (G, D):
        for module in net.modules():
            for key in ('weight_gain', 'act_gain', 'bias_gain'):
                if key in vars(module):
                    setattr(module, key, np.float64(getattr(module, key)))
    img2 = G(z, None, noise_mode='const')
    assert isinstance(img2, torch.Tensor) and img2.dtype == torch.float32
    assert torch.allclose(img, img2, rtol=0, atol=1e-6)
    assert torch.allclose(logits, D(img, None), rtol=0, atol=1e-6)


def test_module_source_imports_only_what_the_original_environment_provides():
    tree = ast.parse(inspect.getsource(inspect.getmodule(networks.Generator.__mro__[1])))
    allowed_modules = {'numpy', 'torch', 'dnnlib', 'warnings'}
    allowed_from = {'torch_utils': {'misc', 'persistence'},
                    'torch_utils.ops': {'conv2d_resample', 'upfirdn2d', 'bias_act', 'fma'}}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(alias.name in allowed_modules for alias in node.names), ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module in allowed_from, ast.dump(node)
            assert {alias.name for alias in node.names} <= allowed_from[node.module], ast.dump(node)


def test_pickle_round_trip_and_deepcopy():
    torch.manual_seed(1)
    G = tiny_G(c_dim=3).eval()
    z, c = torch.randn(2, 16), torch.eye(3)[:2]
    ref = G(z, c, noise_mode='const')
    G2 = pickle.loads(pickle.dumps(G))
    G3 = copy.deepcopy(G)
    assert type(G2).__name__ == 'Generator' and G2.init_kwargs == G.init_kwargs
    assert torch.equal(G2(z, c, noise_mode='const'), ref)
    assert torch.equal(G3(z, c, noise_mode='const'), ref)


def test_init_kwargs_rebuild_gives_same_state_layout():
    G = tiny_G(synthesis_kwargs=dict(architecture='orig'), mapping_kwargs=dict(num_layers=3))
    rebuilt = networks.Generator(**G.init_kwargs)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in G.state_dict().items()]


# ----------------------------------------------------------------------------------------------------------------
# Generator behaviour.

def test_parameter_order_is_synthesis_then_mapping():
    names = [n for n, _ in tiny_G(c_dim=2).named_parameters()]
    first_mapping = next(i for i, n in enumerate(names) if n.startswith('mapping.'))
    assert all(n.startswith('synthesis.') for n in names[:first_mapping])
    assert all(n.startswith('mapping.') for n in names[first_mapping:])
    assert names[first_mapping] == 'mapping.embed.weight'


@pytest.mark.parametrize('architecture, num_ws', [('skip', 6), ('orig', 6), ('resnet', 6)])
def test_num_ws_and_float64_z_and_none_c(architecture, num_ws):
    G = tiny_G(synthesis_kwargs=dict(architecture=architecture)).eval()
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == num_ws
    z = torch.from_numpy(np.random.RandomState(0).randn(3, 16))  # float64, as generate.py passes it
    img = G(z, None, noise_mode='const')
    assert img.shape == (3, 3, 16, 16) and img.dtype == torch.float32
    ws = G.mapping(z, None)
    assert ws.shape == (3, num_ws, 16) and ws.dtype == torch.float32


def test_noise_modes():
    torch.manual_seed(2)
    G = tiny_G().eval()
    for module in G.modules():
        if isinstance(module, networks.SynthesisLayer):
            module.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(2, 16), None)
    const_a = G.synthesis(ws, noise_mode='const')
    const_b = G.synthesis(ws, noise_mode='const')
    random_a = G.synthesis(ws, noise_mode='random')
    random_b = G.synthesis(ws, noise_mode='random')
    none = G.synthesis(ws, noise_mode='none')
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(random_a, random_b)
    assert not torch.allclose(const_a, none)
    torch.manual_seed(5)
    r1 = G.synthesis(ws, noise_mode='random')
    torch.manual_seed(5)
    r2 = G.synthesis(ws, noise_mode='random')
    assert torch.equal(r1, r2)  # random noise comes from the global RNG
    for module in G.modules():
        if isinstance(module, networks.SynthesisLayer):
            module.noise_strength.data.zero_()
    assert torch.allclose(G.synthesis(ws, noise_mode='const'), none, atol=1e-6)
    with pytest.raises(AssertionError):
        G.synthesis(ws, noise_mode='bogus')


def test_truncation_and_cutoff():
    torch.manual_seed(3)
    G = tiny_G().eval()
    G.mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(4, 16)
    ws = G.mapping(z, None)
    assert torch.allclose(G.mapping(z, None, truncation_psi=0), G.mapping.w_avg.expand_as(ws), atol=1e-6)
    half = G.mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(half, G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg), atol=1e-6)
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], half[:, :2], atol=1e-6)
    assert torch.equal(cut[:, 2:], ws[:, 2:])
    assert torch.equal(ws[:, 0], ws[:, -1])  # broadcast of a single w


def test_w_avg_tracking_only_in_training_mode():
    torch.manual_seed(4)
    G = tiny_G()
    z = torch.randn(8, 16)
    G.eval()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, torch.zeros(16))
    G.train()
    G.mapping(z, None, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, torch.zeros(16))
    with torch.no_grad():
        w = G.mapping(z, None)[:, 0]
    expected = w.mean(0) * (1 - 0.995)
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-7)


def test_conditional_mapping_and_discriminator():
    torch.manual_seed(6)
    G = tiny_G(c_dim=4).eval()
    D = tiny_D(c_dim=4).eval()
    assert D.mapping.num_ws is None and not hasattr(D.mapping, 'w_avg')
    assert D.b4.cmap_dim == 16 and D.mapping.fc7.weight.shape == (16, 16)
    assert D.mapping.fc0.weight_gain == pytest.approx(0.01 / 4)  # z_dim 0: fc0 sees the 16-d embedding
    z = torch.randn(2, 16)
    c_a, c_b = torch.eye(4)[[0, 1]], torch.eye(4)[[2, 3]]
    assert not torch.allclose(G(z, c_a, noise_mode='const'), G(z, c_b, noise_mode='const'))
    img = G(z, c_a, noise_mode='const')
    assert D(img, c_a).shape == (2, 1)
    assert not torch.allclose(D(img, c_a), D(img, c_b))


@pytest.mark.parametrize('kernel', [3, 1])
def test_fused_grouped_path_agrees_with_nonfused_path(kernel):
    torch.manual_seed(7)
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 6, kernel, kernel, dtype=torch.float64)
    styles = torch.randn(3, 6, dtype=torch.float64)
    up = 2 if kernel == 3 else 1
    noise = torch.randn(3, 1, 8 * up, 8 * up, dtype=torch.float64)
    f = torch.tensor([1., 3., 3., 1.])
    f = (f[:, None] * f[None, :]) / 64
    results = []
    for fused in (True, False):  # one grouped convolution with per-sample weights, or modulated activations
        inputs = [t.clone().requires_grad_(True) for t in (x, weight, styles)]
        out = networks.modulated_conv2d(*inputs, noise=noise, up=up, padding=kernel // 2, resample_filter=f,
                                        flip_weight=(up == 1), fused_modconv=fused)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        results.append((out, grads))
    (out_f, grads_f), (out_n, grads_n) = results
    assert torch.allclose(out_f, out_n, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_f, grads_n):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_demodulation_normalises_each_output_channel():
    torch.manual_seed(8)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 6, dtype=torch.float64)
    out = networks.modulated_conv2d(x, weight, styles, padding=1)
    # Scaling the styles of one sample leaves a demodulated result unchanged.
    out_scaled = networks.modulated_conv2d(x, weight, styles * torch.tensor([[3.0], [0.25]], dtype=torch.float64),
                                           padding=1)
    assert torch.allclose(out, out_scaled, atol=1e-9)
    plain = networks.modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert not torch.allclose(out, plain)


def test_training_mode_uses_nonfused_path_and_backpropagates():
    torch.manual_seed(9)
    G = tiny_G(synthesis_kwargs=dict(architecture='resnet'))
    ws = G.mapping(torch.randn(2, 16), None).detach()
    G.eval()
    ref = G.synthesis(ws, noise_mode='const')
    G.train()
    out = G.synthesis(ws, noise_mode='const')
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().sum().backward()
    assert all(p.grad is not None for n, p in G.synthesis.named_parameters())


def test_fp16_blocks_compute_in_float16_and_clamp():
    torch.manual_seed(10)
    G = tiny_G(synthesis_kwargs=dict(num_fp16_res=2, conv_clamp=256, fp16_channels_last=True))
    G.eval().requires_grad_(False)
    assert [G.synthesis.b4.use_fp16, G.synthesis.b8.use_fp16, G.synthesis.b16.use_fp16] == [False, True, True]
    assert G.synthesis.b16.channels_last
    seen = {}
    for r in G.synthesis.block_resolutions:
        getattr(G.synthesis, f'b{r}').register_forward_hook(lambda _m, _i, out, r=r: seen.__setitem__(r, out))
    for batch in (1, 2):  # batch 1 takes the fused (grouped) path in float16 blocks
        ws = G.mapping(torch.randn(batch, 16), None)
        img16 = G.synthesis(ws, noise_mode='const')
        assert [seen[r][0].dtype for r in (4, 8, 16)] == [torch.float32, torch.float16, torch.float16]
        assert all(seen[r][1].dtype == torch.float32 for r in (4, 8, 16))
        img32 = G.synthesis(ws, noise_mode='const', force_fp32=True)
        assert [seen[r][0].dtype for r in (4, 8, 16)] == [torch.float32] * 3
        assert img16.dtype == torch.float32
        err = float((img16 - img32).abs().max())
        assert 0 < err < 0.05 * float(img32.abs().max())
    # The clamp limits every ToRGB output (and so each block's image contribution).
    big = G.synthesis(ws * 1e4, noise_mode='const', force_fp32=True)
    assert float(big.abs().max()) <= 256 * 3 * 4 + 1e-3  # three torgb outputs of at most 256, upsampled
    D = tiny_D(num_fp16_res=1, conv_clamp=256).eval()
    assert D.b16.use_fp16 and not D.b8.use_fp16
    assert D(img32, None).dtype == torch.float32


def test_frozen_discriminator_layers_are_buffers():
    D = tiny_D(block_kwargs=dict(freeze_layers=2))
    assert [D.b16.first_layer_idx, D.b8.first_layer_idx] == [0, D.b16.num_layers]
    assert D.b16.num_layers == 4  # fromrgb, conv0, conv1, skip
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    assert 'b16.fromrgb.weight' in buffers and 'b16.fromrgb.bias' in buffers
    assert 'b16.conv0.weight' in buffers
    assert 'b16.conv1.weight' in params and 'b8.conv0.weight' in params
    assert set(D.state_dict()) == set(tiny_D().state_dict())


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_discriminator_architectures(architecture):
    torch.manual_seed(11)
    D = tiny_D(architecture=architecture).eval()
    has_fromrgb = [hasattr(getattr(D, f'b{r}'), 'fromrgb') for r in D.block_resolutions]
    assert has_fromrgb == ([True, True] if architecture == 'skip' else [True, False])
    assert hasattr(D.b4, 'fromrgb') == (architecture == 'skip')
    assert hasattr(D.b16, 'skip') == (architecture == 'resnet')
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D(img, None)
    assert logits.shape == (4, 1)
    (grad,) = torch.autograd.grad(logits.sum(), [img])
    assert grad.abs().sum() > 0


def test_minibatch_std_groups():
    x = torch.randn(4, 6, 2, 2)
    out = networks.MinibatchStdLayer(group_size=2, num_channels=2)(x)
    assert out.shape == (4, 8, 2, 2)
    # Samples i and i + N/G form a group, so they share the statistic.
    assert torch.equal(out[0, 6:], out[2, 6:]) and torch.equal(out[1, 6:], out[3, 6:])
    expected = (x.reshape(2, 2, 2, 3, 2, 2).var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    assert torch.allclose(out[:2, 6:, 0, 0], expected, atol=1e-6)


def test_shape_errors_are_assertions():
    G = tiny_G().eval()
    with pytest.raises(AssertionError):
        G.synthesis(torch.randn(2, G.num_ws + 1, 16))
    with pytest.raises(AssertionError):
        G.mapping(torch.randn(2, 15), None)


def _params_to_float64(module: torch.nn.Module) -> torch.nn.Module:
    # Resampling filters stay float32, as the ops require.
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None:
                p.data = p.data.double()
        if 'noise_const' in m._buffers:
            m._buffers['noise_const'] = m._buffers['noise_const'].double()
    return module


@pytest.mark.parametrize('layer_kind', ['synthesis', 'synthesis_up', 'conv_down', 'conv_same', 'skip_down', 'skip_up'])
def test_layer_epilogues_clamp_both_sides_and_backpropagate(layer_kind):
    """Gain, clamp and activation of the layers: the clamp reaches both sides, gradients reach every operand."""
    torch.manual_seed(12)
    if layer_kind.startswith('synthesis'):
        up = 2 if layer_kind == 'synthesis_up' else 1
        layer = _params_to_float64(networks.SynthesisLayer(4, 5, w_dim=6, resolution=8, up=up, conv_clamp=0.3))
        layer.noise_strength.data.fill_(0.7)
        layer.bias.data.normal_()
        inputs = [torch.randn(3, 4, 8 // up, 8 // up, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)]
        call = lambda x, w: layer(x, w, noise_mode='const', gain=np.sqrt(0.5))  # noqa: E731
    elif layer_kind.startswith('conv'):
        down = 2 if layer_kind == 'conv_down' else 1
        layer = _params_to_float64(networks.Conv2dLayer(4, 5, 3, activation='lrelu', down=down, conv_clamp=0.3))
        layer.bias.data.normal_()
        inputs = [4 * torch.randn(3, 4, 8, 8, dtype=torch.float64)]
        call = lambda x: layer(x, gain=np.sqrt(0.5))  # noqa: E731
    else:  # resnet skip connections: 1x1, no bias, linear, resampling
        up, down = (2, 1) if layer_kind == 'skip_up' else (1, 2)
        layer = _params_to_float64(networks.Conv2dLayer(4, 5, 1, bias=False, up=up, down=down))
        inputs = [torch.randn(3, 4, 8, 8, dtype=torch.float64)]
        call = lambda x: layer(x, gain=np.sqrt(0.5))  # noqa: E731
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = call(*leaves)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    grads = torch.autograd.grad((out * r).sum(), leaves + params)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    out_generic = out.detach()
    if not layer_kind.startswith('skip'):
        limit = 0.3 * np.sqrt(0.5)  # conv_clamp * gain
        assert float(out_generic.abs().max()) == pytest.approx(limit)  # the clamp is active
        assert (out_generic.abs() < limit).any() and (out_generic == -limit).any()  # both clamp sides reached
