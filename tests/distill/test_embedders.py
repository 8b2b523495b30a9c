import hashlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.distill import embedders as E
from gan_prune.distill.embedders import Embedder, build_embedder, split_spec
from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing here may download


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _assert_frozen(emb: Embedder):
    emb.train()
    assert not emb.training and all(not m.training for m in emb.modules())
    assert all(not p.requires_grad for p in emb.parameters())


def _assert_gradient_reaches_input(emb: Embedder, size=32, n=2):
    img = _images(n, size).requires_grad_(True)
    emb(img).square().sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in emb.parameters())


def test_split_spec_and_unknown():
    assert split_spec('clip:RN50') == ('clip', 'RN50')
    assert split_spec(' dino-resnet50 ') == ('dino-resnet50', None)
    assert split_spec('torchscript:/a/b:c.pt') == ('torchscript', '/a/b:c.pt')
    assert {'effnet-lite0', 'clip', 'dino-resnet50', 'torchscript'} <= set(E.embedder_families())
    with pytest.raises(GanPruneError):
        build_embedder('inception-v3')


def test_registry_new_embedder_is_a_new_class():
    @E.register_embedder
    class MeanColour(Embedder):
        family = 'test-mean-colour'

        def __init__(self, normalize):
            super().__init__('test-mean-colour', 3, normalize)
            self.freeze()

        @classmethod
        def from_spec(cls, arg, weights, normalize, *, trust=False):
            return cls(normalize)

        def embed(self, x):
            return x.mean(dim=(2, 3))

    try:
        emb = build_embedder('test-mean-colour')
        img = _images(3, 8)
        assert torch.allclose(emb(img), img.mean(dim=(2, 3)))
        # Grayscale inputs are replicated to RGB; other channel counts are refused.
        gray = _images(2, 8)[:, :1]
        assert emb(gray).shape == (2, 3)
        with pytest.raises(GanPruneError):
            emb(torch.zeros(1, 4, 8, 8))
    finally:
        E.EMBEDDERS.unregister('test-mean-colour')


# ------------------------------------------------------------------------------------------------ effnet-lite0

@pytest.fixture(scope='module')
def effnet():
    return build_embedder('effnet-lite0')


def test_effnet_embedder(effnet):
    assert effnet.name == 'effnet-lite0' and effnet.dim == 1280
    _assert_frozen(effnet)
    img = _images(2, 32).requires_grad_(True)
    out = effnet(img)
    assert out.shape == (2, 1280) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in effnet.parameters())
    # Release-style input: resize to 224 only; normalize=True additionally applies ImageNet mean/std.
    with torch.no_grad():
        resized = F.interpolate(img, size=(224, 224), mode='bilinear', align_corners=False)
        assert torch.allclose(out, effnet.model.features(resized), atol=1e-5)
    normalized = build_embedder('effnet-lite0', normalize=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normalized.prepare(img.detach()), ((resized + 1) / 2 - mean) / std, atol=1e-6)


def test_effnet_input_size(effnet):
    small = build_embedder('effnet-lite0:96')
    assert small.name == 'effnet-lite0:96' and small.dim == 1280
    img = _images(2, 32)
    with torch.no_grad():
        resized = F.interpolate(img, size=(96, 96), mode='bilinear', align_corners=False)
        assert torch.allclose(small(img), effnet.model.features(resized), atol=1e-5)
        assert not torch.allclose(small(img), effnet(img), atol=1e-3)  # a different input size, other features
    for bad in ('effnet-lite0:big', 'effnet-lite0:8'):
        with pytest.raises(GanPruneError, match='input size'):
            build_embedder(bad)


def test_effnet_bad_weights(tmp_path):
    with pytest.raises(GanPruneError):
        build_embedder('effnet-lite0', weights=str(tmp_path / 'missing.pth'))
    bad = tmp_path / 'bad.pth'
    torch.save({'x': torch.zeros(1)}, bad)
    with pytest.raises(GanPruneError):
        build_embedder('effnet-lite0', weights=str(bad))
    with pytest.raises(GanPruneError):
        build_embedder('effnet-lite0:large')


# ------------------------------------------------------------------------------------------------ CLIP

@pytest.fixture(scope='module')
def clip_checkpoint(tmp_path_factory):
    """A randomly initialised open_clip RN50 saved by us, so the real pretrained=FILE path is exercised."""
    import open_clip
    torch.manual_seed(0)
    model = open_clip.create_model('RN50')
    path = tmp_path_factory.mktemp('clip') / 'rn50_random.pt'
    state = model.state_dict()
    torch.save(state, path)
    visual = {k[len('visual.'):]: v.clone() for k, v in state.items() if k.startswith('visual.')}
    del model
    yield str(path), visual, state
    os.remove(path)


@pytest.fixture(scope='module')
def clip_embedder(clip_checkpoint):
    return build_embedder('clip:RN50', weights=clip_checkpoint[0])


def test_clip_loads_file_weights(clip_checkpoint, clip_embedder):
    _, visual, _ = clip_checkpoint
    emb = clip_embedder
    assert emb.name == 'clip:RN50' and emb.dim == 1024
    loaded = emb.visual.state_dict()
    assert set(loaded) == set(visual)
    assert all(torch.equal(loaded[k], visual[k]) for k in visual)
    _assert_frozen(emb)


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_clip_loads_openai_torchscript_archive(clip_checkpoint, tmp_path, monkeypatch):
    """OpenAI's own release files (e.g. RN50.pt) are TorchScript archives holding fp16 weights."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in clip_checkpoint[2].items()}
    root = _Holder()
    for key, value in state.items():
        *path, leaf = key.split('.')
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value)
    archive = tmp_path / 'RN50.pt'
    torch.jit.save(torch.jit.script(root), str(archive))
    del root
    # A TorchScript archive is a program: refused unless trusted or a published file known by its checksum.
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        build_embedder('clip:RN50', weights=str(archive))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(torchscript.KNOWN_TORCHSCRIPT_SHA256, digest, 'RN50.pt (test stand-in for the OpenAI file)')
    emb = build_embedder('clip:RN50', weights=str(archive))
    assert emb.dim == 1024
    loaded = emb.visual.state_dict()
    visual = {k[len('visual.'):]: v for k, v in state.items() if k.startswith('visual.')}
    assert set(loaded) == set(visual)
    assert all(torch.equal(loaded[k], visual[k].to(loaded[k].dtype)) for k in visual)
    assert emb.visual.conv1.weight.dtype == torch.float32
    _assert_frozen(emb)
    with pytest.raises(GanPruneError, match='not RN101'):
        build_embedder('clip:RN101', weights=str(archive))  # the archive defines RN50


def test_clip_forward_release_preparation(clip_embedder):
    emb = clip_embedder
    img = _images(2, 64)
    # As released: bilinear resize to 224, pixels stay in [-1, 1], no CLIP mean/std.
    expected = F.interpolate(img, size=(224, 224), mode='bilinear', align_corners=False)
    assert torch.equal(emb.prepare(img), expected)
    one = img[:1].clone().requires_grad_(True)
    out = emb(one)
    assert out.shape == (1, 1024) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().sum().backward()
    assert one.grad is not None and one.grad.abs().sum() > 0
    assert all(p.grad is None for p in emb.parameters())


def test_clip_normalized_preparation(clip_checkpoint):
    emb = build_embedder('clip:RN50', weights=clip_checkpoint[0], normalize=True)
    assert emb.resolution == 224
    img = _images(2, 64)
    x = F.interpolate((img + 1) / 2, size=(224, 224), mode=emb.interpolation, align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(emb.prepare(img), (x - mean) / std, atol=1e-6)


def test_clip_errors(tmp_path, clip_checkpoint):
    with pytest.raises(GanPruneError, match='needs a weights file'):
        build_embedder('clip:RN50')
    with pytest.raises(GanPruneError, match='not found'):
        build_embedder('clip:RN50', weights=str(tmp_path / 'nope.pt'))
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(GanPruneError):
        build_embedder('clip:RN50', weights=str(garbage))
    with pytest.raises(GanPruneError, match='unknown open_clip architecture'):
        build_embedder('clip:NoSuchNet', weights=clip_checkpoint[0])
    with pytest.raises(GanPruneError):
        build_embedder('clip:RN101', weights=clip_checkpoint[0])  # shapes do not match


# ------------------------------------------------------------------------------------------------ DINO ResNet-50

@pytest.fixture(scope='module')
def dino_state():
    import torchvision
    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize('prefix,keep_fc,training_checkpoint', [
    ('', False, False), ('module.', True, False), ('module.backbone.', False, False), ('backbone.', False, True)])
def test_dino_loads_state_dict(tmp_path, dino_state, prefix, keep_fc, training_checkpoint):
    state = {prefix + k: v for k, v in dino_state.items() if keep_fc or not k.startswith('fc.')}
    if training_checkpoint:  # {'teacher': backbone + projection head, ...} as DINO training writes it
        state = {'teacher': {**state, 'head.mlp.0.weight': torch.zeros(4, 2048)}, 'epoch': 100}
    path = tmp_path / 'dino.pth'
    torch.save(state, path)
    emb = build_embedder('dino-resnet50', weights=str(path))
    assert emb.name == 'dino-resnet50' and emb.dim == 2048
    loaded = emb.model.state_dict()
    expected = {k: v for k, v in dino_state.items() if not k.startswith('fc.')}
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    _assert_frozen(emb)


def test_dino_forward_raw_images(tmp_path, dino_state, monkeypatch):
    import torchvision
    path = tmp_path / 'dino_resnet50_pretrain.pth'
    torch.save({k: v for k, v in dino_state.items() if not k.startswith('fc.')}, path)
    monkeypatch.setenv('GAN_PRUNE_WEIGHTS', str(tmp_path))
    emb = build_embedder('dino-resnet50', weights='dino_resnet50_pretrain.pth')  # bare name, searched
    ref = torchvision.models.resnet50(weights=None)
    ref.fc = nn.Identity()
    ref.load_state_dict({k: v for k, v in dino_state.items() if not k.startswith('fc.')})
    ref.eval()
    img = _images(2, 32)
    with torch.no_grad():
        out = emb(img)
        # As released: the raw [-1, 1] images at their own resolution.
        assert torch.allclose(out, ref(img), atol=1e-5)
    assert out.shape == (2, 2048)
    _assert_gradient_reaches_input(emb, size=32, n=1)
    norm = build_embedder('dino-resnet50', weights=str(path), normalize=True)
    x = F.interpolate((img + 1) / 2, size=(224, 224), mode='bilinear', align_corners=False)
    x = (x - torch.tensor(E.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(E.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(norm.prepare(img), x, atol=1e-6)


def test_dino_errors(tmp_path):
    with pytest.raises(GanPruneError):
        build_embedder('dino-resnet50')
    with pytest.raises(GanPruneError):
        build_embedder('dino-resnet50', weights=str(tmp_path / 'nope.pth'))
    wrong = tmp_path / 'wrong.pth'
    torch.save({'conv1.weight': torch.zeros(3, 3)}, wrong)
    with pytest.raises(GanPruneError):
        build_embedder('dino-resnet50', weights=str(wrong))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'xx')
    with pytest.raises(GanPruneError):
        build_embedder('dino-resnet50', weights=str(garbage))


# ------------------------------------------------------------------------------------------------ TorchScript

class _TwoByThree(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3)).reshape(-1, 2, 3)


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_torchscript_embedder(tmp_path):
    torch.manual_seed(2)
    module = _TwoByThree().eval()
    path = tmp_path / 'feat.pt'
    torch.jit.save(torch.jit.script(module), str(path))
    emb = build_embedder(f'torchscript:{path}', trust=True)
    assert emb.dim == 6 and emb.name == f'torchscript:{path}'
    img = _images(3, 20)
    with torch.no_grad():
        assert torch.allclose(emb(img), module(img).reshape(3, 6), atol=1e-6)
    _assert_frozen(emb)
    _assert_gradient_reaches_input(emb, size=20)
    with pytest.raises(GanPruneError):
        build_embedder('torchscript')
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'nope')
    with pytest.raises(GanPruneError, match='not a TorchScript'):
        build_embedder(f'torchscript:{bad}', trust=True)


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_torchscript_embedder_needs_trust_and_is_never_loaded_without(tmp_path, monkeypatch):
    path = tmp_path / 'feat.pt'
    torch.jit.save(torch.jit.script(_TwoByThree()), str(path))
    loads = []
    monkeypatch.setattr(torch.jit, 'load', lambda *a, **k: loads.append(a) or pytest.fail('loaded'))
    with pytest.raises(GanPruneError) as e:
        build_embedder(f'torchscript:{path}')
    assert '--trust-pickle' in str(e.value) and '\n' not in str(e.value)
    from gan_prune.distill.cagan_kd import PerceptualDistance
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        PerceptualDistance(f'torchscript:{path}')
    assert loads == []


def test_release_embedders_run_fp16_only_on_cuda(monkeypatch):
    """CLIP and DINO run under fp16 autocast on CUDA, as released; on the CPU (and for the others) in fp32."""
    from gan_prune.distill import embedders as E
    assert E.ClipEmbedder.cuda_fp16 and E.DinoResNet50Embedder.cuda_fp16
    assert not E.EffNetLite0Embedder.cuda_fp16 and not E.TorchScriptEmbedder.cuda_fp16
    calls = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, 'autocast', lambda *a, **k: calls.append((a, k)) or real_autocast(*a, **k))

    class Conv(E.Embedder):
        cuda_fp16 = True

        def __init__(self):
            super().__init__('conv', 4, normalize=False)
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def embed(self, x):
            return self.conv(x).mean(dim=(2, 3))

    out = Conv()(torch.rand(2, 3, 8, 8))
    assert out.dtype == torch.float32 and calls == [(('cuda',), dict(dtype=torch.float16, enabled=False))]
