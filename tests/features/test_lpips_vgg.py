"""gan_prune.features.lpips_vgg: the VGG-16 trunk of the perceptual term, from local files only."""
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.features import lpips_vgg

torchvision = pytest.importorskip('torchvision')


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features.eval()
    path = tmp_path_factory.mktemp('vgg') / 'vgg16.pth'
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    return str(path), features


def test_trunk_holds_the_given_weights(vgg_file):
    path, features = vgg_file
    loaded = lpips_vgg.load_vgg16_features(path)
    assert not loaded.training
    for a, b in zip(loaded.state_dict().values(), features.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_trunk_files_are_one_line(tmp_path):
    torch.save({'features.0.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    for path, expected in ((tmp_path / 'other.pth', 'vgg16'), (tmp_path / 'missing.pth', 'not found')):
        with pytest.raises(GanPruneError, match=expected) as e:
            lpips_vgg.load_vgg16_features(str(path))
        assert '\n' not in str(e.value)


def test_lpips_takes_the_official_file_only_when_no_file_is_given(vgg_file):
    pytest.importorskip('lpips')
    path, features = vgg_file
    asked = []
    model = lpips_vgg.load_lpips_vgg(path, official_file=lambda: asked.append(1) or 'unused')
    assert asked == [] and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.net.slice1[0].weight, features[0].weight)
    model = lpips_vgg.load_lpips_vgg(None, official_file=lambda: asked.append(1) or path)
    assert asked == [1] and torch.equal(model.net.slice5._modules['28'].weight, features[28].weight)
    with pytest.raises(GanPruneError, match='lpips-vgg:FILE'):
        lpips_vgg.load_lpips_vgg(None)
