"""gan_prune.io.download against a local HTTP server: caching, progress, retries, atomic files, checksums."""
import hashlib
import os

import pytest
import torch

import gan_prune
from gan_prune import defaults
from gan_prune.errors import GanPruneError
from gan_prune.io import download

PAYLOAD = bytes(range(256)) * 400  # 100 kB


@pytest.fixture
def server(serve_http):
    return serve_http({
        '/files/net.pkl': (200, PAYLOAD, None),
        '/files/short.pkl': (200, PAYLOAD[:1000], len(PAYLOAD)),
        '/files/flaky.pkl': (503, b'busy', None),
    })


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setitem(defaults.DOWNLOAD, 'retry_delay', 0.0)
    monkeypatch.setitem(defaults.DOWNLOAD, 'num_attempts', 3)


def _files(cache):
    d = os.path.join(str(cache), 'downloads')
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(download.CACHE_ENV_VAR, raising=False)
    monkeypatch.delenv('DNNLIB_CACHE_DIR', raising=False)
    monkeypatch.setitem(defaults.DOWNLOAD, 'cache_dir', None)
    assert download.cache_dir() == os.path.join(os.path.expanduser('~'), '.cache', 'gan_prune')
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))
    assert download.cache_dir() == os.path.join(str(tmp_path / 'dnnlib'), 'gan_prune')
    monkeypatch.setitem(defaults.DOWNLOAD, 'cache_dir', str(tmp_path / 'configured'))
    assert download.cache_dir() == str(tmp_path / 'configured')
    monkeypatch.setenv(download.CACHE_ENV_VAR, str(tmp_path / 'env'))
    assert download.cache_dir() == str(tmp_path / 'env')
    assert download.cache_dir(tmp_path / 'arg') == str(tmp_path / 'arg')


def test_download_then_cache_hit(server, tmp_path):
    url = server.base + '/files/net.pkl'
    path = download.download(url, cache_dir=tmp_path, progress=False)
    assert open(path, 'rb').read() == PAYLOAD
    digest = hashlib.md5(url.encode()).hexdigest()
    assert _files(tmp_path) == [f'{digest}_net.pkl']
    assert download.download(url, cache_dir=tmp_path, progress=False) == path
    assert server.hits['/files/net.pkl'] == 1


def test_env_var_selects_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV_VAR, str(tmp_path / 'envcache'))
    path = download.download(server.base + '/files/net.pkl', progress=False)
    assert path.startswith(str(tmp_path / 'envcache'))


def test_progress_bar_is_shown_on_stderr(server, tmp_path, capsys):
    download.download(server.base + '/files/net.pkl', cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert 'net.pkl' in err and '%' in err
    download.download(server.base + '/files/net.pkl', cache_dir=tmp_path / 'other', progress=False)
    assert capsys.readouterr().err == ''


def test_dropped_connection_is_retried_and_leaves_no_file(server, tmp_path, fast_retries):
    with pytest.raises(GanPruneError) as info:
        download.download(server.base + '/files/short.pkl', cache_dir=tmp_path, progress=False)
    assert 'could not download' in str(info.value) and '\n' not in str(info.value)
    assert server.hits['/files/short.pkl'] == 3
    assert _files(tmp_path) == []  # neither a .part file nor a partial final file


def test_server_errors_are_retried(server, tmp_path, fast_retries):
    with pytest.raises(GanPruneError, match='HTTP 503'):
        download.download(server.base + '/files/flaky.pkl', cache_dir=tmp_path, progress=False, num_attempts=2)
    assert server.hits['/files/flaky.pkl'] == 2
    assert _files(tmp_path) == []


def test_404_is_a_clear_error_without_retry(server, tmp_path, fast_retries):
    with pytest.raises(GanPruneError, match='HTTP 404') as info:
        download.download(server.base + '/files/nothing.pkl', cache_dir=tmp_path, progress=False)
    assert '\n' not in str(info.value)
    assert server.hits['/files/nothing.pkl'] == 1
    assert _files(tmp_path) == []


def test_checksum_verified_from_argument_and_fragment(server, tmp_path):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    bad = hashlib.sha256(b'something else').hexdigest()
    url = server.base + '/files/net.pkl'
    with pytest.raises(GanPruneError, match='checksum mismatch'):
        download.download(url, cache_dir=tmp_path, sha256=bad, progress=False)
    assert _files(tmp_path) == []
    with pytest.raises(GanPruneError, match='checksum mismatch'):
        download.download(f'{url}#sha256={bad}', cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []
    path = download.download(f'{url}#sha256={good}', cache_dir=tmp_path, progress=False)
    assert open(path, 'rb').read() == PAYLOAD
    # The fragment is not part of the cache key: same file with or without it.
    assert download.download(url, cache_dir=tmp_path, sha256=good, progress=False) == path


def test_damaged_cached_file_is_fetched_again_when_checksum_known(server, tmp_path):
    url = server.base + '/files/net.pkl'
    path = download.download(url, cache_dir=tmp_path, progress=False)
    with open(path, 'wb') as f:
        f.write(b'damaged')
    good = hashlib.sha256(PAYLOAD).hexdigest()
    assert download.download(url, cache_dir=tmp_path, sha256=good, progress=False) == path
    assert open(path, 'rb').read() == PAYLOAD
    assert server.hits['/files/net.pkl'] == 2


def test_unreachable_host(tmp_path, fast_retries):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(GanPruneError, match='could not download') as info:
        download.download(f'http://127.0.0.1:{port}/net.pkl', cache_dir=tmp_path, progress=False, num_attempts=2)
    assert 'ConnectionError' in str(info.value) and '\n' not in str(info.value)


def test_load_network_pkl_over_http(tmp_path, serve_http):
    from training import networks
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_base': 32, 'channel_max': 8})
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=32, channel_max=8)
    gan_prune.save_network_pkl(dict(G=G, D=D, G_ema=G), tmp_path / 'snap.pkl')
    s = serve_http({'/snap.pkl': (200, (tmp_path / 'snap.pkl').read_bytes(), None)})
    url = s.base + '/snap.pkl'
    data = gan_prune.load_network_pkl(url, cache_dir=tmp_path / 'cache')
    again = gan_prune.load_network_pkl(url, cache_dir=tmp_path / 'cache', trust=True)
    assert s.hits['/snap.pkl'] == 1
    z = torch.randn(2, 8)
    G.eval()  # loaded networks are in eval mode, which selects fused modulation: compare like with like
    with torch.no_grad():
        expected = G(z, None, noise_mode='const')
        assert torch.equal(data['G_ema'](z, None, noise_mode='const'), expected)
        assert torch.equal(again['G_ema'](z, None, noise_mode='const'), expected)


# -- what the server sends never ends up in the cache as a valid file

HTML = b'<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>'


def _gzip_bomb_handler(inflated_bytes):
    import gzip
    body = gzip.compress(b'\0' * inflated_bytes, compresslevel=1)

    def handle(handler):
        handler.send_response(200)
        handler.send_header('Content-Encoding', 'gzip')
        handler.send_header('Content-Length', str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return handle, len(body)


def _trickle_handler(handler):
    """Announces 1000 bytes, then sends one byte every 0.1 s: no single read ever waits long."""
    import time
    handler.send_response(200)
    handler.send_header('Content-Length', '1000')
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b'x')
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:
        pass  # the client gave up


def test_html_page_is_refused_by_content_type_or_content(serve_http, tmp_path, fast_retries):
    s = serve_http({'/typed.pkl': (200, HTML, None, {'Content-Type': 'text/html; charset=utf-8'}),
                    '/sniffed.pkl': (200, b'\n  ' + HTML, None, {'Content-Type': 'application/octet-stream'})})
    for route in ('/typed.pkl', '/sniffed.pkl'):
        with pytest.raises(GanPruneError, match='web page') as info:
            download.download(s.base + route, cache_dir=tmp_path, progress=False)
        assert '\n' not in str(info.value)
        assert s.hits[route] == 1  # not retried: asking again gives the same page
    assert _files(tmp_path) == []


def test_gzip_bomb_is_refused(serve_http, tmp_path, fast_retries):
    handle, wire_bytes = _gzip_bomb_handler(64 << 20)
    s = serve_http({'/bomb.pkl': handle})
    with pytest.raises(GanPruneError, match='decompression bomb') as info:
        download.download(s.base + '/bomb.pkl', cache_dir=tmp_path, progress=False)
    assert '\n' not in str(info.value) and s.hits['/bomb.pkl'] == 1
    assert _files(tmp_path) == []


def test_gzip_coded_file_that_is_not_a_bomb_downloads(serve_http, tmp_path):
    import gzip
    body = gzip.compress(PAYLOAD)
    s = serve_http({'/coded.pkl': (200, body, None, {'Content-Encoding': 'gzip'})})
    path = download.download(s.base + '/coded.pkl', cache_dir=tmp_path, progress=False)
    assert open(path, 'rb').read() == PAYLOAD


def test_short_gzip_body_is_incomplete(serve_http, tmp_path, fast_retries):
    import gzip
    body = gzip.compress(PAYLOAD)
    s = serve_http({'/cut.pkl': (200, body[:len(body) // 2], len(body), {'Content-Encoding': 'gzip'})})
    with pytest.raises(GanPruneError, match='could not download'):
        download.download(s.base + '/cut.pkl', cache_dir=tmp_path, progress=False, num_attempts=1)
    assert _files(tmp_path) == []


def test_trickling_server_hits_the_overall_deadline(serve_http, tmp_path, fast_retries):
    import time
    s = serve_http({'/slow.pkl': _trickle_handler})
    start = time.monotonic()
    with pytest.raises(GanPruneError, match='deadline') as info:
        download.download(s.base + '/slow.pkl', cache_dir=tmp_path, progress=False, timeout=5, deadline=1.0)
    assert time.monotonic() - start < 4  # well before the per-read timeout could ever fire
    assert 'of 1000 bytes' in str(info.value) and '\n' not in str(info.value)
    assert _files(tmp_path) == []
