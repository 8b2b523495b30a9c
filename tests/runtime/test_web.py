"""gan-prune export --format web: the page renders in headless Chromium what ONNX Runtime renders.

Needs Debian's Chromium (/usr/bin/chromium, or $GAN_PRUNE_CHROMIUM), the playwright package and an unpacked
onnxruntime-web package ($GAN_PRUNE_ORT_WEB); .ci/run installs all three. Without them the browser tests skip
locally, naming what is missing, and fail under CI ($CI or $GAN_PRUNE_REQUIRE_BROWSER set).
"""
import json
import os

import numpy as np
import pytest
import torch

from gan_prune.errors import GanPruneError
from gan_prune.runtime.export import export_web
from gan_prune.runtime.webassets import (ORT_WEB_FILES, PAGE_FILES, find_chromium,
                                         find_ort_web, render_in_browser, serve_folder)

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')
pytestmark = pytest.mark.slow  # every test exports a network (tens of seconds each on a 2-core CPU)

SEED, COUNT, PSI = 3, 4, 0.6


def _missing(what: str) -> None:
    if os.environ.get('CI') or os.environ.get('GAN_PRUNE_REQUIRE_BROWSER'):
        pytest.fail(f'{what} (CI must run the browser test: see .ci/run)')
    pytest.skip(what)


@pytest.fixture(scope='module')
def ort_web():
    try:
        return find_ort_web()
    except GanPruneError as e:
        _missing(f'onnxruntime-web not available: {e}')


@pytest.fixture(scope='module')
def chromium():
    path = find_chromium()
    if path is None:
        _missing('Chromium not found (apt-get install -y chromium, or set GAN_PRUNE_CHROMIUM)')
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing('the playwright package is not installed (pip install playwright)')
    return path


def make_generator():
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=16, architecture='skip')).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
        G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    return G.requires_grad_(False)


@pytest.fixture(scope='module')
def page_folder(ort_web, tmp_path_factory):
    G = make_generator()
    out = str(tmp_path_factory.mktemp('web') / 'page')
    facts = export_web(G, out, truncation_psi=0.7, ort_web=ort_web)
    return G, out, facts


def test_folder_holds_page_model_and_runtime(page_folder):
    _, out, facts = page_folder
    for name in PAGE_FILES + ('model.onnx', 'model.json'):
        assert os.path.isfile(os.path.join(out, name)), name
    for name in ORT_WEB_FILES:
        assert os.path.getsize(os.path.join(out, 'ort', name)) > 0, name
    stored = json.load(open(os.path.join(out, 'model.json')))
    assert stored['psi_input'] and stored['truncation_default'] == 0.7 and stored['z_dim'] == 16
    assert facts['inputs'] == ['z', 'psi']
    html = open(os.path.join(out, 'index.html')).read()
    for element in ('id="seed"', 'id="psi"', 'type="range"', 'id="grid"', 'src="ort/ort.min.js"'):
        assert element in html
    assert 'http' not in html.replace('http-equiv', '')  # nothing fetched from elsewhere: works offline


def test_export_refuses_a_folder_that_is_not_an_export(ort_web, tmp_path):
    (tmp_path / 'notes.txt').write_text('keep me')
    with pytest.raises(GanPruneError, match='not a web export'):
        export_web(make_generator(), str(tmp_path), ort_web=ort_web)
    assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def onnxruntime_image(G, out, seed, psi):
    """What ONNX Runtime renders from the exported model for numpy's latent of `seed`, as HWC uint8."""
    import onnxruntime as ort
    from gan_prune.generate import seed_latent, to_uint8
    session = ort.InferenceSession(os.path.join(out, 'model.onnx'), providers=['CPUExecutionProvider'])
    z = seed_latent(seed, G.z_dim).to(torch.float32).numpy()
    img = session.run(['img'], {'z': z, 'psi': np.array([psi], dtype=np.float32)})[0]
    return to_uint8(torch.from_numpy(img))[0]


def test_browser_renders_what_onnxruntime_renders(page_folder, chromium):
    G, out, _ = page_folder
    seeds_js = {'randn': f'Array.from(GanPruneSeed.randn({SEED}, 600))',
                'randn_big_seed': 'Array.from(GanPruneSeed.randn(4294967295, 5))'}
    with serve_folder(out) as server:
        result = render_in_browser(f'{server.url}?seed={SEED}&count={COUNT}&psi={PSI}&backend=wasm', chromium,
                                   evaluate=seeds_js)
    assert result.get('error') is None, result.get('console')
    assert result['backend'] == 'wasm' and result['canvases'] == COUNT
    assert result['msPerImage'] > 0 and 'ms per image' in result['status']
    # seed.js reproduces numpy's RandomState(seed).randn (to the last bit but for Math.log's rounding)
    np.testing.assert_allclose(result['randn'], np.random.RandomState(SEED).randn(600), rtol=0, atol=1e-12)
    np.testing.assert_allclose(result['randn_big_seed'], np.random.RandomState(2 ** 32 - 1).randn(5), atol=1e-12)
    browser = np.array(result['firstPixels'], dtype=np.int16).reshape(32, 32, 3)
    reference = onnxruntime_image(G, out, SEED, PSI).astype(np.int16)
    assert np.abs(browser - reference).max() <= 3  # a few grey levels (WASM kernels round differently)
    assert browser.std() > 5  # an image, not a flat field


def test_browser_renders_with_webgpu(page_folder, chromium):
    """The WebGPU path of the page. Headless Chromium without a GPU offers SwiftShader's software adapter under
    --enable-unsafe-webgpu, which runs the same WebGPU kernels a GPU would (slowly), so their output is checked."""
    G, out, _ = page_folder
    with serve_folder(out) as server:
        result = render_in_browser(f'{server.url}?seed={SEED}&count=2&psi={PSI}&backend=webgpu', chromium,
                                   webgpu=True, evaluate={'adapter': 'navigator.gpu ? "yes" : "no"'})
    assert result['adapter'] == 'yes', 'this Chromium exposes no WebGPU (navigator.gpu) on localhost'
    assert result.get('error') is None, result.get('console')
    assert result['backend'] == 'webgpu' and result['canvases'] == 2
    browser = np.array(result['firstPixels'], dtype=np.int16).reshape(32, 32, 3)
    reference = onnxruntime_image(G, out, SEED, PSI).astype(np.int16)
    assert np.abs(browser - reference).max() <= 3
    assert browser.std() > 5


@pytest.mark.parametrize('seed', [0, 1, 123456789, 2 ** 32 - 1])
def test_seed_js_matches_numpy_under_node(seed):
    """seed.js on its own (Node.js, when present): numpy's RandomState(seed).randn, odd lengths included."""
    import shutil
    import subprocess
    from importlib import resources
    node = shutil.which('node')
    if node is None:
        pytest.skip('Node.js not found (apt-get install -y nodejs)')
    script = str(resources.files('gan_prune.runtime').joinpath('web', 'seed.js'))
    code = f'const s = require({json.dumps(script)}); console.log(JSON.stringify(Array.from(s.randn({seed}, 513))))'
    values = json.loads(subprocess.run([node, '-e', code], capture_output=True, text=True, check=True).stdout)
    np.testing.assert_allclose(values, np.random.RandomState(seed).randn(513), rtol=0, atol=1e-12)


def test_ort_web_found_in_a_package_folder_its_dist_or_the_npm_tarball(tmp_path, monkeypatch):
    """--ort-web / $GAN_PRUNE_ORT_WEB: the unpacked package, its dist/, or the .tgz (unpacked into a cache)."""
    import tarfile
    dist = tmp_path / 'package' / 'dist'
    dist.mkdir(parents=True)
    for name in ORT_WEB_FILES:
        (dist / name).write_text(f'// {name}')
    (tmp_path / 'package' / 'package.json').write_text('{"version": "1.31.1"}')
    assert find_ort_web(str(tmp_path / 'package')) == str(dist)
    assert find_ort_web(str(dist)) == str(dist)
    tgz = tmp_path / 'onnxruntime-web-test.tgz'
    with tarfile.open(tgz, 'w:gz') as archive:
        archive.add(tmp_path / 'package', arcname='package')
    monkeypatch.setenv('TMPDIR', str(tmp_path / 'cache'))
    (tmp_path / 'cache').mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, 'tempdir', None)
    monkeypatch.setenv('GAN_PRUNE_ORT_WEB', str(tgz))
    unpacked = find_ort_web()
    assert unpacked.startswith(str(tmp_path / 'cache')) and open(os.path.join(unpacked, 'ort.min.js')).read() == \
        '// ort.min.js'
    monkeypatch.delenv('GAN_PRUNE_ORT_WEB')
    with pytest.raises(GanPruneError, match='npm pack onnxruntime-web@1.31.1'):
        find_ort_web()
    (dist / ORT_WEB_FILES[-1]).unlink()
    with pytest.raises(GanPruneError, match='lacks'):
        find_ort_web(str(tmp_path / 'package'))
