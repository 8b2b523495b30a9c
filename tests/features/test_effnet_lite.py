import numpy as np
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.features import effnet_lite

CAT_CLASSES = {281, 282, 283, 284, 285}       # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}              # espresso, cup, coffee mug


@pytest.fixture(scope='module')
def net():
    return effnet_lite.load_efficientnet_lite0()


def _photo(array: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0
    return effnet_lite.preprocess(x)


def test_state_dict_keys_match_shipped_file(net):
    shipped = torch.load(effnet_lite.default_weights_path(), map_location='cpu', weights_only=True)
    ours = net.state_dict()
    assert set(ours) == set(shipped)
    assert all(ours[k].shape == shipped[k].shape for k in shipped)
    assert torch.equal(ours['_fc.weight'], shipped['_fc.weight'])
    assert len(net._blocks) == 16
    assert not net.training


def test_classifies_real_photos(net):
    skimage_data = pytest.importorskip('skimage.data')
    batch = torch.cat([_photo(skimage_data.chelsea()), _photo(skimage_data.coffee())])
    assert batch.shape == (2, 3, 224, 224)
    with torch.no_grad():
        probs = net(batch).softmax(dim=1)
    top5 = probs.topk(5, dim=1).indices.tolist()
    assert CAT_CLASSES & set(top5[0]), top5[0]
    assert COFFEE_CLASSES & set(top5[1]), top5[1]
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5
    assert probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5


def test_features_and_shapes(net):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = net.feature_map(x)
        feats = net.features(x)
        logits = net(x)
    assert fmap.shape == (2, effnet_lite.FEATURE_DIM, 2, 2)
    assert feats.shape == (2, 1280)
    assert torch.allclose(feats, fmap.mean(dim=(2, 3)))
    assert torch.allclose(logits, net._fc(feats), atol=1e-5)
    assert (feats >= 0).all() and (feats <= 6).all()  # ReLU6 head


@pytest.mark.parametrize('size,stride,kernel', [(7, 2, 3), (8, 2, 3), (9, 2, 5), (5, 1, 5)])
def test_same_padding_output_size(size, stride, kernel):
    conv = effnet_lite.SameConv2d(1, 1, kernel, stride=stride)
    out = conv(torch.zeros(1, 1, size, size))
    expected = -(-size // stride)
    assert out.shape[-2:] == (expected, expected)


def test_preprocess_resizes_and_normalises():
    x = torch.full((1, 3, 32, 32), 0.5)
    y = effnet_lite.preprocess(x)
    assert y.shape == (1, 3, 224, 224)
    expected = (0.5 - torch.tensor(effnet_lite.IMAGENET_MEAN)) / torch.tensor(effnet_lite.IMAGENET_STD)
    assert torch.allclose(y[0, :, 0, 0], expected, atol=1e-6)
    assert effnet_lite.preprocess(x, resize=False).shape == (1, 3, 32, 32)


def test_weight_file_errors(tmp_path):
    with pytest.raises(GanPruneError):
        effnet_lite.load_efficientnet_lite0(str(tmp_path / 'missing.pth'))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not torch')
    with pytest.raises(GanPruneError):
        effnet_lite.load_efficientnet_lite0(str(garbage))
    partial = tmp_path / 'partial.pth'
    torch.save({'_conv_stem.weight': torch.zeros(32, 3, 3, 3)}, partial)
    with pytest.raises(GanPruneError):
        effnet_lite.load_efficientnet_lite0(str(partial))
