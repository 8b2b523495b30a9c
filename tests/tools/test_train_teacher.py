"""tools/train_teacher.py: a few steps of teacher training end in a compact, loadable teacher pickle."""
import os
import sys

from click.testing import CliRunner

import gan_prune
from gan_prune.demo.faces import write_faces_zip

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools'))
import train_teacher  # noqa: E402


def test_train_teacher_exports_a_compact_teacher(tmp_path):
    data = write_faces_zip(str(tmp_path / 'faces.zip'), 32, seed=0, resolution=32)
    out = tmp_path / 'teacher.pkl'
    args = ['--data', data, '--outdir', str(tmp_path / 'runs'), '--kimg', '0.064', '--tick', '0.032', '--snap', '1',
            '--workers', '0', '--out', str(out)]
    result = CliRunner().invoke(train_teacher.main, args)
    assert result.exit_code == 0, result.output
    teacher = gan_prune.load_network_pkl(str(out))
    assert teacher['G'] is teacher['G_ema']
    G = teacher['G_ema']
    assert (G.img_resolution, G.z_dim, G.w_dim) == (32, train_teacher.TEACHER_G['z_dim'], train_teacher.TEACHER_G['w_dim'])
    # Trained: the exported weights differ from the initial ones.
    init = train_teacher.initial_networks(0)['G_ema']
    assert any((a - b).abs().max() > 0 for a, b in zip(G.parameters(), init.parameters()))
    # Export-only: a snapshot of the run becomes the compact teacher, with the same weights.
    snaps = sorted((tmp_path / 'runs').glob('*/network-snapshot-*.pkl'))
    again = CliRunner().invoke(train_teacher.main, ['--export-snapshot', str(snaps[-1]), '--out', str(tmp_path / 'b.pkl')])
    assert again.exit_code == 0, again.output
    G2 = gan_prune.load_network_pkl(str(tmp_path / 'b.pkl'))['G_ema']
    assert all((a == b).all() for a, b in zip(G.parameters(), G2.parameters()))
    # An unknown data path is one clear error, not a traceback.
    bad = CliRunner().invoke(train_teacher.main, ['--data', str(tmp_path / 'missing.zip'), '--outdir', str(tmp_path / 'r2'),
                                                  '--workers', '0'])
    assert bad.exit_code != 0 and 'Traceback' not in bad.output
