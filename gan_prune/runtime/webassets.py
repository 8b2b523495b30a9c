"""`gan-prune export --format web`: a static folder that renders the generator in a browser, offline.

    OUT/index.html, app.js, seed.js     the page (gan_prune/runtime/web/)
    OUT/model.onnx, model.json          the generator (psi is an input, for the slider) and its facts
    OUT/ort/                            ONNX Runtime Web: ort.min.js and its WebAssembly (JSEP) files

The runtime files come from the onnxruntime-web npm package, unpacked somewhere on this machine: --ort-web PATH
or $GAN_PRUNE_ORT_WEB (the package folder, its dist/ folder, or the .tgz that `npm pack` writes).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, Any

from gan_prune.errors import GanPruneError

ORT_WEB_VERSION = '1.31.1'  # the version the page is tested with (tests/runtime/test_web.py, .ci/run)
ORT_WEB_ENV = 'GAN_PRUNE_ORT_WEB'
# ort.min.js runs WebAssembly and WebGPU through the JSEP build of the runtime.
ORT_WEB_FILES = ('ort.min.js', 'ort-wasm-simd-threaded.jsep.mjs', 'ort-wasm-simd-threaded.jsep.wasm')
PAGE_FILES = ('index.html', 'app.js', 'seed.js')
HOW_TO_GET = (f'get it with `npm pack onnxruntime-web@{ORT_WEB_VERSION} && tar xzf onnxruntime-web-{ORT_WEB_VERSION}'
              f'.tgz` and pass --ort-web ./package (or set ${ORT_WEB_ENV})')


def find_ort_web(path: str | None = None) -> str:
    """The dist/ folder of an onnxruntime-web package (from `path` or $GAN_PRUNE_ORT_WEB), unpacking a .tgz."""
    path = path or os.environ.get(ORT_WEB_ENV)
    if not path:
        raise GanPruneError(f'--format web needs the onnxruntime-web runtime files; {HOW_TO_GET}')
    if not os.path.exists(path):
        raise GanPruneError(f'onnxruntime-web: {path} does not exist; {HOW_TO_GET}')
    if os.path.isfile(path) and path.endswith(('.tgz', '.tar.gz')):
        path = _unpack_tgz(path)
    for candidate in (os.path.join(path, 'package', 'dist'), os.path.join(path, 'dist'), path):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in ORT_WEB_FILES):
            return candidate
    raise GanPruneError(f'onnxruntime-web: {path} lacks {", ".join(ORT_WEB_FILES)} (in it or its dist/); '
                        f'{HOW_TO_GET}')


def _unpack_tgz(path: str) -> str:
    """Unpack the runtime files of an npm tarball into a cache folder keyed by the tarball's name and size."""
    cache = os.path.join(tempfile.gettempdir(), f'gan_prune-ort-web-{os.path.basename(path)}-{os.path.getsize(path)}')
    dist = os.path.join(cache, 'package', 'dist')
    if all(os.path.isfile(os.path.join(dist, name)) for name in ORT_WEB_FILES):
        return cache
    tmp = tempfile.mkdtemp(prefix='.ort-web-', dir=tempfile.gettempdir())
    wanted = {f'package/dist/{name}' for name in ORT_WEB_FILES} | {'package/package.json'}
    with tarfile.open(path, 'r:gz') as archive:
        members = [m for m in archive.getmembers() if m.name in wanted and m.isfile()]
        archive.extractall(tmp, members=members, filter='data')
    if os.path.isdir(cache):
        shutil.rmtree(cache)
    os.replace(tmp, cache)
    return cache


def ort_web_version(dist: str) -> str | None:
    package_json = os.path.join(os.path.dirname(dist), 'package.json')
    try:
        with open(package_json, encoding='utf-8') as f:
            return json.load(f).get('version')
    except (OSError, ValueError):
        return None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def page_source(name: str) -> bytes:
    return resources.files('gan_prune.runtime').joinpath('web').joinpath(name).read_bytes()  # one name per call on Python 3.10


def check_out_folder(out: str) -> None:
    """Refuse to replace a folder that is not an earlier web export (it could hold anything)."""
    if os.path.isfile(out):
        raise GanPruneError(f'--out {out} is a file; --format web writes a folder')
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, 'model.json')):
        raise GanPruneError(f'--out {out} is a folder that is not a web export; choose a new or empty folder')


# --- serving the folder and driving a headless browser (the browser test and tools/bench_web.py)

if TYPE_CHECKING:
    import http.server

CHROMIUM_CANDIDATES = ('/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome')


def find_chromium() -> str | None:
    """A Chromium executable: $GAN_PRUNE_CHROMIUM, Debian's /usr/bin/chromium, or one on PATH; None if none."""
    candidates = [os.environ.get('GAN_PRUNE_CHROMIUM')] + list(CHROMIUM_CANDIDATES)
    candidates += [shutil.which(name) for name in ('chromium', 'chromium-browser')]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


class serve_folder:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) from a background thread; `.url` while open."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.server: http.server.ThreadingHTTPServer | None = None
        self.url = ''

    def __enter__(self) -> 'serve_folder':
        import functools
        import http.server
        import threading

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                              '.wasm': 'application/wasm', '.mjs': 'text/javascript', '.js': 'text/javascript',
                              '.onnx': 'application/octet-stream', '.json': 'application/json'}

            def log_message(self, *args) -> None:  # quiet: a page load is dozens of requests
                pass

        handler = functools.partial(Handler, directory=self.folder)
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server
        self.url = f'http://127.0.0.1:{server.server_address[1]}/'
        return self

    def __exit__(self, *exc) -> None:
        assert self.server is not None  # set by __enter__
        self.server.shutdown()
        self.server.server_close()


def render_in_browser(url: str, chromium: str, timeout_s: float = 300.0, webgpu: bool = False,
                      evaluate: dict[str, str] | None = None) -> dict[str, Any]:
    """Open the page in headless Chromium (Playwright), wait for its first grid; returns window.ganPrune
    plus the status line, the number of images shown, console messages and each `evaluate` expression's value.

    `url` carries the page's query (seed, count, psi, backend). Needs the playwright package (extras 'test').
    """
    from playwright.sync_api import sync_playwright
    args = ['--no-sandbox', '--disable-dev-shm-usage'] + (['--enable-unsafe-webgpu'] if webgpu else [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page()
            messages: list[str] = []
            page.on('console', lambda m: messages.append(m.text))
            page.goto(url)
            page.wait_for_function('window.ganPrune && (window.ganPrune.done > 0 || window.ganPrune.error)',
                               timeout=timeout_s * 1000)
            result = page.evaluate('window.ganPrune')
            result['status'] = page.inner_text('#status')
            result['canvases'] = page.locator('#grid canvas').count()
            result['console'] = messages
            for key, expression in (evaluate or {}).items():
                result[key] = page.evaluate(expression)
            return result
        finally:
            browser.close()
