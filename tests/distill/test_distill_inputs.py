"""Inputs are never lost or silently replaced by a distill run: absolute paths and fingerprints in
training_options.json, a resume that finds another input stops, one process per run directory, outputs kept out of
the inputs, and unique snapshot names when ticks are shorter than 1 kimg."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gan_prune.distill import loop
from gan_prune.distill import rundir as rd
from gan_prune.errors import GanPruneError

RES = 16
STEP_KIMG = 0.004  # one iteration at batch 4


def _networks(seed: int):
    import dnnlib
    from training import networks
    E = dnnlib.EasyDict
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=RES, img_channels=3,
                           mapping_kwargs=E(num_layers=2), synthesis_kwargs=E(channel_base=RES * 8, channel_max=8))
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=RES * 8, channel_max=8,
                               epilogue_kwargs=E(mbstd_group_size=4))
    return dict(G=G.eval(), G_ema=G.eval(), D=D.eval())


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    import gan_prune
    from gan_prune.data.datasets import write_dataset_zip
    d = tmp_path_factory.mktemp('distill_inputs')
    gan_prune.save_network_pkl(_networks(0), d / 'teacher.pkl')
    gan_prune.save_network_pkl(_networks(1), d / 'student.pkl')
    gan_prune.save_network_pkl(_networks(2), d / 'other-teacher.pkl')
    write_dataset_zip(d / 'data.zip', np.random.RandomState(0).randint(0, 256, (8, RES, RES, 3), dtype=np.uint8))
    return d


def options(files, outdir, **overrides):
    opts = dict(teacher=str(files / 'teacher.pkl'), student=str(files / 'student.pkl'), data=str(files / 'data.zip'),
                outdir=str(outdir), batch=4, tick=STEP_KIMG, snap=1, kimg=2 * STEP_KIMG, workers=0, grid='2x2',
                device='cpu', kd='none', dime='', g_reg_interval=2, d_reg_interval=2, seed=0)
    opts.update(overrides)
    return opts


def _one_line_error(call) -> str:
    with pytest.raises(GanPruneError) as e:
        call()
    assert '\n' not in str(e.value)
    return str(e.value)


def test_training_options_name_inputs_by_absolute_path_with_fingerprints(files, tmp_path, monkeypatch):
    import hashlib
    monkeypatch.chdir(files)
    opts = loop.resolve_options(options(files, 'runs', teacher='teacher.pkl', student='./student.pkl',
                                        data='../' + files.name + '/data.zip'))
    run_dir, lock = loop._prepare_run_dir(opts)
    lock.release()
    saved = rd.read_training_options(run_dir)
    assert saved['teacher'] == str(files / 'teacher.pkl') and saved['student'] == str(files / 'student.pkl')
    assert saved['data'] == str(files / 'data.zip') and saved['outdir'] == str(files / 'runs')
    prints = saved[rd.FINGERPRINTS_KEY]
    assert prints['teacher'] == {'path': str(files / 'teacher.pkl'),
                                 'fingerprint': 'sha256:' + hashlib.sha256((files / 'teacher.pkl').read_bytes()).hexdigest()}
    assert set(prints) == {'teacher', 'student', 'data'}
    # Resumed from another working directory: the same files.
    monkeypatch.chdir(tmp_path)
    assert loop.resolve_options({'resume': run_dir})['teacher'] == str(files / 'teacher.pkl')


def test_files_inside_spec_options_are_stored_absolute(files, tmp_path, monkeypatch):
    (tmp_path / 'embed.pt').write_bytes(b'')
    (tmp_path / 'inception.pt').write_bytes(b'')
    monkeypatch.chdir(tmp_path)
    opts = loop._absolute_paths(dict(dime='torchscript:embed.pt=5,effnet-lite0=1', cagan_net='vgg16:missing.pth',
                                     metrics_detector='inception:inception.pt', cagan_mask='none',
                                     embed_weights=['clip:RN50=embed.pt', 'RN50.pt'], resume=None))
    assert opts['dime'] == f'torchscript:{tmp_path / "embed.pt"}=5,effnet-lite0=1'
    assert opts['metrics_detector'] == f'inception:{tmp_path / "inception.pt"}'
    assert opts['cagan_net'] == 'vgg16:missing.pth' and opts['cagan_mask'] == 'none'  # no such file / a mode
    assert opts['embed_weights'] == [f'clip:RN50={tmp_path / "embed.pt"}', 'RN50.pt']  # bare: searched later
    labels = dict(loop._input_files(dict(opts, teacher='t.pkl')))
    assert labels['--dime'] == str(tmp_path / 'embed.pt') and labels['--metrics-detector'].endswith('inception.pt')


def test_a_run_directory_in_use_is_refused(files, tmp_path):
    opts = loop.resolve_options(options(files, tmp_path))
    run_dir, lock = loop._prepare_run_dir(opts)
    try:
        message = _one_line_error(lambda: loop.distill(resume=run_dir))
        assert message.startswith(f'run directory {run_dir} is in use by process {os.getpid()} on ')
    finally:
        lock.release()
    resumed, lock = loop._prepare_run_dir(loop.resolve_options({'resume': run_dir}))
    lock.release()
    assert resumed == run_dir


_HOLD_RUN = '''
import sys, time
from gan_prune.distill import rundir
lock = rundir.lock_run_dir(sys.argv[1])
print('locked', flush=True)
time.sleep(300)
'''


def test_cli_resume_of_a_directory_another_process_trains_in(files, tmp_path, capsys):
    from gan_prune.cli import main
    run_dir, lock = loop._prepare_run_dir(loop.resolve_options(options(files, tmp_path)))
    lock.release()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, '-c', _HOLD_RUN, run_dir], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(SystemExit) as e:
            main(['distill', '--resume', run_dir])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: run directory') and f'in use by process {holder.pid} on ' in err
        assert '\n' not in err
    finally:
        holder.kill()
        holder.wait()


def test_resume_with_another_teacher_is_refused_a_moved_copy_is_not(files, tmp_path):
    import shutil
    work = tmp_path / 'inputs'
    work.mkdir()
    for name in ('teacher.pkl', 'student.pkl', 'data.zip'):
        shutil.copy(files / name, work / name)
    run_dir = loop.distill(**options(work, tmp_path / 'runs'))
    snapshots = [os.path.basename(p) for p in rd.list_snapshots(run_dir)]
    assert snapshots == ['network-snapshot-000000.004.pkl', 'network-snapshot-000000.008.pkl']  # 2 ticks, 2 files
    (tmp_path / 'state').write_bytes(open(os.path.join(run_dir, rd.RESUME_FILE), 'rb').read())

    os.rename(work / 'teacher.pkl', work / 'moved-teacher.pkl')
    shutil.copy(files / 'other-teacher.pkl', work / 'teacher.pkl')  # same name, another network
    message = _one_line_error(lambda: loop.distill(resume=run_dir, kimg=3 * STEP_KIMG))
    assert message.startswith(f'cannot resume {run_dir}: --teacher {work / "teacher.pkl"} is not the input')
    assert 'contents changed' in message and 'network-snapshot-000000.008.pkl' in message
    # Nothing was trained on the wrong teacher.
    assert open(os.path.join(run_dir, rd.RESUME_FILE), 'rb').read() == (tmp_path / 'state').read_bytes()

    # The original teacher, moved: named on the command line, it is recognised by its fingerprint.
    loop.distill(resume=run_dir, kimg=3 * STEP_KIMG, teacher=str(work / 'moved-teacher.pkl'))
    assert rd.latest_snapshot(run_dir).endswith('network-snapshot-000000.012.pkl')
    assert len(rd.list_snapshots(run_dir)) == 3
    saved = rd.read_training_options(run_dir)
    assert saved['teacher'] == str(work / 'moved-teacher.pkl')
    assert saved[rd.FINGERPRINTS_KEY]['teacher']['path'] == str(work / 'moved-teacher.pkl')
    assert rd.read_stats(run_dir)[-1]['Progress/nimg']['mean'] == 12


def test_outputs_stay_out_of_the_inputs(files, tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    from gan_prune.data.datasets import ImageDataset
    import PIL.Image
    for i in range(4):
        PIL.Image.fromarray(np.full((RES, RES, 3), i * 60, np.uint8)).save(folder / f'{i}.png')
    opts = loop.resolve_options(options(files, folder / 'runs', data=str(folder)))
    message = _one_line_error(lambda: loop._prepare_run_dir(opts))
    assert message.startswith(f'--outdir {folder / "runs"} lies inside the --data folder')
    assert not (folder / 'runs').exists() and len(ImageDataset(str(folder))) == 4

    run_dir, lock = loop._prepare_run_dir(loop.resolve_options(options(files, tmp_path / 'runs')))
    lock.release()
    snapshot = os.path.join(run_dir, rd.snapshot_name(4000))
    with open(snapshot, 'wb') as f:
        f.write(open(files / 'student.pkl', 'rb').read())
    opts = loop.resolve_options({'resume': run_dir, 'student': snapshot})
    message = _one_line_error(lambda: loop._prepare_run_dir(opts))
    assert message.startswith(f'--student {snapshot} is {snapshot}, a file the run writes')
    assert json.load(open(os.path.join(run_dir, rd.OPTIONS_FILE)))['student'] == str(files / 'student.pkl')
