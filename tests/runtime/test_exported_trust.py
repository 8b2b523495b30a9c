"""A TorchScript export is a program: `generate` runs one only with --trust-pickle, and `info` describes one from
the facts stored in it, as data, without loading it. (tests/runtime/test_export.py renders real exports.)"""
import json

import numpy as np
import pytest
import torch

from gan_prune.cli import main
from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript
from gan_prune.generate import seed_latent, to_uint8
from gan_prune.runtime.exported import torchscript_facts

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning')

FACTS = dict(format='torchscript', z_dim=48, c_dim=0, w_dim=8, img_resolution=4, img_channels=3, truncation_psi=1.0,
             psi_input=False, noise_mode='const', batch=None, inputs=['z'], outputs=['img'], fp16_weights=False,
             source='made-up.pkl', generator_class='Stand-in')


class _StandIn(torch.nn.Module):
    """What an exported generator looks like from outside: z [N, 48] in, img [N, 3, 4, 4] out."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z).reshape(-1, 3, 4, 4)


def _save(path, facts):
    extra = {'gan_prune.json': json.dumps(facts)} if facts is not None else {}
    torch.jit.save(torch.jit.script(_StandIn()), str(path), _extra_files=extra)
    return str(path)


@pytest.fixture
def export(tmp_path):
    return _save(tmp_path / 'G.pt', FACTS)


class _Loads(list):
    """The torch.jit.load calls seen; with refuse=True a call fails instead of loading anything."""
    refuse = False


@pytest.fixture
def jit_loads(monkeypatch):
    calls, real = _Loads(), torch.jit.load

    def recording(*args, **kwargs):
        calls.append(args[0])
        if calls.refuse:
            raise AssertionError('torch.jit.load was called')
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.jit, 'load', recording)
    return calls


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_untrusted_export_is_refused_with_one_line_before_loading(export, tmp_path, capsys, jit_loads):
    jit_loads.refuse = True
    outdir = tmp_path / 'out'
    code, _, err = run_cli(['generate', '--pkl', export, '--seeds', '0-1', '--outdir', str(outdir)], capsys)
    assert code != 0 and err.count('\n') == 1 and 'Traceback' not in err
    assert 'is a TorchScript program: loading it runs its code' in err and '--trust-pickle' in err
    assert 'ONNX' in err and export in err
    assert jit_loads == [] and not outdir.exists()
    code, _, err = run_cli(['generate', '--pkl', export, '--backend', 'torchscript', '--outdir', str(outdir)], capsys)
    assert code != 0 and '--trust-pickle' in err and jit_loads == []


def test_trusted_export_renders_what_the_module_computes(export, tmp_path, capsys):
    import PIL.Image
    main(['generate', '--pkl', export, '--seeds', '0-1', '--outdir', str(tmp_path), '--trust-pickle'])
    for seed in (0, 1):
        expected = to_uint8(_StandIn()(seed_latent(seed, 48).float()))[0]
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / f'seed{seed:04d}.png')), expected)


def test_info_describes_an_export_without_loading_it(export, capsys, jit_loads):
    jit_loads.refuse = True
    main(['info', '--pkl', export, '--json'])
    summary = json.loads(capsys.readouterr().out)
    assert summary['format'] == 'torchscript' and summary['facts'] == FACTS
    assert summary['inputs'] == [dict(name='z', shape=['batch', 48], dtype='float32')]
    assert summary['outputs'] == [dict(name='img', shape=['batch', 3, 4, 4], dtype='float32')]
    main(['info', '--pkl', export])
    out = capsys.readouterr().out
    assert 'torchscript model' in out and "z ['batch', 48] float32" in out and 'truncation 1.0' in out
    assert jit_loads == []


def test_a_foreign_torchscript_file_is_refused_and_described_without_loading(tmp_path, capsys, jit_loads):
    jit_loads.refuse = True
    foreign = _save(tmp_path / 'foreign.pt', None)
    code, _, err = run_cli(['generate', '--pkl', foreign, '--outdir', str(tmp_path / 'out'), '--trust-pickle'],
                           capsys)
    assert code != 0 and 'not written by gan-prune export' in err and err.count('\n') == 1
    main(['info', '--pkl', foreign])
    assert 'unknown (not written by gan-prune export)' in capsys.readouterr().out
    assert jit_loads == []


def test_stored_facts_are_bounded_and_must_be_json(tmp_path):
    bad = _save(tmp_path / 'bad.pt', None)
    torch.jit.save(torch.jit.script(_StandIn()), bad, _extra_files={'gan_prune.json': 'not json'})
    with pytest.raises(GanPruneError, match='not a JSON object'):
        torchscript_facts(bad)
    big = _save(tmp_path / 'big.pt', dict(FACTS, padding='x' * 100))
    assert torchscript.read_extra_file(big, 'gan_prune.json', limit=1 << 20).startswith(b'{')
    with pytest.raises(GanPruneError, match='more than metadata takes'):
        torchscript.read_extra_file(big, 'gan_prune.json', limit=64)
    assert torchscript.read_extra_file(big, 'other.json') is None


def test_the_backend_asks_the_shared_torchscript_loader(export, monkeypatch):
    from gan_prune.runtime.backends import BACKENDS
    calls, real = [], torchscript.load_torchscript

    def recording(path, trust, what, **kwargs):
        calls.append((path, trust, what))
        return real(path, trust, what, **kwargs)

    monkeypatch.setattr(torchscript, 'load_torchscript', recording)
    with pytest.raises(GanPruneError, match='--trust-pickle'):
        BACKENDS.build('torchscript', export)
    run = BACKENDS.build('torchscript', export, trust=True)
    assert calls == [(export, False, 'exported generator'), (export, True, 'exported generator')]
    assert run.z_dim == 48 and run(torch.zeros(1, 48)).shape == (1, 3, 4, 4)
