"""gan_prune.features.torchscript: TorchScript loads only when trusted or known by checksum; the bytes that were
checked are the bytes loaded; and every TorchScript user of the toolkit goes through this one loader."""
import hashlib

import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript

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
def shared_loads(monkeypatch):
    """Records every call of the shared loader (and still runs it)."""
    calls = []
    real = torchscript.load_torchscript

    def recording(path, trust, what, **kwargs):
        calls.append((path, trust, what))
        return real(path, trust, what, **kwargs)

    monkeypatch.setattr(torchscript, 'load_torchscript', recording)
    return calls


def test_untrusted_torchscript_is_refused_before_loading(scripted, jit_loads):
    with pytest.raises(GanPruneError) as e:
        torchscript.load_torchscript(scripted, trust=False, what='--mask')
    message = str(e.value)
    assert '--trust-pickle' in message and 'TorchScript' in message and '\n' not in message
    assert jit_loads == []


def test_trusted_torchscript_loads(scripted, jit_loads):
    module = torchscript.load_torchscript(scripted, trust=True, what='--mask')
    assert torch.equal(module(torch.ones(2)), torch.full((2,), 2.0))
    assert len(jit_loads) == 1


def test_known_checksum_loads_without_trust(scripted, monkeypatch):
    digest = hashlib.sha256(open(scripted, 'rb').read()).hexdigest()
    monkeypatch.setitem(torchscript.KNOWN_TORCHSCRIPT_SHA256, digest, 'a published file (test stand-in)')
    module = torchscript.load_torchscript(scripted, trust=False, what='detector')
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 2.0))
    # One changed byte and it is an unknown program again.
    data = bytearray(open(scripted, 'rb').read())
    data[-30] ^= 1
    changed = scripted + '.changed'
    open(changed, 'wb').write(bytes(data))
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        torchscript.load_torchscript(changed, trust=False, what='detector')


def test_known_checksum_table_entries_are_sha256():
    assert 'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4' in torchscript.KNOWN_TORCHSCRIPT_SHA256
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in torchscript.KNOWN_TORCHSCRIPT_SHA256)


def test_non_torchscript_and_missing_files_are_one_line(tmp_path):
    data = tmp_path / 'weights.pt'
    torch.save({'w': torch.zeros(2)}, data)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00' * 64)
    for path, expected in ((data, 'not a TorchScript'), (garbage, 'not a TorchScript'),
                           (tmp_path / 'missing.pt', 'cannot read')):
        with pytest.raises(GanPruneError, match=expected) as e:
            torchscript.load_torchscript(str(path), trust=True, what='--mask')
        assert '\n' not in str(e.value)


def _build_detector(path):
    from gan_prune.metrics.detectors import build_detector
    return build_detector(f'inception:{path}', device='cpu')


def _build_torchscript_embedder(path):
    from gan_prune.distill.embedders import build_embedder
    return build_embedder(f'torchscript:{path}')


def _build_clip_embedder(path):
    pytest.importorskip('open_clip')
    from gan_prune.distill.embedders import build_embedder
    return build_embedder('clip:RN50', weights=path)


def _build_mask(path):
    from gan_prune.prune.masks import build_mask
    return build_mask(path)


USERS = {'inception detector': (_build_detector, 'Inception detector'),
         'torchscript embedder': (_build_torchscript_embedder, 'TorchScript embedder'),
         'clip weights': (_build_clip_embedder, 'clip:RN50 weights'),
         'mask model': (_build_mask, '--mask')}


@pytest.mark.parametrize('user', sorted(USERS))
def test_every_user_refuses_an_unknown_untrusted_file_through_the_shared_loader(user, scripted, shared_loads,
                                                                                jit_loads):
    build, role = USERS[user]
    with pytest.raises(GanPruneError) as e:
        build(scripted)
    message = str(e.value)
    assert message.startswith(f'{role} {scripted} is a TorchScript program') and '--trust-pickle' in message
    assert '\n' not in message
    assert shared_loads == [(scripted, False, role)]  # the one loader decided, with trust off
    assert jit_loads == []  # and nothing of the file ran
