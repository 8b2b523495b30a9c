"""Files that are never lost: atomic writes, outputs that never replace inputs, appends that lose no line,
exclusive locks, and input fingerprints."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from typing import IO, Any, Callable, Iterable, Mapping

from gan_prune.errors import GanPruneError


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
        f: IO[Any] = os.fdopen(fd, 'wb') if binary else os.fdopen(fd, 'w', encoding='utf-8')
        with f:
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


# ------------------------------------------------------------------------------------------------------------
# Outputs never replace inputs

def local_path(source: str | os.PathLike | None) -> str | None:
    """The local file a command-line source names, or None for nothing, `builtin:NAME` and http(s) URLs."""
    if source is None:
        return None
    source = os.fspath(source)
    if not source or source.startswith(('builtin:', 'http://', 'https://')):
        return None
    if source.startswith('file://'):
        import urllib.parse
        import urllib.request
        return urllib.request.url2pathname(urllib.parse.urlparse(source).path)
    return os.path.expanduser(source)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal after resolving `..` and symlinks, or (both existing) the same
    device and inode, which also catches hard links and bind mounts."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def _inside_folder(path: str, folder: str) -> bool:
    """Whether `path` would be written inside the existing folder `folder` (at any depth)."""
    if not os.path.isdir(folder):
        return False
    folder_real = os.path.realpath(folder)
    candidate = os.path.realpath(path)
    while True:
        if candidate == folder_real or (os.path.exists(candidate) and same_file(candidate, folder)):
            return True
        parent = os.path.dirname(candidate)
        if parent == candidate:
            return False
        candidate = parent


def refuse_overwriting_inputs(out: str | os.PathLike | Iterable[str | os.PathLike],
                              inputs: Mapping[str, Any] | Iterable[tuple[str, Any]],
                              out_label: str = '--out') -> None:
    """Raise GanPruneError (one line naming both) when an output path is the same file as one of the inputs, or
    lies inside an input folder (a dataset folder would gain the output as a new image).

    out: the path a command writes, or several. inputs: {label: source} (or (label, source) pairs), e.g.
    {'--pkl': 'teacher.pkl', '--data': 'images/'}; None, `builtin:NAME`, URLs and paths where nothing exists are
    skipped.
    """
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)
    for out_path in outs:
        out_path = os.path.expanduser(os.fspath(out_path))
        for label, source in pairs:
            path = local_path(source)
            if path is None or not os.path.exists(path):  # nothing there to lose (and not a mode name like 'none')
                continue
            if same_file(out_path, path):
                raise GanPruneError(f'{out_label} {out_path} is the same file as {label} {source}: writing it would '
                                    f'replace that input; choose another {out_label} path')
            if _inside_folder(out_path, path):
                raise GanPruneError(f'{out_label} {out_path} lies inside the {label} folder {source}: writing there '
                                    f'would change that input; choose a path outside it')


# ------------------------------------------------------------------------------------------------------------
# Append-only files shared between processes

def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to `path` in a single write() under an exclusive flock, with O_APPEND.

    Concurrent writers (several `metrics --out` runs, or processes of one run) never lose or interleave a line.
    A torn last line left by a crash is closed with a newline first, so the new line stays readable on its own.
    """
    text = line if line.endswith('\n') else line + '\n'
    if '\n' in text[:-1]:
        raise ValueError('append_line writes a single line; the text holds a newline')
    data = text.encode('utf-8')
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b'\n':
            data = b'\n' + data
        while data:  # a regular file takes it in one write; the loop only guards against a short write
            written = os.write(fd, data)
            data = data[written:]
    finally:
        os.close(fd)  # closing also releases the lock


# ------------------------------------------------------------------------------------------------------------
# Exclusive locks held for a process's life

class LockHeld(Exception):
    """The lock file is held by another process; `holder` is what that process wrote into it ('' if unknown)."""

    def __init__(self, path: str, holder: str):
        super().__init__(f'{path} is locked by {holder or "another process"}')
        self.path, self.holder = path, holder


class ExclusiveLock:
    """An flock on a lock file, held until release() or the end of the process (the kernel drops it then, also
    after a crash or SIGKILL, so a stale lock file never blocks anyone). `supported` is False on file systems
    without flock, where nothing is locked."""

    def __init__(self, path: str, fd: int | None):
        self.path, self._fd = path, fd

    @property
    def supported(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> 'ExclusiveLock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_exclusive(path: str | os.PathLike, owner: str) -> ExclusiveLock:
    """Take an exclusive flock on `path` (created if needed) without waiting, and write `owner` into it so that a
    refused process can say who holds it. Raises LockHeld when another process (or another open of the file in
    this process) holds it."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
        os.close(fd)
        raise LockHeld(path, holder) from None
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return ExclusiveLock(path, None)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner.encode('utf-8') + b'\n', 0)
    return ExclusiveLock(path, fd)


def process_description() -> str:
    """'process 1234 on host, since 2026-01-02 03:04:05 UTC': what a lock file records about its holder."""
    return (f'process {os.getpid()} on {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}')


# ------------------------------------------------------------------------------------------------------------
# Fingerprints of inputs

def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(path: str | os.PathLike) -> str:
    """A cheap, stable fingerprint of a folder's files: sha256 over every relative name, size and mtime (ns), in
    sorted order. Adding, removing, resizing or rewriting a file changes it; no file is read, so it stays fast
    on large datasets."""
    root = os.fspath(path)
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = os.path.join(folder, name)
            st = os.stat(full)
            rel = os.path.relpath(full, root).replace(os.sep, '/')
            entries.append(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}')
    digest = hashlib.sha256('\n'.join(sorted(entries)).encode('utf-8', 'surrogateescape'))
    return f'{digest.hexdigest()} ({len(entries)} files)'
