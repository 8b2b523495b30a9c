"""Atomic writes, outputs that never replace inputs, appends that lose no line, locks and fingerprints."""
import json
import os
import stat
import subprocess
import sys

import pytest

from gan_prune.errors import GanPruneError
from gan_prune.fileio import (LockHeld, append_line, atomic_write, atomic_write_bytes, default_file_mode,
                              folder_fingerprint, lock_exclusive, refuse_overwriting_inputs, same_file, sha256_file)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'f.json'
    atomic_write_bytes(path, b'{"a": 1}\n')

    def broken(f):
        f.write('partial')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken, binary=False)
    assert path.read_text() == '{"a": 1}\n' and os.listdir(tmp_path) == ['f.json']


def test_new_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / 'x.bin', b'data')
        assert stat.S_IMODE(os.stat(path).st_mode) == default_file_mode() == 0o644
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------------------
# An output is never one of the inputs

@pytest.fixture
def teacher(tmp_path):
    (tmp_path / 'models').mkdir()
    path = tmp_path / 'models' / 'teacher.pkl'
    path.write_bytes(b'teacher weights')
    return path


def _refused(out, inputs, **kwargs) -> str:
    with pytest.raises(GanPruneError) as e:
        refuse_overwriting_inputs(out, inputs, **kwargs)
    message = str(e.value)
    assert '\n' not in message
    return message


def test_an_output_naming_an_input_by_any_route_is_refused(tmp_path, teacher):
    os.symlink(teacher, tmp_path / 'link.pkl')
    os.link(teacher, tmp_path / 'hard.pkl')
    os.symlink(tmp_path / 'models', tmp_path / 'models-link')
    routes = [teacher, f'{tmp_path}/models/../models/teacher.pkl', tmp_path / 'link.pkl', tmp_path / 'hard.pkl',
              tmp_path / 'models-link' / 'teacher.pkl']
    for out in routes:
        message = _refused(str(out), {'--pkl': str(teacher)})
        assert message.startswith(f'--out {out} is the same file as --pkl {teacher}') and 'another --out' in message
    # The input named by a relative path, a file:// URL or the hard link: still the same file.
    old_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        _refused('models/teacher.pkl', [('--teacher', 'hard.pkl')], out_label='--student')
        _refused(str(teacher), {'--pkl': f'file://{teacher}'})
    finally:
        os.chdir(old_cwd)
    assert teacher.read_bytes() == b'teacher weights'


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    images = tmp_path / 'images'
    (images / 'sub').mkdir(parents=True)
    message = _refused(str(images / 'sub' / 'new.png'), {'--data': str(images)}, out_label='output')
    assert 'inside the --data folder' in message
    _refused(str(images), {'--data': str(images)})


def test_distinct_outputs_and_sources_without_a_file_pass(tmp_path, teacher):
    refuse_overwriting_inputs(tmp_path / 'pruned.pkl', {'--pkl': str(teacher)})
    refuse_overwriting_inputs([tmp_path / 'a.pkl', tmp_path / 'b.pkl'],
                              {'--pkl': 'builtin:teacher', '--ref-pkl': 'https://example.com/t.pkl', '--data': None,
                               '--mask': 'none'})
    refuse_overwriting_inputs(tmp_path / 'none', {'--mask': 'none'})  # a mode name, not a file
    assert same_file(teacher, tmp_path / 'models' / '.' / 'teacher.pkl')
    assert not same_file(teacher, tmp_path / 'other.pkl')


# ------------------------------------------------------------------------------------------------------------
# Appends from several processes lose no line

_APPENDER = '''
import json, os, sys, time
from gan_prune.fileio import append_line
path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(path + '.ready-' + tag, 'w').close()
while not all(os.path.exists(path + '.ready-' + t) for t in 'ab'):  # start together, so the appends overlap
    time.sleep(0.001)
for i in range(count):
    append_line(path, json.dumps({"writer": tag, "i": i, "pad": "x" * 300}))
'''


def test_two_processes_appending_at_once_lose_no_line(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    count = 2000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, '-c', _APPENDER, str(path), tag, str(count)], env=env)
             for tag in ('a', 'b')]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 * count
    for tag in ('a', 'b'):
        assert [r['i'] for r in records if r['writer'] == tag] == list(range(count))  # in order, none lost


def test_append_line_closes_a_torn_line_and_takes_one_line(tmp_path):
    path = tmp_path / 'stats.jsonl'
    path.write_text('{"complete": 1}\n{"torn": ')  # a crash in the middle of a write
    append_line(path, '{"next": 2}')
    append_line(path, '{"last": 3}\n')
    assert path.read_text().splitlines() == ['{"complete": 1}', '{"torn": ', '{"next": 2}', '{"last": 3}']
    with pytest.raises(ValueError):
        append_line(path, 'two\nlines')


# ------------------------------------------------------------------------------------------------------------
# Locks

_HOLDER = '''
import sys, time
from gan_prune.fileio import lock_exclusive, process_description
lock = lock_exclusive(sys.argv[1], process_description())
print('locked', flush=True)
time.sleep(120)
'''


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path):
    path = tmp_path / 'run.lock'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(LockHeld) as e:
            lock_exclusive(path, 'me')
        assert e.value.holder.startswith(f'process {holder.pid} on ')
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    with lock_exclusive(path, 'me') as lock:
        assert lock.supported
        with pytest.raises(LockHeld, match='me'):  # a second open in this process is refused as well
            lock_exclusive(path, 'again')
    lock_exclusive(path, 'after release').release()


# ------------------------------------------------------------------------------------------------------------
# Fingerprints

def test_file_and_folder_fingerprints_follow_content_and_listing(tmp_path):
    import hashlib
    (tmp_path / 'f.bin').write_bytes(b'abc')
    assert sha256_file(tmp_path / 'f.bin') == hashlib.sha256(b'abc').hexdigest()
    folder = tmp_path / 'images'
    (folder / 'sub').mkdir(parents=True)
    (folder / 'a.png').write_bytes(b'1')
    (folder / 'sub' / 'b.png').write_bytes(b'22')
    first = folder_fingerprint(folder)
    assert first == folder_fingerprint(folder) and first.endswith('(2 files)')
    (folder / 'sub' / 'b.png').write_bytes(b'33')  # same size, new mtime
    os.utime(folder / 'sub' / 'b.png', ns=(1, 1))
    second = folder_fingerprint(folder)
    assert second != first
    (folder / 'c.png').write_bytes(b'')
    assert folder_fingerprint(folder) not in (first, second)
