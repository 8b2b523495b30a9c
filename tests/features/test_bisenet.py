"""BiSeNet face parser: the public 79999_iter.pth key names and shapes, loading, and the COI mask built on it."""
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.features.bisenet import NUM_CLASSES, BiSeNet, load_bisenet
from gan_prune.prune.masks import FaceParserMask

# Names and shapes as stored in the public face-parsing weights file (a sample across every sub-module).
EXPECTED_SHAPES = {
    'cp.resnet.conv1.weight': (64, 3, 7, 7),
    'cp.resnet.bn1.running_mean': (64,),
    'cp.resnet.layer1.0.conv1.weight': (64, 64, 3, 3),
    'cp.resnet.layer2.0.downsample.0.weight': (128, 64, 1, 1),
    'cp.resnet.layer2.0.downsample.1.running_var': (128,),
    'cp.resnet.layer3.1.conv2.weight': (256, 256, 3, 3),
    'cp.resnet.layer4.1.bn2.weight': (512,),
    'cp.arm16.conv.conv.weight': (128, 256, 3, 3),
    'cp.arm16.conv.bn.bias': (128,),
    'cp.arm16.conv_atten.weight': (128, 128, 1, 1),
    'cp.arm16.bn_atten.running_mean': (128,),
    'cp.arm32.conv.conv.weight': (128, 512, 3, 3),
    'cp.conv_head32.conv.weight': (128, 128, 3, 3),
    'cp.conv_head16.bn.weight': (128,),
    'cp.conv_avg.conv.weight': (128, 512, 1, 1),
    'ffm.convblk.conv.weight': (256, 256, 1, 1),
    'ffm.convblk.bn.running_var': (256,),
    'ffm.conv1.weight': (64, 256, 1, 1),
    'ffm.conv2.weight': (256, 64, 1, 1),
    'conv_out.conv.conv.weight': (256, 256, 3, 3),
    'conv_out.conv_out.weight': (19, 256, 1, 1),
    'conv_out16.conv.conv.weight': (64, 128, 3, 3),
    'conv_out16.conv_out.weight': (19, 64, 1, 1),
    'conv_out32.conv.bn.weight': (64,),
    'conv_out32.conv_out.weight': (19, 64, 1, 1),
}


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    model = BiSeNet(NUM_CLASSES).eval()
    # Random BN statistics so that loading really has to restore buffers.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_key_names_and_shapes_match_public_weights(net):
    state = net.state_dict()
    for key, shape in EXPECTED_SHAPES.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # The public file has no separate spatial path, no classifier, no conv biases.
    assert not [k for k in state if k.startswith('sp.') or k.startswith('cp.resnet.fc')]
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    params = sum(p.numel() for p in net.parameters())
    assert 13_000_000 < params < 13_500_000  # ResNet-18 trunk (11.2 M) + heads; the file is ~53 MB of fp32


def test_forward_shapes(net):
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 64))
        main = net.parse(torch.randn(1, 3, 64, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 19, 64, 64)] * 3
    assert tuple(main.shape) == (1, 19, 64, 48)


def test_load_saved_state_dict_reproduces_outputs(net, tmp_path):
    path = tmp_path / '79999_iter.pth'
    torch.save(net.state_dict(), path)
    loaded = load_bisenet(str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.parse(x), net.parse(x))
    assert not any(p.requires_grad for p in loaded.parameters())
    # DataParallel-style prefix and a wrapping dict are accepted too.
    torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}}, path)
    with torch.no_grad():
        assert torch.equal(load_bisenet(str(path)).parse(x), net.parse(x))


def test_load_rejects_wrong_files(net, tmp_path):
    with pytest.raises(GanPruneError, match='not found'):
        load_bisenet(str(tmp_path / 'missing.pth'))
    state = net.state_dict()
    bad = dict(state)
    bad['conv_out.conv_out.weight'] = torch.zeros(10, 256, 1, 1)
    torch.save(bad, tmp_path / 'classes10.pth')
    with pytest.raises(GanPruneError, match='shape of conv_out.conv_out.weight'):
        load_bisenet(str(tmp_path / 'classes10.pth'))
    partial = {k: v for k, v in state.items() if not k.startswith('ffm.')}
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(GanPruneError, match='missing'):
        load_bisenet(str(tmp_path / 'partial.pth'))
    (tmp_path / 'junk.pth').write_bytes(b'not a torch file')
    with pytest.raises(GanPruneError, match='cannot read'):
        load_bisenet(str(tmp_path / 'junk.pth'))


class _StripedParser(torch.nn.Module):
    """Fake parser: class = column index mod 19 (so every class appears), as one-hot logits."""

    def parse(self, x):
        n, _, h, w = x.shape
        labels = (torch.arange(w) % NUM_CLASSES).expand(n, h, w)
        return torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()

    def forward(self, x):
        return self.parse(x)


def test_face_parser_mask_excludes_background_and_cloth():
    dummy = torch.nn.Conv2d(1, 1, 1)  # gives the fake parser a parameter (device lookup)
    parser = _StripedParser()
    parser.dummy = dummy
    provider = FaceParserMask(parser, input_size=38)
    mask = provider(torch.zeros(2, 3, 38, 38))
    assert mask.shape == (2, 1, 38, 38)
    columns = mask[0, 0, 0]
    for col in range(38):
        expected = 0.0 if col % NUM_CLASSES in (0, 16) else 1.0
        assert float(columns[col]) == expected


def test_face_parser_mask_on_random_net_is_binary(net):
    provider = FaceParserMask(net, input_size=64)
    mask = provider(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert mask.shape == (1, 1, 32, 32)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
