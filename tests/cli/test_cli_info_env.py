"""`gan-prune info` and `gan-prune env`, and the one-line error contract of the CLI."""
import json
import subprocess
import sys

import pytest

from gan_prune.cli import main
from gan_prune.errors import GanPruneError


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def run_ok(args, capsys):
    main(args)
    return capsys.readouterr().out


def test_help_lists_commands(capsys):
    out = run_ok(['--help'], capsys)
    assert 'info' in out and 'env' in out


def test_info_builtin_tables(capsys):
    out = run_ok(['info', '--pkl', 'builtin:tiny32'], capsys)
    assert 'generator:  Generator  32x32x3' in out
    for block in ('b4', 'b8', 'b16', 'b32', 'mapping'):
        assert f'\n  {block} ' in out
    assert 'Discriminator' in out and 'total' in out


def test_info_json_totals_match_cost_model(capsys):
    from gan_prune.io.pickles import load_builtin
    from gan_prune.generator.cost import generator_cost
    summary = json.loads(run_ok(['info', '--pkl', 'builtin:tiny32', '--json'], capsys))
    G = load_builtin('tiny32')['G_ema']
    assert summary['generator']['cost']['total_macs'] == generator_cost(G).total_macs
    assert summary['generator']['num_ws'] == G.num_ws == 8
    assert summary['generator']['cost']['total_params'] == sum(p.numel() for p in G.parameters())
    total = json.loads(run_ok(['info', '--pkl', 'builtin:tiny32', '--json', '--convention', 'total'], capsys))
    assert total['generator']['cost']['total_macs'] > summary['generator']['cost']['total_macs']


def test_info_missing_file_is_one_line(capsys, tmp_path):
    code, out, err = run_cli(['info', '--pkl', str(tmp_path / 'nope.pkl')], capsys)
    assert code != 0
    assert err.strip().startswith('error:') and 'nope.pkl' in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_info_unknown_builtin(capsys):
    code, _, err = run_cli(['info', '--pkl', 'builtin:nonexistent'], capsys)
    assert code != 0 and 'builtin:tiny32' in err and len(err.strip().splitlines()) == 1


def test_entry_point_error_has_no_traceback(tmp_path):
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'this is not a pickle')
    proc = subprocess.run([sys.executable, '-m', 'gan_prune', 'info', '--pkl', str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    debug = subprocess.run([sys.executable, '-m', 'gan_prune', '--debug', 'info', '--pkl', str(bad)],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and 'Traceback' in debug.stderr


def test_env_reports_layer_and_ops(capsys):
    report = json.loads(run_ok(['env', '--json'], capsys))
    assert report['compat']['implementation'] == 'bundled clean-room layer'
    assert report['default_device'] in ('cpu', 'cuda')
    assert isinstance(report['ops'], dict) and report['ops']
    assert 'face-parser' in report['weights_found']
    text = run_ok(['env'], capsys)
    assert 'layer:' in text and 'ops:' in text and 'cache dir:' in text


def test_tf_and_pytorch_pickles_of_same_weights_print_same_tables(capsys, golden_dir):
    tf = run_ok(['info', '--pkl', str(golden_dir / 'tf_legacy_res32.pkl')], capsys)
    pt = run_ok(['info', '--pkl', str(golden_dir / 'snapshot_format_res32.pkl')], capsys)
    assert 'format:     TensorFlow' in tf and 'format:     PyTorch' in pt
    body = lambda text: [line for line in text.splitlines() if not line.startswith(('source:', 'format:'))]
    assert body(tf) == body(pt)
    assert 'b32' in tf and 'total' in tf


@pytest.mark.parametrize('error, expected', [
    (GanPruneError(''), 'GanPruneError: no message'),
    (ValueError(), 'ValueError: no message'),
    (KeyError(''), "KeyError: ''"),
    (GanPruneError('first\nsecond'), 'first (more with --debug)'),
    (RuntimeError('boom'), 'RuntimeError: boom'),
])
def test_one_line_is_never_empty(error, expected):
    from gan_prune.cli import one_line
    line = one_line(error)
    assert line.startswith(expected) and '\n' not in line


def test_empty_error_from_a_command_names_its_type(capsys, monkeypatch):
    from gan_prune import compat

    def fail():
        raise GanPruneError('')
    monkeypatch.setattr(compat, 'check_root', fail)
    code, _, err = run_cli(['info', '--pkl', 'builtin:tiny32'], capsys)
    assert code == 1 and err.strip().startswith('error: GanPruneError: no message')


def test_env_names_the_fused_ops_implementation(capsys, monkeypatch):
    monkeypatch.setenv('TORCH_UTILS_GPU_OPS', 'torch')
    report = json.loads(run_ok(['env', '--json'], capsys))
    assert report['fused_ops']['implementation'] == 'plain PyTorch'
    assert 'TORCH_UTILS_GPU_OPS=torch' in report['fused_ops']['detail']
    monkeypatch.delenv('TORCH_UTILS_GPU_OPS')
    text = run_ok(['env'], capsys)
    expected = 'ours (Triton)' if report['default_device'] == 'cuda' else 'plain PyTorch'
    assert f'fused ops:  {expected}' in text and 'compiled:' in text
