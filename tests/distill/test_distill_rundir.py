"""Run directory: ids, options, log tee, stats.jsonl, grids, snapshots and the resume checkpoint."""
import json
import os
import random
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from gan_prune.distill import rundir as rd
from gan_prune.errors import GanPruneError


def test_run_dirs_get_increasing_five_digit_ids(tmp_path):
    a = rd.create_run_dir(tmp_path, 'distill-x')
    b = rd.create_run_dir(tmp_path, 'distill y/z')
    os.makedirs(tmp_path / '00041-old')
    c = rd.create_run_dir(tmp_path, 'c')
    assert [os.path.basename(p) for p in (a, b, c)] == ['00000-distill-x', '00001-distill_y_z', '00042-c']


def test_training_options_roundtrip_and_errors(tmp_path):
    opts = {'kimg': 1.5, 'embed_weights': ['a=b'], 'resume': None}
    rd.write_training_options(tmp_path, opts)
    assert rd.read_training_options(tmp_path) == opts
    with pytest.raises(GanPruneError):
        rd.read_training_options(tmp_path / 'missing')
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / rd.OPTIONS_FILE).write_text('{oops')
    with pytest.raises(GanPruneError):
        rd.read_training_options(tmp_path / 'bad')


def test_log_tee_copies_stdout_and_appends(tmp_path, capsys):
    path = tmp_path / 'log.txt'
    with rd.LogTee(str(path)):
        print('first line')
    with rd.LogTee(str(path)):
        print('second line')
    assert path.read_text() == 'first line\nsecond line\n'
    assert 'first line' in capsys.readouterr().out
    assert not isinstance(sys.stdout, rd.LogTee)


def test_stats_rows_summaries_torn_lines_and_truncation(tmp_path):
    for nimg in (100, 200, 300):
        rd.append_stats(tmp_path, {'Progress/nimg': rd.summarize([nimg]), 'Loss/G/main': rd.summarize([1.0, 3.0])})
    with open(tmp_path / rd.STATS_FILE, 'a') as f:
        f.write('{"Progress/nimg": {"num": 1, "me')  # a crash in the middle of a write
    rows = rd.read_stats(str(tmp_path))
    assert [r['Progress/nimg']['mean'] for r in rows] == [100, 200, 300]
    assert rows[0]['Loss/G/main'] == {'num': 2, 'mean': 2.0, 'std': 1.0} and 'timestamp' in rows[0]
    rd.truncate_stats(str(tmp_path), 200)
    assert [r['Progress/nimg']['mean'] for r in rd.read_stats(str(tmp_path))] == [100, 200]


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    for kimg in (0.004, 0.008, 0.012):
        rd.fileio.append_line(path, json.dumps({'kimg': kimg, 'results': {}}))
    rd.truncate_metrics(str(path), 8)
    assert [json.loads(line)['kimg'] for line in path.read_text().splitlines()] == [0.004, 0.008]
    rd.truncate_metrics(str(tmp_path / 'absent.jsonl'), 8)  # no metrics: nothing to do
    assert not (tmp_path / 'absent.jsonl').exists()


def test_image_grid_png_layout(tmp_path):
    imgs = torch.zeros([5, 3, 4, 6])
    imgs[1] = 1.0  # white tile at column 1, row 0
    rd.save_image_grid(imgs, str(tmp_path / 'g.png'), (3, 2))
    arr = np.asarray(PIL.Image.open(tmp_path / 'g.png'))
    assert arr.shape == (8, 18, 3)
    assert (arr[:4, 6:12] == 255).all() and (arr[:4, :6] == 128).all() and (arr[4:, 12:] == 0).all()
    gray = np.full([2, 1, 4, 4], 7, np.uint8)
    rd.save_image_grid(gray, str(tmp_path / 'h.png'), (2, 1))
    assert np.asarray(PIL.Image.open(tmp_path / 'h.png')).shape == (4, 8)
    assert rd.parse_grid('8x4') == (8, 4)
    with pytest.raises(GanPruneError):
        rd.parse_grid('eight')


def test_rng_state_roundtrip_through_resume_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    rd.save_resume(str(tmp_path), {'rng': rd.get_rng_state(), 'step': 7})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(100)
    np.random.seed(100)
    random.seed(100)
    state = rd.load_resume(str(tmp_path))  # weights_only=True: plain data only
    assert state['step'] == 7
    rd.set_rng_state(state['rng'])
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_missing_or_corrupt_resume_file(tmp_path):
    with pytest.raises(GanPruneError, match='no resume.pt'):
        rd.load_resume(str(tmp_path))
    (tmp_path / rd.RESUME_FILE).write_bytes(b'garbage')
    with pytest.raises(GanPruneError):
        rd.load_resume(str(tmp_path))


def test_snapshot_is_an_nvidia_format_pickle(tmp_path):
    import dnnlib
    from training import networks
    import gan_prune
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs=dnnlib.EasyDict(num_layers=1),
                           synthesis_kwargs=dnnlib.EasyDict(channel_base=64, channel_max=8))
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8)
    G.requires_grad_(True).train()
    path = rd.save_snapshot(str(tmp_path), 12000, {'G': G, 'G_ema': G, 'D': D, 'D_teacher': D},
                            extra={'training_set_kwargs': {'path': 'x.zip'}})
    assert os.path.basename(path) == 'network-snapshot-000012.pkl'
    assert rd.list_snapshots(str(tmp_path)) == [path]
    assert G.training and next(G.parameters()).requires_grad  # the live network is untouched
    data = gan_prune.load_network_pkl(path)
    assert {'G', 'G_ema', 'D', 'D_teacher', 'augment_pipe', 'training_set_kwargs'} <= set(data)
    assert data['training_set_kwargs'] == {'path': 'x.zip'}
    for key in ('G', 'G_ema', 'D'):
        assert not data[key].training
        assert all(not p.requires_grad and p.device.type == 'cpu' for p in data[key].parameters())
    for (name, a), b in zip(G.state_dict().items(), data['G_ema'].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------------------------------------
# Snapshot names under short ticks

def test_snapshot_names_are_unique_below_one_kimg_and_keep_whole_kimg_names():
    assert rd.snapshot_name(120000) == 'network-snapshot-000120.pkl'  # StyleGAN2-ADA's name
    assert rd.snapshot_name(12768) == 'network-snapshot-000012.768.pkl'
    assert rd.snapshot_name(8) == 'network-snapshot-000000.008.pkl'
    assert len({rd.snapshot_name(n) for n in range(0, 5000, 4)}) == 1250
    assert rd.snapshot_nimg('network-snapshot-000012.768.pkl') == 12768
    assert rd.snapshot_nimg('/x/network-snapshot-000120.pkl') == 120000
    assert rd.snapshot_nimg('network-snapshot-12.pkl.tmp') is None


def test_latest_snapshot_is_found_whichever_name_form(tmp_path):
    assert rd.latest_snapshot(str(tmp_path)) is None
    for nimg in (12000, 9999, 12768, 100000, 13000, 4):
        (tmp_path / rd.snapshot_name(nimg)).write_bytes(b'')
    (tmp_path / 'network-snapshot-000200.pkl.tmp').write_bytes(b'')
    (tmp_path / 'fakes000100.png').write_bytes(b'')
    names = [os.path.basename(p) for p in rd.list_snapshots(str(tmp_path))]
    assert names == ['network-snapshot-000000.004.pkl', 'network-snapshot-000009.999.pkl',
                     'network-snapshot-000012.pkl', 'network-snapshot-000012.768.pkl', 'network-snapshot-000013.pkl',
                     'network-snapshot-000100.pkl']
    assert rd.latest_snapshot(str(tmp_path)) == str(tmp_path / 'network-snapshot-000100.pkl')


# ------------------------------------------------------------------------------------------------------------
# Lock, inputs and their fingerprints

def test_a_locked_run_directory_refuses_a_second_user(tmp_path):
    lock = rd.lock_run_dir(str(tmp_path))
    try:
        with pytest.raises(GanPruneError) as e:
            rd.lock_run_dir(str(tmp_path))
        message = str(e.value)
        assert message.startswith(f'run directory {tmp_path} is in use by process {os.getpid()} on ')
        assert '\n' not in message and 'resume' in message
    finally:
        lock.release()
    rd.lock_run_dir(str(tmp_path)).release()
    assert rd.RUN_FILE_RE.match(rd.LOCK_FILE)


def _inputs(tmp_path):
    (tmp_path / 'teacher.pkl').write_bytes(b'teacher')
    (tmp_path / 'student.pkl').write_bytes(b'student')
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'a.png').write_bytes(b'png')
    return {'teacher': str(tmp_path / 'teacher.pkl'), 'student': str(tmp_path / 'student.pkl'),
            'data': str(tmp_path / 'images')}


def test_fingerprints_of_files_folders_and_builtins(tmp_path):
    import hashlib
    opts = _inputs(tmp_path)
    prints = rd.input_fingerprints(dict(opts, teacher='builtin:teacher'))
    assert prints['teacher'] == {'path': 'builtin:teacher', 'fingerprint': 'builtin:teacher'}
    assert prints['student']['fingerprint'] == 'sha256:' + hashlib.sha256(b'student').hexdigest()
    assert prints['data']['fingerprint'].startswith('folder:') and prints['data']['fingerprint'].endswith('(1 files)')
    assert 'data' not in rd.input_fingerprints(dict(opts, data=None))  # data-free runs
    assert rd.fingerprint_input(str(tmp_path / 'gone.pkl')) == rd.MISSING


def _check_refused(run_dir, saved, current) -> str:
    with pytest.raises(GanPruneError) as e:
        rd.check_input_fingerprints(run_dir, saved, current)
    assert '\n' not in str(e.value)
    return str(e.value)


def test_changed_missing_or_other_inputs_are_named_and_refused(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    opts = _inputs(tmp_path)
    saved = rd.input_fingerprints(opts)
    rd.check_input_fingerprints(str(run), saved, rd.input_fingerprints(opts))  # unchanged: fine

    (tmp_path / 'teacher.pkl').write_bytes(b'another teacher')
    message = _check_refused(str(run), saved, rd.input_fingerprints(opts))
    assert message.startswith(f'cannot resume {run}: --teacher {tmp_path / "teacher.pkl"} is not the input')
    assert 'contents changed' in message and 'give --teacher PATH of an unchanged copy' in message
    assert 'start a new run' in message
    (tmp_path / 'teacher.pkl').write_bytes(b'teacher')

    (tmp_path / 'images' / 'b.png').write_bytes(b'new image')
    (run / rd.snapshot_name(8000)).write_bytes(b'')
    message = _check_refused(str(run), saved, rd.input_fingerprints(opts))
    assert '--data' in message and f'--resume {run / "network-snapshot-000008.pkl"}' in message
    os.remove(tmp_path / 'images' / 'b.png')

    os.rename(tmp_path / 'student.pkl', tmp_path / 'moved.pkl')
    assert 'the file is missing' in _check_refused(str(run), saved, rd.input_fingerprints(opts))
    moved = dict(opts, student=str(tmp_path / 'moved.pkl'))
    rd.check_input_fingerprints(str(run), saved, rd.input_fingerprints(moved))  # the same file elsewhere: fine
    (tmp_path / 'other.pkl').write_bytes(b'other student')
    other = dict(opts, student=str(tmp_path / 'other.pkl'))
    assert 'which the run was started with' in _check_refused(str(run), saved, rd.input_fingerprints(other))


def test_malformed_fingerprints_are_one_line(tmp_path):
    for saved in (['sha256:00'], {'teacher': 'sha256:00'}, {'teacher': {'path': 1, 'fingerprint': 'x'}}):
        message = _check_refused(str(tmp_path), saved, {})
        assert 'malformed input_fingerprints' in message


def test_inputs_that_the_run_would_write_are_refused(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'network-snapshot-000004.pkl').write_bytes(b'snap')
    (run / 'my-teacher.pkl').write_bytes(b'teacher')
    os.link(run / 'network-snapshot-000004.pkl', tmp_path / 'student.pkl')
    rd.refuse_inputs_written_by_run(str(run), {'--teacher': str(run / 'my-teacher.pkl')})  # not a run file name
    for source in (str(run / 'network-snapshot-000004.pkl'), str(tmp_path / 'student.pkl')):
        with pytest.raises(GanPruneError, match='a file the run writes') as e:
            rd.refuse_inputs_written_by_run(str(run), [('--student', source)])
        assert '\n' not in str(e.value)
