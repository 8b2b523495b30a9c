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
    with torch.no_grad():  # same op paths on both sides (CPU inference paths differ from autograd ones)
        expected = G(z, None, noise_mode='const')
        assert torch.equal(data['G_ema'](z, None, noise_mode='const'), expected)
        assert torch.equal(again['G_ema'](z, None, noise_mode='const'), expected)
