"""General utilities with the public interface of `dnnlib.util`: EasyDict, cache dirs, URL opening,
object lookup by dotted name, time formatting and a stdout/stderr tee.

Self-contained on purpose: network pickles name `dnnlib.util.EasyDict`, so this module must import in any
environment that only has torch and numpy (no distutils, no gan_prune, requests imported on first download).
"""
from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
import time
import types
import urllib.parse
import urllib.request
import uuid
from typing import Any, BinaryIO

# ------------------------------------------------------------------------------------------------------------
# EasyDict


class EasyDict(dict):
    """A dict whose items can also be read, written and deleted as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ------------------------------------------------------------------------------------------------------------
# Cache directory

_cache_dir: str | None = None


def set_cache_dir(path: str | None) -> None:
    """Override where make_cache_dir_path() points (None restores the environment-based default)."""
    global _cache_dir
    _cache_dir = path


def make_cache_dir_path(*paths: str) -> str:
    """A path inside the cache dir: set_cache_dir(), else $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib,
    else %USERPROFILE%/.cache/dnnlib, else <system temp>/.cache/dnnlib."""
    if _cache_dir is not None:
        return os.path.join(_cache_dir, *paths)
    if os.environ.get('DNNLIB_CACHE_DIR'):
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if os.environ.get('HOME'):
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if os.environ.get('USERPROFILE'):
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


# ------------------------------------------------------------------------------------------------------------
# URLs


def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True for a string of the form scheme://location (file:// only when allow_file_urls)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    parsed = urllib.parse.urlparse(obj)
    if parsed.scheme == 'file':
        return allow_file_urls
    return bool(parsed.scheme) and bool(parsed.netloc)


def file_url_to_path(url: str) -> str:
    """The local path a file:// URL names."""
    parsed = urllib.parse.urlparse(url)
    path = urllib.request.url2pathname(parsed.path)
    if parsed.netloc and parsed.netloc != 'localhost':
        path = '//' + parsed.netloc + path  # UNC-style host part
    return path


def _url_file_name(url: str) -> str:
    # Only characters that are safe in a file name on every platform.
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    return re.sub(r'[^0-9A-Za-z._-]', '_', name)


def open_url(url: str, cache_dir: str | None = None, num_attempts: int = 10, verbose: bool = True,
             return_filename: bool = False, cache: bool = True) -> BinaryIO | str:
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    http(s) downloads are cached as <cache_dir>/<md5(url)>_<name> (cache_dir defaults to
    make_cache_dir_path('downloads')); with cache=False the bytes are held in memory instead.
    With return_filename=True the local file's path is returned instead of an open file.
    """
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    if not re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', url):
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        path = file_url_to_path(url)
        return path if return_filename else open(path, 'rb')
    assert is_url(url)

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    if cache:
        cached = os.path.join(cache_dir, f'{url_md5}_{_url_file_name(url)}')
        if os.path.isfile(cached):
            return cached if return_filename else open(cached, 'rb')

    data = _download_bytes(url, num_attempts=num_attempts, verbose=verbose)
    if not cache:
        return io.BytesIO(data)

    # Write next to the final file, then rename, so an interrupted download never looks complete.
    os.makedirs(cache_dir, exist_ok=True)
    tmp_path = os.path.join(cache_dir, f'tmp_{uuid.uuid4().hex}_{url_md5}_{_url_file_name(url)}')
    try:
        with open(tmp_path, 'wb') as f:
            f.write(data)
        os.replace(tmp_path, cached)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return cached if return_filename else open(cached, 'rb')


def _download_bytes(url: str, num_attempts: int, verbose: bool) -> bytes:
    import requests  # only needed for remote URLs

    last_error: Exception | None = None
    for attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {url} ...', end='', file=sys.stderr, flush=True)
            with requests.Session() as session:
                with session.get(url, timeout=60) as res:
                    res.raise_for_status()
                    data = res.content
                    expected = res.headers.get('Content-Length')
                    if expected is not None and 'Content-Encoding' not in res.headers and int(expected) != len(data):
                        raise IOError(f'incomplete download: got {len(data)} of {expected} bytes')
            if verbose:
                print(' done', file=sys.stderr, flush=True)
            return data
        except KeyboardInterrupt:
            raise
        except requests.HTTPError as e:
            # A 4xx answer will not change on retry.
            if verbose:
                print(' failed', file=sys.stderr, flush=True)
            if e.response is not None and 400 <= e.response.status_code < 500:
                raise
            last_error = e
        except Exception as e:  # pylint: disable=broad-except
            if verbose:
                print(' failed', file=sys.stderr, flush=True)
            last_error = e
        if attempt + 1 < num_attempts:
            time.sleep(min(2 ** attempt, 10) * 0.5)
    assert last_error is not None
    raise last_error


# ------------------------------------------------------------------------------------------------------------
# Objects by dotted name


def _import_longest_prefix(name: str) -> tuple[types.ModuleType, str]:
    """Import the longest importable module prefix of `name`; return it and the remaining attribute path."""
    parts = name.split('.')
    for split in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only skip if the missing module is this prefix itself, not something it imports.
            if e.name is not None and module_name != e.name and not module_name.startswith(e.name + '.'):
                raise
            continue
        rest = '.'.join(parts[split:])
        return module, rest
    raise ImportError(f'no module found for {name!r}')


def get_obj_by_name(name: str) -> Any:
    """The object a dotted name refers to, e.g. 'training.networks.Generator' or 'numpy.sqrt'."""
    module, rest = _import_longest_prefix(name)
    obj: Any = module
    for attr in rest.split('.') if rest else []:
        obj = getattr(obj, attr)
    return obj


def call_func_by_name(*args: Any, func_name: str | None = None, **kwargs: Any) -> Any:
    """Look up a function by dotted name and call it."""
    assert func_name is not None
    func = get_obj_by_name(func_name)
    assert callable(func), f'{func_name} is not callable'
    return func(*args, **kwargs)


def construct_class_by_name(*args: Any, class_name: str | None = None, **kwargs: Any) -> Any:
    """Look up a class by dotted name and instantiate it."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Small utilities


def format_time(seconds: float) -> str:
    """A short human-readable duration: '9s', '2m 05s', '3h 07m 02s', '2d 04h 11m'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


class _TeeStream:
    """One of the two streams a Logger installs: writes go to the log file and to the original stream."""

    def __init__(self, logger: 'Logger', stream: Any):
        self.logger = logger
        self.stream = stream

    def write(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        if len(text) == 0:
            return
        if self.logger.file is not None:
            self.logger.file.write(text)
        self.stream.write(text)
        if self.logger.should_flush:
            self.flush()

    def flush(self) -> None:
        if self.logger.file is not None:
            self.logger.file.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # encoding, fileno, ... of the original stream


class Logger:
    """Copy everything printed to stdout and stderr into a file (and still show it).

    Installs itself in sys.stdout / sys.stderr until close(); usable as a context manager.
    """

    def __init__(self, file_name: str | None = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = open(file_name, file_mode, encoding='utf-8') if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._tee_stdout = _TeeStream(self, self.stdout)
        self._tee_stderr = _TeeStream(self, self.stderr)
        sys.stdout = self._tee_stdout
        sys.stderr = self._tee_stderr

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def write(self, text: str | bytes) -> None:
        """Write to the log file and the original stdout."""
        self._tee_stdout.write(text)

    def flush(self) -> None:
        self._tee_stdout.flush()
        self._tee_stderr.stream.flush()

    def close(self) -> None:
        """Flush, restore the original streams (if still ours) and close the file."""
        self.flush()
        if sys.stdout is self._tee_stdout:
            sys.stdout = self.stdout
        if sys.stderr is self._tee_stderr:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None
