"""Atomic file writes: a reader (or an interrupted run) never sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable


def default_file_mode() -> int:
    """0666 minus the process umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> str:
    """Call write(file) on a hidden temp file next to `path`, then move it over `path` in one step.

    The temp file gets the permissions a plain open() would give (mkstemp alone makes it 0600). On any error,
    including KeyboardInterrupt, the temp file is removed and an existing `path` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        os.chmod(tmp, default_file_mode())
        with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'encoding': 'utf-8'})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))
