"""Mask providers: all-ones, the --mask spec, and user models (TorchScript or name + state dict)."""
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.prune.masks import FaceParserMask, OnesMask, UserMask, build_mask


class HalfMask(torch.nn.Module):
    """Left half of the image is content (a stand-in for a user's segmentation model)."""

    def forward(self, x):
        m = torch.zeros_like(x[:, :1])
        m[..., : x.shape[-1] // 2] = 1
        return m


def test_ones_mask():
    m = OnesMask()(torch.randn(2, 3, 8, 6))
    assert m.shape == (2, 1, 8, 6) and bool((m == 1).all())


def test_auto_without_weights_is_all_ones_with_notice():
    notes = []
    provider = build_mask('auto', None, notice=notes.append)
    assert isinstance(provider, OnesMask)
    assert len(notes) == 1 and '--mask none' in notes[0] and '\n' not in notes[0]
    assert isinstance(build_mask('none', notice=notes.append), OnesMask) and len(notes) == 1


def test_face_parser_needs_weights(tmp_path):
    with pytest.raises(GanPruneError, match='--parser-weights'):
        build_mask('face-parser', None)
    with pytest.raises(GanPruneError, match='not found'):
        build_mask('face-parser', str(tmp_path / 'nope.pth'))


def test_auto_with_weights_uses_face_parser(tmp_path):
    from gan_prune.models.bisenet import BiSeNet
    path = tmp_path / 'parser.pth'
    torch.save(BiSeNet().state_dict(), path)
    assert isinstance(build_mask('auto', str(path)), FaceParserMask)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_user_mask(tmp_path):
    path = tmp_path / 'mask.pt'
    torch.jit.script(HalfMask()).save(str(path))
    provider = build_mask(str(path))
    assert isinstance(provider, UserMask)
    m = provider(torch.randn(2, 3, 8, 8))
    assert m.shape == (2, 1, 8, 8)
    assert bool((m[..., :4] == 1).all()) and bool((m[..., 4:] == 0).all())


def test_state_dict_plus_name_user_mask(tmp_path):
    conv = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(10.0)
        conv.bias.fill_(0.0)
    path = tmp_path / 'mask.pth'
    torch.save({'name': 'torch.nn.Conv2d', 'kwargs': {'in_channels': 3, 'out_channels': 1, 'kernel_size': 1},
                'state_dict': conv.state_dict()}, path)
    provider = build_mask(str(path))
    x = torch.full((1, 3, 4, 4), 1.0)
    x[..., :2] = -1.0
    m = provider(x)
    assert m.shape == (1, 1, 4, 4)
    assert bool((m[..., 2:] == 1).all()) and bool((m[..., :2] == 0).all())  # clamped to [0, 1]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_user_mask_errors(tmp_path):
    with pytest.raises(GanPruneError, match='no such file'):
        build_mask(str(tmp_path / 'missing.pt'))
    bad = tmp_path / 'bad.pth'
    torch.save({'weights': 1}, bad)
    with pytest.raises(GanPruneError, match='name'):
        build_mask(str(bad))
    torch.save({'name': 'no.such.Module', 'state_dict': {}}, bad)
    with pytest.raises(GanPruneError, match='cannot import'):
        build_mask(str(bad))
    wrong = tmp_path / 'wrong.pt'
    torch.jit.script(torch.nn.Conv2d(3, 2, 1)).save(str(wrong))  # two channels: not a mask
    with pytest.raises(GanPruneError, match=r'\[N, 1, H, W\]'):
        build_mask(str(wrong))(torch.randn(1, 3, 4, 4))
