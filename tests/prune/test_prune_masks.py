"""Mask providers: all-ones, the --mask spec, and user models (TorchScript or name + state dict), which run code
only with trust (--trust-pickle)."""
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


@pytest.fixture
def no_weight_folders(tmp_path, monkeypatch):
    """No 79999_iter.pth anywhere the weights search looks."""
    monkeypatch.setenv('GAN_PRUNE_WEIGHTS', str(tmp_path / 'empty'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)


def test_auto_without_weights_is_an_error_not_an_all_ones_mask(no_weight_folders):
    with pytest.raises(GanPruneError) as err:
        build_mask('auto', None)
    text = str(err.value)
    assert '\n' not in text
    for needed in ('79999_iter.pth', 'face-parsing.PyTorch', '--parser-weights', '--mask none'):
        assert needed in text
    assert isinstance(build_mask('none'), OnesMask)


def test_auto_finds_parser_weights_in_the_weights_folder(no_weight_folders, tmp_path):
    from gan_prune.features.bisenet import BiSeNet
    (tmp_path / 'weights').mkdir()
    torch.save(BiSeNet().state_dict(), tmp_path / 'weights' / '79999_iter.pth')
    assert isinstance(build_mask('auto', None), FaceParserMask)
    assert isinstance(build_mask('face-parser', None), FaceParserMask)


def test_mask_registry_names_and_facts():
    from gan_prune.prune.masks import MASKS
    assert MASKS.names() == ['none', 'face-parser', 'demo-faces']
    assert [n for n in MASKS if MASKS.info(n)['content']] == ['face-parser', 'demo-faces']


def test_face_parser_needs_weights(tmp_path, no_weight_folders):
    with pytest.raises(GanPruneError, match='--parser-weights'):
        build_mask('face-parser', None)
    with pytest.raises(GanPruneError, match='not found'):
        build_mask('face-parser', str(tmp_path / 'nope.pth'))


def test_auto_with_weights_uses_face_parser(tmp_path):
    from gan_prune.features.bisenet import BiSeNet
    path = tmp_path / 'parser.pth'
    torch.save(BiSeNet().state_dict(), path)
    assert isinstance(build_mask('auto', str(path)), FaceParserMask)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_user_mask(tmp_path):
    path = tmp_path / 'mask.pt'
    torch.jit.script(HalfMask()).save(str(path))
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        build_mask(str(path))  # a program: not without the flag
    provider = build_mask(str(path), trust=True)
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
    with pytest.raises(GanPruneError, match='torch.nn.Conv2d.*--trust-pickle'):
        build_mask(str(path))  # not one of the toolkit's own classes
    provider = build_mask(str(path), trust=True)
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
        build_mask(str(bad), trust=True)
    wrong = tmp_path / 'wrong.pt'
    torch.jit.script(torch.nn.Conv2d(3, 2, 1)).save(str(wrong))  # two channels: not a mask
    with pytest.raises(GanPruneError, match=r'\[N, 1, H, W\]'):
        build_mask(str(wrong), trust=True)(torch.randn(1, 3, 4, 4))
    ours = tmp_path / 'ours.pth'
    torch.save({'name': 'gan_prune.demo.mask_model.ContentSegmenter', 'kwargs': {'width': 4},
                'state_dict': {'enc1.0.weight': torch.zeros(1)}}, ours)
    with pytest.raises(GanPruneError, match='does not fit'):
        build_mask(str(ours))


def _command_file(path, marker):
    """A mask file naming a callable with kwargs: loading it must never run the shell command."""
    torch.save({'name': 'os.system', 'kwargs': {'command': f'touch {marker}'}, 'state_dict': {}}, path)
    return str(path)


def test_mask_file_naming_a_shell_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'ran.marker'
    path = _command_file(tmp_path / 'evil.pt', marker)
    for spec_option in ('--mask', '--cagan-mask'):
        with pytest.raises(GanPruneError) as e:
            build_mask(path, option=spec_option)
        message = str(e.value)
        assert "'os.system'" in message and spec_option in message and '--trust-pickle' in message
        assert '\n' not in message
    assert not marker.exists()


def test_prune_cli_refuses_the_shell_command_mask_with_one_line(tmp_path, capsys):
    from gan_prune.cli import main
    marker = tmp_path / 'ran.marker'
    path = _command_file(tmp_path / 'evil.pt', marker)
    with pytest.raises(SystemExit) as e:
        main(['prune', '--pkl', 'builtin:tiny32', '--ratio', '0.5', '--mask', path, '--samples', '2', '--batch', '2',
              '--out', str(tmp_path / 'out.pkl')])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and "'os.system'" in err and '\n' not in err
    assert not marker.exists() and not (tmp_path / 'out.pkl').exists()
    main(['prune', '--help'])
    help_text = ''.join(capsys.readouterr().out.split())  # ignore line wrapping
    assert 'eitherrunscode,soitneeds--trust-pickle' in help_text


def test_bundled_demo_mask_is_data_and_loads_without_trust():
    from gan_prune.assets import FACE_MASK as DEMO_FACE_MASK
    from gan_prune.features.segmenter import ContentSegmenter
    from gan_prune.features.torchscript import is_torchscript_archive
    assert not is_torchscript_archive(DEMO_FACE_MASK)
    provider = build_mask('demo-faces')
    assert type(provider.model) is ContentSegmenter
