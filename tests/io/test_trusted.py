"""gan_prune.io.trusted: constructor names are checked before any import; TorchScript loads only when trusted or
known by checksum; the bytes that were checked are the bytes loaded."""
import hashlib
import sys

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.io import trusted

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning')


class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / 'double.pt'
    torch.jit.save(torch.jit.script(_Double()), str(path))
    return str(path)


@pytest.fixture
def jit_loads(monkeypatch):
    """Records every torch.jit.load call (and still loads), to show that a refused file was never loaded."""
    calls = []
    real = torch.jit.load

    def recording(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.jit, 'load', recording)
    return calls


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


def test_untrusted_torchscript_is_refused_before_loading(scripted, jit_loads):
    with pytest.raises(GanPruneError) as e:
        trusted.load_torchscript(scripted, trust=False, what='--mask')
    message = str(e.value)
    assert '--trust-pickle' in message and 'TorchScript' in message and '\n' not in message
    assert jit_loads == []


def test_trusted_torchscript_loads(scripted, jit_loads):
    module = trusted.load_torchscript(scripted, trust=True, what='--mask')
    assert torch.equal(module(torch.ones(2)), torch.full((2,), 2.0))
    assert len(jit_loads) == 1


def test_known_checksum_loads_without_trust(scripted, monkeypatch):
    digest = hashlib.sha256(open(scripted, 'rb').read()).hexdigest()
    monkeypatch.setitem(trusted.KNOWN_TORCHSCRIPT_SHA256, digest, 'a published file (test stand-in)')
    module = trusted.load_torchscript(scripted, trust=False, what='detector')
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 2.0))
    # One changed byte and it is an unknown program again.
    data = bytearray(open(scripted, 'rb').read())
    data[-30] ^= 1
    changed = scripted + '.changed'
    open(changed, 'wb').write(bytes(data))
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        trusted.load_torchscript(changed, trust=False, what='detector')


def test_known_checksum_table_entries_are_sha256():
    assert 'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4' in trusted.KNOWN_TORCHSCRIPT_SHA256
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in trusted.KNOWN_TORCHSCRIPT_SHA256)


def test_non_torchscript_and_missing_files_are_one_line(tmp_path):
    data = tmp_path / 'weights.pt'
    torch.save({'w': torch.zeros(2)}, data)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00' * 64)
    for path, expected in ((data, 'not a TorchScript'), (garbage, 'not a TorchScript'),
                           (tmp_path / 'missing.pt', 'cannot read')):
        with pytest.raises(GanPruneError, match=expected) as e:
            trusted.load_torchscript(str(path), trust=True, what='--mask')
        assert '\n' not in str(e.value)


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
