"""No command writes over one of its inputs: prune, generate, metrics and teacher-stats refuse, with one line and
before any work, an output that is an input by path, `..`, symlink or hard link, and leave the input as it was."""
import os
import shutil

import pytest

from gan_prune.cli import main

GOLDEN_PKL = os.path.join(os.path.dirname(__file__), '..', 'golden', 'snapshot_format_res32.pkl')


@pytest.fixture
def teacher(tmp_path):
    (tmp_path / 'nets').mkdir()
    path = tmp_path / 'nets' / 'teacher.pkl'
    shutil.copy(GOLDEN_PKL, path)
    return path


def _refused(args, capsys, monkeypatch) -> str:
    import gan_prune.io.pickles as pickles
    monkeypatch.setattr(pickles, 'load_network_pkl', lambda *a, **k: pytest.fail('loaded before refusing'))
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith('error: ') and '\n' not in err
    return err


def test_prune_never_replaces_the_teacher(teacher, tmp_path, capsys, monkeypatch):
    original = teacher.read_bytes()
    os.symlink(teacher, tmp_path / 'link.pkl')
    os.link(teacher, tmp_path / 'hard.pkl')
    for out in (teacher, tmp_path / 'nets' / '..' / 'nets' / 'teacher.pkl', tmp_path / 'link.pkl',
                tmp_path / 'hard.pkl'):
        err = _refused(['prune', '--pkl', str(teacher), '--ratio', '0.5', '--out', str(out)], capsys, monkeypatch)
        assert f'--out {out} is the same file as --pkl {teacher}' in err
    weights = tmp_path / 'parser.pth'
    weights.write_bytes(b'weights')
    err = _refused(['prune', '--pkl', str(teacher), '--ratio', '0.5', '--mask', 'face-parser', '--parser-weights',
                    str(weights), '--out', str(weights)], capsys, monkeypatch)
    assert '--parser-weights' in err
    assert teacher.read_bytes() == original and weights.read_bytes() == b'weights'


def test_generate_never_renders_over_its_pickle(tmp_path, capsys, monkeypatch):
    pkl = tmp_path / 'seed0003.png'  # an unlucky name in the output folder
    shutil.copy(GOLDEN_PKL, pkl)
    err = _refused(['generate', '--pkl', str(pkl), '--seeds', '0-5', '--outdir', str(tmp_path)], capsys, monkeypatch)
    assert f'output {pkl} is the same file as --pkl {pkl}' in err
    grid = tmp_path / 'grid.png'
    os.symlink(pkl, grid)
    err = _refused(['generate', '--pkl', str(pkl), '--seeds', '7', '--outdir', str(tmp_path)], capsys, monkeypatch)
    assert f'output {grid} is the same file' in err
    assert pkl.read_bytes() == open(GOLDEN_PKL, 'rb').read()


def test_metrics_out_never_appends_to_an_input(teacher, tmp_path, capsys, monkeypatch):
    original = teacher.read_bytes()
    err = _refused(['metrics', '--pkl', str(teacher), '--ref-pkl', 'builtin:tiny32', '--out', str(teacher)],
                   capsys, monkeypatch)
    assert f'--out {teacher} is the same file as --pkl {teacher}' in err
    data = tmp_path / 'images'
    data.mkdir()
    err = _refused(['metrics', '--pkl', 'builtin:tiny32', '--data', str(data), '--out', str(data / 'fid.jsonl')],
                   capsys, monkeypatch)
    assert 'lies inside the --data folder' in err
    assert teacher.read_bytes() == original and os.listdir(data) == []


def test_teacher_stats_out_never_replaces_an_input(teacher, tmp_path, capsys, monkeypatch):
    original = teacher.read_bytes()
    os.symlink(teacher, tmp_path / 'stats.npz')
    err = _refused(['teacher-stats', '--pkl', str(teacher), '--embed', 'effnet-lite0', '--out',
                    str(tmp_path / 'stats.npz')], capsys, monkeypatch)
    assert f'is the same file as --pkl {teacher}' in err
    os.remove(tmp_path / 'stats.npz')
    os.symlink(teacher, tmp_path / 'stats.npz.partial.npz')  # the resumable state it writes on the way
    err = _refused(['teacher-stats', '--pkl', str(teacher), '--embed', 'effnet-lite0', '--out',
                    str(tmp_path / 'stats.npz')], capsys, monkeypatch)
    assert 'stats.npz.partial.npz is the same file as --pkl' in err
    assert teacher.read_bytes() == original
