"""CPU inference without the module calls (networks.synthesis_blocks_forward, the mapping layers' direct path).

The direct paths must render the bits the module path renders, run only where every layer of a block takes the
compiled kernels, and step aside for hooks and gradients.
"""
import pytest
import torch

from torch_utils.ops import narrow_conv
from training import networks

needs_kernels = pytest.mark.skipif(narrow_conv.kernels() is None,
                                   reason='the kernels cannot be built here (no C++ compiler/ninja)')


def _generator(architecture='skip', channel_base=512, channel_max=32, resolution=32, seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=resolution, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                                 architecture=architecture, conv_clamp=256))
    for name, buf in G.named_buffers():
        if name.endswith('noise_const'):
            buf.normal_()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.3)
    return G.eval().requires_grad_(False)


def _count_direct_blocks(monkeypatch):
    calls = []
    original = networks._narrow_block_forward
    monkeypatch.setattr(networks, '_narrow_block_forward',
                        lambda block, *a: calls.append(block.resolution) or original(block, *a))
    return calls


def _render(G, z, noise_mode, seed=7):
    torch.manual_seed(seed)  # the same random noise draws on both paths
    with torch.no_grad():
        return G(z, None, noise_mode=noise_mode)


def _modules_only(G):
    """Hooks on every block and mapping layer: everything then runs through the module calls."""
    blocks = [getattr(G.synthesis, f'b{res}') for res in G.synthesis.block_resolutions]
    layers = [getattr(G.mapping, f'fc{i}') for i in range(G.mapping.num_layers)]
    return [m.register_forward_hook(lambda *args: None) for m in blocks + layers]


@needs_kernels
@pytest.mark.parametrize('architecture', ['skip', 'orig'])
@pytest.mark.parametrize('noise_mode', ['const', 'random', 'none'])
def test_direct_blocks_render_the_module_paths_bits(architecture, noise_mode, monkeypatch):
    G = _generator(architecture)
    z = torch.randn([3, 16])
    direct_blocks = _count_direct_blocks(monkeypatch)
    direct = _render(G, z, noise_mode)
    assert direct_blocks == [4, 8, 16, 32]
    direct_blocks.clear()
    handles = _modules_only(G)
    modules = _render(G, z, noise_mode)
    assert direct_blocks == []
    for handle in handles:
        handle.remove()
    assert torch.equal(direct, modules)
    assert direct.abs().max() > 0


@needs_kernels
def test_wide_blocks_run_as_modules_the_others_directly(monkeypatch):
    # 512 channels at 4 and 8 px (wider than the kernels take), 256 and 128 at 16 and 32 px.
    G = _generator(channel_base=4096, channel_max=512)
    assert G.synthesis.b8.conv1.weight.shape[0] > narrow_conv.MAX_CHANNELS >= G.synthesis.b16.conv0.weight.shape[0]
    z = torch.randn([2, 16])
    direct_blocks = _count_direct_blocks(monkeypatch)
    mixed = _render(G, z, 'random')
    assert direct_blocks == [16, 32]
    handles = _modules_only(G)
    modules = _render(G, z, 'random')
    for handle in handles:
        handle.remove()
    assert torch.equal(mixed, modules)


@needs_kernels
def test_a_block_with_a_hook_runs_as_a_module_and_its_hook_sees_its_output(monkeypatch):
    G = _generator()
    seen = []
    handle = G.synthesis.b16.register_forward_hook(lambda module, args, out: seen.append(out))
    direct_blocks = _count_direct_blocks(monkeypatch)
    z = torch.randn([2, 16])
    img = _render(G, z, 'const')
    handle.remove()
    assert direct_blocks == [4, 8, 32]
    (x, block_img), = seen
    assert x.shape == (2, 32, 16, 16) and block_img.shape == (2, 3, 16, 16)
    handles = _modules_only(G)
    assert torch.equal(img, _render(G, z, 'const'))
    for handle in handles:
        handle.remove()


@needs_kernels
def test_a_filter_the_block_output_kernel_cannot_take_gives_the_same_image(monkeypatch):
    G = _generator()
    not_separable = torch.eye(4) + 0.1
    not_separable /= not_separable.sum()
    for module in G.modules():
        if hasattr(module, 'resample_filter'):
            module.resample_filter.copy_(not_separable)
    z = torch.randn([2, 16])
    direct_blocks = _count_direct_blocks(monkeypatch)
    direct = _render(G, z, 'random')
    assert direct_blocks == [4, 8, 16, 32]  # the steps one by one inside the direct path
    handles = _modules_only(G)
    modules = _render(G, z, 'random')
    for handle in handles:
        handle.remove()
    assert torch.equal(direct, modules)
    monkeypatch.setattr(networks, '_narrow_module', [None])  # no kernels: PyTorch operations throughout
    plain = _render(G, z, 'random')
    # The same noise draws (each layer's once), so the same image up to float32 rounding.
    assert float((plain - direct).abs().max()) <= 1e-4 * float(plain.abs().max())


@needs_kernels
def test_gradients_keep_the_module_path(monkeypatch):
    G = _generator()
    G.synthesis.b32.conv1.weight.requires_grad_(True)
    direct_blocks = _count_direct_blocks(monkeypatch)
    img = G(torch.randn([2, 16]), None, noise_mode='const')
    img.square().sum().backward()
    assert direct_blocks == [4, 8, 16]  # b32 has a parameter that requires grad
    assert G.synthesis.b32.conv1.weight.grad.abs().sum() > 0


@needs_kernels
def test_unknown_block_arguments_go_to_the_modules(monkeypatch):
    G = _generator()
    direct_blocks = _count_direct_blocks(monkeypatch)
    ws = G.mapping(torch.randn([1, 16]), None)
    with torch.no_grad():
        with pytest.raises(TypeError):
            G.synthesis(ws, noise_mode='const', no_such_argument=1)
    assert direct_blocks == []


def test_profiler_records_only_while_one_runs(monkeypatch):
    G = _generator(resolution=8)
    z = torch.randn([1, 16])
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        G(z, None)
    names = {event.name for event in prof.events()}
    assert {'input', 'normalize_2nd_moment', 'broadcast', 'split_ws'} <= names

    def refuse(name):
        raise AssertionError(f'record_function({name!r}) without a profiler')
    monkeypatch.setattr(torch.autograd.profiler, 'record_function', refuse)
    with torch.no_grad():
        assert G(z, None).shape == (1, 3, 8, 8)
