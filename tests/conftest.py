"""Shared fixtures: where the golden reference data lives, and deterministic small networks."""
import collections
import http.server
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
# Triton picks compiled or interpreted functions when each is decorated, for its own library (tl.sigmoid, ...) as
# soon as it is imported, and torchvision imports it through torch._dynamo while test modules are collected. So the
# interpreter, which the fused-kernel tests use on CPU tensors, is switched on here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

REPO = Path(__file__).resolve().parents[1]


def golden_root() -> Path:
    """tests/golden in this repository, or $GAN_PRUNE_GOLDEN when set (e.g. a regenerated copy)."""
    env = os.environ.get('GAN_PRUNE_GOLDEN')
    return Path(env) if env else REPO / 'tests' / 'golden'


@pytest.fixture(autouse=True)
def restore_sigchld_handler():
    """Each test leaves SIGCHLD as it found it. torch's DataLoader installs a process-wide SIGCHLD handler the first
    time it starts worker processes and never removes it; a later test's subprocess then runs that handler, and once
    OpenVINO had been loaded too the test process died of SIGSEGV while waiting for a child (tools/device_check's
    steps)."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    """tests/golden (or $GAN_PRUNE_GOLDEN). In CI its absence is a failure, not a skip."""
    d = golden_root()
    if not (d / 'README.md').is_file():
        if os.environ.get('CI'):
            pytest.fail(f'golden reference data not found at {d}')
        pytest.skip(f'golden reference data not found at {d} (set GAN_PRUNE_GOLDEN)')
    return d


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


def pytest_sessionstart(session):
    """Build the compiled narrow-layer kernels once, up front, rather than inside whichever test (or CLI
    subprocess) first renders a narrow layer; on a machine without a compiler this only logs why not."""
    from torch_utils.ops import narrow_conv
    narrow_conv.kernels()


# A local HTTP server for download tests (127.0.0.1 only; nothing leaves the machine).

class LocalServer:
    """Serves `routes` on 127.0.0.1 and counts requests.

    A route is (status, body, declared_length or None), optionally with a 4th item of extra headers, or a
    function handler -> None that writes the whole response itself (stalls, unusual encodings).
    """

    def __init__(self, routes):
        self.routes = routes
        self.hits = collections.Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path = self.path.split('#')[0]
                server.hits[path] += 1
                route = server.routes.get(path, (404, b'not found', None))
                if callable(route):
                    route(self)
                    return
                status, body, declared, *extra = route
                self.send_response(status)
                self.send_header('Content-Length', str(declared if declared is not None else len(body)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)  # a short body with a longer declared length = a dropped connection

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve_http():
    """serve_http(routes) starts a LocalServer; every server is shut down when the test ends."""
    servers = []

    def start(routes):
        servers.append(LocalServer(routes))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
