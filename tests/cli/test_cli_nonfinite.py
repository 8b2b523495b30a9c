"""Networks with NaN/inf weights: `info` flags them, `generate` warns and renders, `metrics` refuses."""
import json

import pytest
import torch

from gan_prune.cli import main


@pytest.fixture(scope='module')
def poisoned_pkl(tmp_path_factory):
    import gan_prune
    data = gan_prune.load_network_pkl('builtin:tiny32')
    with torch.no_grad():
        data['G_ema'].synthesis.b8.conv0.weight[0, 0, 0, 0] = float('nan')
        data['G_ema'].mapping.fc0.bias[:2] = float('inf')
    path = tmp_path_factory.mktemp('nonfinite') / 'poisoned.pkl'
    gan_prune.save_network_pkl(data, path)
    return str(path)


def test_nonfinite_tensors_counts_entries():
    from gan_prune.generator.finite import nonfinite_tensors
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0, :2] = float('nan')
    assert nonfinite_tensors(layer) == {'weight': 2}
    assert nonfinite_tensors(torch.nn.Linear(3, 2)) == {}


def test_info_flags_nonfinite_weights_in_json_and_on_stderr(poisoned_pkl, capsys):
    main(['info', '--pkl', poisoned_pkl, '--json'])
    out, err = capsys.readouterr()
    report = json.loads(out)['nonfinite_weights']
    assert report['G_ema'] == {'synthesis.b8.conv0.weight': 1, 'mapping.fc0.bias': 2}
    assert 'G' not in report and 'D' not in report
    assert err.startswith('warning: G_ema has NaN/inf weights in 2 tensor(s)') and len(err.strip().splitlines()) == 1
    main(['info', '--pkl', 'builtin:tiny32', '--json'])
    out, err = capsys.readouterr()
    assert json.loads(out)['nonfinite_weights'] == {} and err == ''


def test_generate_warns_before_rendering(poisoned_pkl, capsys, tmp_path):
    main(['generate', '--pkl', poisoned_pkl, '--seeds', '0', '--outdir', str(tmp_path), '--no-grid'])
    out, err = capsys.readouterr()
    assert 'warning: G_ema of' in err and 'NaN/inf' in err
    assert (tmp_path / 'seed0000.png').is_file()


def test_metrics_refuses_with_one_line_before_measuring(poisoned_pkl, capsys, monkeypatch):
    import gan_prune.metrics.compute as compute
    monkeypatch.setattr(compute, 'compute_metrics', lambda *a, **k: pytest.fail('measured a NaN network'))
    with pytest.raises(SystemExit) as e:
        main(['metrics', '--pkl', poisoned_pkl, '--ref-pkl', 'builtin:tiny32'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith('error: G_ema of') and 'NaN/inf' in err
    assert len(err.splitlines()) == 1
