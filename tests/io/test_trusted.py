"""gan_prune.io.trusted: constructor names are checked before any import (TorchScript files: see
tests/features/test_torchscript.py)."""
import sys

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.io import trusted

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning')


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when imported: proof of whether an import happened."""
    marker = tmp_path / 'imported.marker'
    (tmp_path / 'trusted_probe_mod.py').write_text(
        f'import pathlib\npathlib.Path({str(marker)!r}).touch()\n'
        'import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'trusted_probe_mod', raising=False)
    return marker


def test_constructor_outside_the_allow_list_is_refused_without_import(marker_module):
    for name in ('trusted_probe_mod.Net', 'os.system', 'gan_prune.x.y', 'builtins.eval'):
        with pytest.raises(GanPruneError) as e:
            trusted.construct_model(name, {}, trust=False, what='--mask m.pt')
        assert '--trust-pickle' in str(e.value) and '\n' not in str(e.value)
    assert not marker_module.exists() and 'trusted_probe_mod' not in sys.modules
    # With trust the same name is imported and built: the check above is what stopped it.
    model = trusted.construct_model('trusted_probe_mod.Net', {}, trust=True, what='--mask m.pt')
    assert marker_module.exists() and isinstance(model, torch.nn.Module)


def test_allowed_constructor_builds_our_class_from_plain_kwargs():
    from gan_prune.features.segmenter import ContentSegmenter
    model = trusted.construct_model('gan_prune.demo.mask_model.ContentSegmenter', {'width': 4}, False, 'm')
    assert type(model) is ContentSegmenter and model.width == 4
    with pytest.raises(GanPruneError, match='numbers, strings'):
        trusted.construct_model('gan_prune.demo.mask_model.ContentSegmenter', {'width': [4]}, False, 'm')
    with pytest.raises(GanPruneError, match='cannot build'):
        trusted.construct_model('gan_prune.demo.mask_model.ContentSegmenter', {'depth': 4}, False, 'm')
    with pytest.raises(GanPruneError, match='not a torch.nn.Module'):
        trusted.construct_model('os.system', {}, True, 'm')


def test_names_from_files_are_printed_escaped():
    with pytest.raises(GanPruneError) as e:
        trusted.construct_model('evil\x1b[2J\nfake line', {}, trust=False, what='m')
    message = str(e.value)
    assert '\x1b' not in message and '\n' not in message and '\\x1b' in message
