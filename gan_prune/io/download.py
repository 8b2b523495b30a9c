"""Downloading network pickles over http(s) into a local cache.

A URL is fetched once into <cache dir>/downloads/<md5(url)>_<file name>. The bytes are streamed into a
`.part` file next to it (with a progress bar), checked against Content-Length and, when known, a sha256
(given by the caller or as a `#sha256=<hex>` URL fragment), and only then renamed into place, so a file in
the cache is always complete. Transient failures are retried; HTTP client errors are not.

What is refused, whatever the server says: an HTML page instead of the file (a login, error or
download-warning page), a compressed body that inflates far beyond its size on the wire (a gzip bomb), a
body shorter than announced, and a transfer that outlasts the overall deadline (a server that trickles
bytes never trips the per-read timeout alone).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.parse

from gan_prune import defaults
from gan_prune.core.cache import CACHE_ENV_VAR, cache_dir  # noqa: F401  (CACHE_ENV_VAR: part of this API)
from gan_prune.core.fingerprint import file_sha256
from gan_prune.errors import GanPruneError

_CHUNK_BYTES = 1 << 20
# A content-coded body may inflate this many times its bytes on the wire (plus the allowance below). Network
# pickles are float weights that compress by a few percent; a gzip bomb inflates about 1000 times.
MAX_INFLATION_RATIO = 100
_INFLATION_ALLOWANCE_BYTES = 16 << 20
_HTML_STARTS = (b'<!doctype html', b'<html', b'<head', b'<?xml')


def split_checksum(url: str) -> tuple[str, str | None]:
    """(url without fragment, sha256 from a '#sha256=<hex>' fragment or None)."""
    base, _, fragment = url.partition('#')
    match = re.fullmatch(r'sha256[=:]([0-9a-fA-F]{64})', fragment)
    return base, (match.group(1).lower() if match else None)


def cached_path(url: str, cache_dir_override: str | os.PathLike | None = None) -> str:
    """Where `url` is (or would be) cached."""
    base, _ = split_checksum(url)
    name = os.path.basename(urllib.parse.urlparse(base).path) or 'download'
    name = re.sub(r'[^0-9A-Za-z._-]', '_', name)
    digest = hashlib.md5(base.encode('utf-8')).hexdigest()
    return os.path.join(cache_dir(cache_dir_override), 'downloads', f'{digest}_{name}')


def download(url: str, cache_dir: str | os.PathLike | None = None, sha256: str | None = None,
             num_attempts: int | None = None, timeout: float | None = None, progress: bool = True,
             retry_delay: float | None = None, deadline: float | None = None) -> str:
    """Fetch `url` into the cache (unless already there) and return the local path.

    sha256 (or a '#sha256=<hex>' URL fragment) is checked on the new download and on a cache hit.
    `timeout` bounds each connect and read, `deadline` (seconds) the whole download, retries included.
    Raises GanPruneError for HTTP errors, unreachable hosts, incomplete transfers, HTML pages, gzip bombs,
    transfers past the deadline and checksum mismatches.
    """
    base_url, fragment_sha = split_checksum(url)
    expected_sha = (sha256 or fragment_sha or '').lower() or None
    num_attempts = max(1, int(num_attempts if num_attempts is not None else defaults.DOWNLOAD['num_attempts']))
    timeout = timeout if timeout is not None else defaults.DOWNLOAD['timeout']
    retry_delay = retry_delay if retry_delay is not None else defaults.DOWNLOAD.get('retry_delay', 1.0)
    deadline = deadline if deadline is not None else defaults.DOWNLOAD.get('deadline', 3600)
    give_up_at = time.monotonic() + deadline

    final_path = cached_path(url, cache_dir)
    if os.path.isfile(final_path):
        if expected_sha is None or file_sha256(final_path) == expected_sha:
            return final_path
        os.remove(final_path)  # stale or damaged copy: fetch it again

    os.makedirs(os.path.dirname(final_path), exist_ok=True)
    last_error = ''
    stop = _Deadline(give_up_at, deadline)
    for attempt in range(num_attempts):
        if attempt > 0:
            time.sleep(retry_delay * attempt)
            stop.check(base_url, 0, None)
        try:
            # No single wait (connect, read) may outlast what is left of the deadline.
            read_timeout = max(0.1, min(timeout, give_up_at - time.monotonic()))
            _fetch_once(base_url, final_path, expected_sha, read_timeout, progress, stop)
            return final_path
        except _RetryableError as e:
            last_error = str(e)
    raise GanPruneError(f'could not download {base_url}: {last_error} (tried {num_attempts} time(s)); check the URL '
                        f'and your network, or download the file yourself and pass its path')


class _RetryableError(Exception):
    pass


class _Deadline:
    """The moment a download gives up, whatever the server does."""

    def __init__(self, at: float, seconds: float):
        self.at, self.seconds = at, seconds

    def check(self, url: str, received: int, expected: int | None) -> None:
        if time.monotonic() > self.at:
            of = f' of {expected}' if expected is not None else ''
            raise GanPruneError(f'could not download {url}: not finished within the {self.seconds:g} s deadline '
                                f'({received}{of} bytes received in the last attempt; the server is stalling or too '
                                f'slow); try again later or download the file yourself and pass its path')


def _fetch_once(url: str, final_path: str, expected_sha: str | None, timeout: float, progress: bool,
                deadline: _Deadline) -> None:
    fd, part_path = tempfile.mkstemp(dir=os.path.dirname(final_path), prefix=os.path.basename(final_path) + '.',
                                     suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as f:
            digest = _stream_into(url, f, timeout, progress, deadline, os.path.basename(final_path).split('_', 1)[-1])
        if expected_sha is not None and digest != expected_sha:
            raise GanPruneError(f'checksum mismatch for {url}: expected sha256 {expected_sha}, got '
                                f'{digest}; the file on the server is not the expected one')
        os.replace(part_path, final_path)
    finally:
        if os.path.exists(part_path):
            os.remove(part_path)


def _stream_into(url: str, f, timeout: float, progress: bool, deadline: _Deadline, label: str) -> str:
    """Write the body of `url` to `f`, checking it on the way; returns its sha256."""
    import requests
    import urllib3
    from tqdm import tqdm
    try:
        with requests.get(url, stream=True, timeout=timeout,
                          headers={'User-Agent': 'gan_prune', 'Accept-Encoding': 'identity'}) as res:
            _check_status(url, res)
            _refuse_html(url, res.headers.get('Content-Type', ''), b'')
            expected_len, wire_len = _content_length(res), _declared_length(res)
            digest, received = hashlib.sha256(), 0
            with tqdm(total=expected_len, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      desc=label, disable=not progress, leave=False) as bar:
                # read1 returns what one socket read brings, so the deadline is checked at least every `timeout`.
                while chunk := res.raw.read1(_CHUNK_BYTES, decode_content=True):
                    if received == 0:
                        _refuse_html(url, '', chunk)
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    _check_inflation(url, received, res.raw.tell())
                    deadline.check(url, received, expected_len)
            wire_received = res.raw.tell()
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as e:
        raise _RetryableError(f'{type(e).__name__}: {_short(e)}') from None
    if expected_len is not None and received != expected_len:
        raise _RetryableError(f'incomplete transfer ({received} of {expected_len} bytes)')
    if wire_len is not None and wire_received < wire_len:
        raise _RetryableError(f'incomplete transfer ({wire_received} of {wire_len} bytes on the wire)')
    return digest.hexdigest()


def _check_status(url: str, res) -> None:
    if res.status_code >= 400:
        reason = f'HTTP {res.status_code}' + (f' {res.reason}' if res.reason else '')
        if res.status_code >= 500 or res.status_code in (408, 429):
            raise _RetryableError(reason)
        raise GanPruneError(f'could not download {url}: {reason}; check the URL')


def _refuse_html(url: str, content_type: str, first_bytes: bytes) -> None:
    """A network file is never a web page; an HTML answer is a login, error or "are you sure" page."""
    if content_type.split(';')[0].strip().lower() in ('text/html', 'application/xhtml+xml') or \
            first_bytes.lstrip()[:64].lower().startswith(_HTML_STARTS):
        raise GanPruneError(f'could not download {url}: the server sent a web page (HTML), not the file; open the URL '
                            f'in a browser and use the direct link to the file')


def _check_inflation(url: str, received: int, wire_bytes: int) -> None:
    if received > _INFLATION_ALLOWANCE_BYTES + MAX_INFLATION_RATIO * wire_bytes:
        raise GanPruneError(f'could not download {url}: its compressed body inflates to more than '
                            f'{MAX_INFLATION_RATIO} times the {wire_bytes} bytes received (a decompression bomb); '
                            f'refused')


def _declared_length(res) -> int | None:
    """Content-Length: the size on the wire (for a content-coded body, the compressed size)."""
    value = res.headers.get('Content-Length')
    return int(value) if value is not None and value.isdigit() else None


def _content_length(res) -> int | None:
    """The size of the decoded body when the header tells it: only for plain (not content-coded) transfers."""
    if res.headers.get('Content-Encoding', 'identity').lower() != 'identity':
        return None
    return _declared_length(res)


def _short(e: BaseException) -> str:
    text = ' '.join(str(e).split())
    return text if len(text) <= 200 else text[:197] + '...'
