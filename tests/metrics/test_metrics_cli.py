"""`gan-prune metrics`: table and JSON output, --out, --ref-pkl, errors; on toy networks and a tiny dataset."""
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from gan_prune.cli import cli, main
from gan_prune.cli import metrics as cli_metrics
from gan_prune.data.datasets import write_dataset_zip

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning:torch.jit')


class ToyG(torch.nn.Module):
    """StyleGAN2-ADA calling convention; a flat colour from z (shifted by `shift`) plus random noise."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = 3, 0, 3, 16, 3
        self.register_buffer('shift', torch.tensor(float(shift)))

    def forward(self, z, c, truncation_psi=1, noise_mode='const', force_fp32=False):
        img = (torch.tanh(z)[:, :, None, None] * 0.5 + self.shift).expand(-1, -1, 16, 16)
        return img + 0.2 * torch.randn_like(img) if noise_mode == 'random' else img


class _InceptionLike(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return F.adaptive_avg_pool2d(img.to(torch.float32) / 255.0, 4).flatten(1)


@pytest.fixture(scope='module')
def fake_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp('det') / 'inception-2015-12-05.pt'
    torch.jit.save(torch.jit.script(_InceptionLike()), str(path))
    return str(path)


@pytest.fixture(autouse=True)
def fake_inception_is_known(fake_inception, monkeypatch):
    """The stand-in plays NVIDIA's published Inception file, which loads without --trust-pickle by its checksum."""
    from gan_prune.features import torchscript
    digest = hashlib.sha256(open(fake_inception, 'rb').read()).hexdigest()
    monkeypatch.setitem(torchscript.KNOWN_TORCHSCRIPT_SHA256, digest, 'inception stand-in')


@pytest.fixture(scope='module')
def toy_dataset(tmp_path_factory):
    torch.manual_seed(0)
    G = ToyG()
    with torch.no_grad():
        img = G(torch.randn([32, 3]), torch.zeros([32, 0]), noise_mode='random')
    images = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return write_dataset_zip(str(tmp_path_factory.mktemp('data') / 'toy.zip'), images)


@pytest.fixture
def toy_networks(monkeypatch, toy_dataset):
    nets = {'toy:good': ToyG(), 'toy:bad': ToyG(shift=0.7), 'toy:teacher': ToyG()}
    tsk = {'toy:good': dict(path=toy_dataset), 'toy:bad': None, 'toy:teacher': None}
    loaded = []

    def fake_load(src, trust):
        loaded.append((src, trust))
        return nets[src], tsk[src]

    monkeypatch.setattr(cli_metrics, '_load_generator', fake_load)
    return loaded


def _run(args):
    result = CliRunner().invoke(cli, ['metrics'] + args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_json_against_dataset_with_inception_file(toy_networks, toy_dataset, fake_inception, tmp_path):
    common = ['--data', toy_dataset, '--metrics', 'fid,kid,pr', '--detector', f'inception:{fake_inception}',
              '--num-gen', '32', '--batch', '16', '--cache-dir', str(tmp_path), '--json']
    good = json.loads(_run(['--pkl', 'toy:good'] + common).stdout)
    bad = json.loads(_run(['--pkl', 'toy:bad'] + common).stdout)
    assert set(good['results']) == {'fid', 'kid', 'precision', 'recall'}  # Inception: plain names
    assert bad['results']['fid'] > 10 * good['results']['fid']
    assert bad['results']['kid'] > good['results']['kid']
    assert good['reference'] == {'data': toy_dataset} and good['num_gen'] == 32


def test_cli_table_with_effnet_default_detector(toy_networks, toy_dataset, tmp_path):
    # KID and PR only: FID on 1280-d features needs a 1280x1280 sqrtm, too slow for a unit test.
    result = _run(['--pkl', 'toy:good', '--data', toy_dataset, '--metrics', 'kid,pr', '--num-gen', '4',
                   '--num-real', '4', '--batch', '4', '--cache-dir', str(tmp_path / 'cache')])
    assert 'KID (effnet-lite0)' in result.stdout and 'Recall (effnet-lite0)' in result.stdout
    assert 'FID' not in result.stdout


def test_cli_out_appends_json_lines(toy_networks, toy_dataset, fake_inception, tmp_path):
    out = tmp_path / 'runs' / 'metrics.jsonl'
    args = ['--pkl', 'toy:good', '--data', toy_dataset, '--detector', f'inception:{fake_inception}',
            '--num-gen', '16', '--batch', '16', '--cache-dir', str(tmp_path / 'cache'), '--out', str(out)]
    _run(args)
    _run(args)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert list(records[0]['results']) == ['fid']
    assert records[0]['results'] == records[1]['results']  # same seed, cached reference: same number
    assert sorted(p.name for p in out.parent.iterdir()) == ['metrics.jsonl']  # no temp files left


def test_cli_ref_pkl(toy_networks, fake_inception, tmp_path):
    common = ['--ref-pkl', 'toy:teacher', '--metrics', 'fid', '--detector', f'inception:{fake_inception}',
              '--num-gen', '32', '--num-ref', '32', '--batch', '32', '--cache-dir', str(tmp_path), '--json']
    good = json.loads(_run(['--pkl', 'toy:good'] + common).stdout)
    bad = json.loads(_run(['--pkl', 'toy:bad'] + common).stdout)
    assert bad['results']['fid'] > 10 * good['results']['fid']
    assert good['reference'] == {'ref_pkl': 'toy:teacher', 'num_ref': 32}
    assert ('toy:teacher', False) in toy_networks


def test_cli_uses_training_set_path_when_no_reference_given(toy_networks, fake_inception, tmp_path):
    result = _run(['--pkl', 'toy:good', '--detector', f'inception:{fake_inception}', '--num-gen', '8',
                   '--cache-dir', str(tmp_path), '--json'])
    assert 'data' in json.loads(result.stdout)['reference']


def test_cli_errors_are_one_line(toy_networks, toy_dataset, capsys):
    cases = [
        (['--pkl', 'toy:bad', '--num-gen', '4'], 'no reference'),
        (['--pkl', 'toy:good', '--data', toy_dataset, '--ref-pkl', 'toy:teacher'], 'not both'),
        (['--pkl', 'toy:good', '--data', toy_dataset, '--metrics', 'fid,ppl'], 'unknown metric'),
        (['--pkl', 'toy:good', '--data', toy_dataset, '--detector', 'inception:/nonexistent.pt'], 'no Inception detector file'),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(['metrics'] + args)
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('error:') and message in err and '\n' not in err


def test_cli_help_shows_defaults():
    result = CliRunner().invoke(cli, ['metrics', '--help'])
    assert result.exit_code == 0
    assert '--ref-pkl' in result.output and 'effnet-lite0' in result.output and 'default: 50000' in result.output


def test_cli_on_builtin_tiny32(tmp_path, fake_inception):
    pytest.importorskip('gan_prune.io.pickles')
    import gan_prune
    G = gan_prune.load_network_pkl('builtin:tiny32')['G_ema']
    with torch.no_grad():
        img = G(z=torch.randn([8, G.z_dim]), c=torch.zeros([8, 0]), noise_mode='random', force_fp32=True)
    images = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    data = write_dataset_zip(str(tmp_path / 'tiny.zip'), images)
    # The cheap pixel-pooling stand-in for Inception keeps this fast; effnet-lite0 is covered above.
    detector = f'inception:{fake_inception}'
    result = _run(['--pkl', 'builtin:tiny32', '--data', data, '--metrics', 'fid,kid,pr', '--num-gen', '8',
                   '--batch', '4', '--detector', detector, '--cache-dir', str(tmp_path / 'cache'), '--json'])
    results = json.loads(result.stdout)['results']
    assert set(results) == {'fid', 'kid', 'precision', 'recall'}
    assert all(v == v for v in results.values())  # no NaN
    ref = _run(['--pkl', 'builtin:tiny32', '--ref-pkl', 'builtin:tiny32', '--metrics', 'fid,pr', '--num-gen', '8',
                '--batch', '8', '--detector', detector, '--cache-dir', str(tmp_path / 'cache'), '--json'])
    ref_results = json.loads(ref.stdout)['results']
    assert ref_results['fid'] >= 0 and 0 <= ref_results['recall'] <= 1


def test_cli_unknown_inception_file_needs_trust_pickle(toy_networks, toy_dataset, tmp_path, capsys):
    other = tmp_path / 'other-inception.pt'
    torch.jit.save(torch.jit.script(_InceptionLike()), str(other))
    args = ['--pkl', 'toy:good', '--data', toy_dataset, '--detector', f'inception:{other}',
            '--num-gen', '8', '--batch', '8', '--cache-dir', str(tmp_path), '--json']
    with pytest.raises(SystemExit) as e:
        main(['metrics'] + args)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and '--trust-pickle' in err and '\n' not in err
    assert 'fid_' not in _run(args + ['--trust-pickle']).stdout  # loaded and used as the Inception detector
    help_text = ' '.join(CliRunner().invoke(cli, ['metrics', '--help']).output.split())
    assert 'TorchScript' in help_text and 'checksum' in help_text
