"""dnnlib: EasyDict, cache dirs, URL opening (local files and a local HTTP server), lookups by name, Logger."""
import collections
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import subprocess
import sys
import threading

import pytest

import dnnlib
from dnnlib import util


# ------------------------------------------------------------------------------------------------------------
# EasyDict

def test_easydict_attribute_access_maps_to_items():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2}
    assert d.a == 1 and d['b'] == 2
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError, match='missing'):
        _ = d.missing
    with pytest.raises(AttributeError):
        del d.missing


def test_easydict_identity_and_pickle_path():
    assert dnnlib.EasyDict is util.EasyDict
    assert util.EasyDict.__module__ == 'dnnlib.util'
    assert dnnlib.make_cache_dir_path is util.make_cache_dir_path
    stream = pickle.dumps(dnnlib.EasyDict(x=1), protocol=3)
    globals_ = [arg for op, arg, _ in pickletools.genops(stream) if op.name == 'GLOBAL']
    assert globals_ == ['dnnlib.util EasyDict']
    loaded = pickle.loads(stream)
    assert type(loaded) is dnnlib.EasyDict and loaded.x == 1


# ------------------------------------------------------------------------------------------------------------
# Cache dir

def test_make_cache_dir_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setattr(util, '_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env'))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path / 'env'), 'downloads')
    util.set_cache_dir(str(tmp_path / 'set'))
    assert util.make_cache_dir_path('a', 'b') == os.path.join(str(tmp_path / 'set'), 'a', 'b')
    util.set_cache_dir(None)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path() == os.path.join(str(tmp_path / 'home'), '.cache', 'dnnlib')
    monkeypatch.delenv('HOME')
    monkeypatch.setenv('USERPROFILE', str(tmp_path / 'profile'))
    assert util.make_cache_dir_path('x') == os.path.join(str(tmp_path / 'profile'), '.cache', 'dnnlib', 'x')


# ------------------------------------------------------------------------------------------------------------
# URLs

@pytest.mark.parametrize('obj, allow_file, expected', [
    ('https://example.com/a.pkl', False, True),
    ('http://127.0.0.1:8000/a.pkl', False, True),
    ('file:///tmp/a.pkl', False, False),
    ('file:///tmp/a.pkl', True, True),
    ('/tmp/a.pkl', False, False),
    ('a.pkl', True, False),
    ('http://', False, False),
    (None, False, False),
    (42, True, False),
])
def test_is_url(obj, allow_file, expected):
    assert util.is_url(obj, allow_file_urls=allow_file) is expected


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'data with space.bin'
    path.write_bytes(b'hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'hello'
    with util.open_url(path.as_uri()) as f:
        assert f.read() == b'hello'
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)


class _Server:
    """A local HTTP server in a thread that serves fixed bytes and counts requests per path."""

    def __init__(self, routes):
        self.routes = routes
        self.hits = collections.Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits[self.path] += 1
                status, body = server.routes.get(self.path, (404, b'not found'))
                self.send_response(status)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server({'/nets/model.pkl': (200, b'payload' * 100), '/broken': (500, b'server error')})
    yield s
    s.close()


def test_open_url_http_caches_by_md5_and_name(server, tmp_path):
    url = server.base + '/nets/model.pkl'
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == b'payload' * 100
    expected_name = hashlib.md5(url.encode('utf-8')).hexdigest() + '_model.pkl'
    assert os.listdir(tmp_path) == [expected_name]
    # Second call: served from the cache, no request.
    path = util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True)
    assert path == os.path.join(str(tmp_path), expected_name)
    assert server.hits['/nets/model.pkl'] == 1


def test_open_url_default_cache_dir_and_no_cache(server, tmp_path, monkeypatch):
    monkeypatch.setattr(util, '_cache_dir', str(tmp_path))
    url = server.base + '/nets/model.pkl'
    f = util.open_url(url, verbose=False, cache=False)
    assert isinstance(f, io.BytesIO) and f.read() == b'payload' * 100
    assert not os.path.exists(tmp_path / 'downloads')
    util.open_url(url, verbose=False).close()
    assert len(os.listdir(tmp_path / 'downloads')) == 1


def test_open_url_http_errors_raise_and_leave_no_file(server, tmp_path):
    import requests
    with pytest.raises(requests.HTTPError):
        util.open_url(server.base + '/absent.pkl', cache_dir=str(tmp_path), verbose=False, num_attempts=3)
    assert server.hits['/absent.pkl'] == 1  # client errors are not retried
    with pytest.raises(requests.HTTPError):
        util.open_url(server.base + '/broken', cache_dir=str(tmp_path), verbose=False, num_attempts=2)
    assert server.hits['/broken'] == 2
    assert not os.path.exists(tmp_path) or os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------------------
# Objects by name

def test_get_obj_and_call_by_name():
    assert util.get_obj_by_name('collections.OrderedDict') is collections.OrderedDict
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.call_func_by_name('a', 'b', func_name='os.path.join') == os.path.join('a', 'b')
    d = util.construct_class_by_name(class_name='dnnlib.util.EasyDict', x=3)
    assert isinstance(d, dnnlib.EasyDict) and d.x == 3
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_package_xyz.thing')
    with pytest.raises(AttributeError):
        util.get_obj_by_name('collections.NoSuchThing')


def test_construct_class_by_name_builds_generator():
    G = util.construct_class_by_name(class_name='training.networks.Generator', z_dim=8, c_dim=0, w_dim=8,
                                     img_resolution=8, img_channels=3, mapping_kwargs={'num_layers': 1},
                                     synthesis_kwargs={'channel_base': 32, 'channel_max': 8})
    assert type(G).__name__ == 'Generator' and G.img_resolution == 8


@pytest.mark.parametrize('seconds, text', [(0, '0s'), (9.4, '9s'), (125, '2m 05s'),
                                           (3 * 3600 + 7 * 60 + 2, '3h 07m 02s'),
                                           (2 * 86400 + 4 * 3600 + 11 * 60, '2d 04h 11m')])
def test_format_time(seconds, text):
    assert util.format_time(seconds) == text


def test_logger_tees_and_restores(tmp_path, capsys):
    log_path = tmp_path / 'log.txt'
    stdout_before, stderr_before = sys.stdout, sys.stderr
    with util.Logger(str(log_path), should_flush=True):
        print('to stdout')
        print('to stderr', file=sys.stderr)
    assert sys.stdout is stdout_before and sys.stderr is stderr_before
    text = log_path.read_text()
    assert 'to stdout' in text and 'to stderr' in text
    captured = capsys.readouterr()
    assert 'to stdout' in captured.out and 'to stderr' in captured.err


def test_util_imports_with_stdlib_only_and_without_distutils(repo_root):
    # Network pickles name dnnlib.util.EasyDict, so it must import anywhere; requests only when downloading.
    code = ('import sys; sys.path.insert(0, %r); import dnnlib; '
            'print(int("distutils" in sys.modules), int("requests" in sys.modules), int("torch" in sys.modules))'
            % str(repo_root / 'third_party' / 'stylegan2_ada'))
    out = subprocess.run([sys.executable, '-S', '-c', code], capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONPATH': ''}).stdout.split()
    assert out == ['0', '0', '0']
