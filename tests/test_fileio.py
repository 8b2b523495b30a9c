"""Atomic writes keep the old file on failure and give new files the usual permissions."""
import os
import stat

import pytest

from gan_prune.fileio import atomic_write, atomic_write_bytes, default_file_mode


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
