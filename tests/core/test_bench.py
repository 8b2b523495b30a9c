"""gan_prune.core.bench: the helpers of the scripts in tools/, and the scripts' use of them."""
import os

import numpy as np
import pytest
import torch

from gan_prune.core import bench
from gan_prune.core.images import float_to_uint8

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, 'tools')


def test_write_section_replaces_only_its_own_block(tmp_path):
    report = tmp_path / 'docs' / 'benchmarks.md'
    bench.write_section('a', 'first A', str(report))
    text = report.read_text()
    assert text.startswith('# Benchmarks') and '<!-- bench:a -->\nfirst A\n<!-- /bench:a -->' in text
    bench.write_section('b', 'only B', str(report))
    bench.write_section('a', 'second A', str(report))
    text = report.read_text()
    assert 'first A' not in text and 'second A' in text and 'only B' in text
    assert text.index('bench:a') < text.index('bench:b')  # replaced in place, not appended again
    other = tmp_path / 'results.md'
    bench.write_section('table', 'rows', str(other))
    assert '<!-- bench:table -->\nrows\n<!-- /bench:table -->' in other.read_text()
    assert '# Benchmarks' not in other.read_text()  # the header belongs to docs/benchmarks.md only


def test_repo_file_and_machine_line():
    assert bench.repo_file('/x/tools/bench.py', 'docs', 'b.md') == os.path.join('/x', 'docs', 'b.md')
    assert 'torch' in bench.machine_line() and 'Python' in bench.machine_line()
    assert bench.command_line('bench_ops.py', ['--batch', '2']) == 'python tools/bench_ops.py --batch 2'


def test_no_script_in_tools_edits_sys_path_or_imports_a_sibling_module():
    for name in sorted(os.listdir(TOOLS)):
        if name.endswith('.py'):
            text = open(os.path.join(TOOLS, name), encoding='utf-8').read()
            assert 'sys.path' not in text, f'tools/{name} edits sys.path; import from gan_prune.core.bench instead'
            assert 'benchmd' not in text, f'tools/{name} still uses the removed tools/benchmd.py'


class _Generator(torch.nn.Module):
    z_dim, c_dim = 3, 0

    def forward(self, z, c, noise_mode='random', force_fp32=False):
        assert noise_mode == 'const' and force_fp32 and c.shape == (len(z), 0)
        return torch.tanh(z)[:, :, None, None].expand(-1, -1, 2, 2)


class _MeanColour:
    def features(self, images):
        assert images.dtype == torch.uint8
        return images.float().mean(dim=(2, 3))


def test_render_and_feature_moments_are_fixed_by_the_seed():
    G = _Generator()
    images = bench.render(G, 7, seed=5, batch=3)
    assert images.shape == (7, 3, 2, 2) and torch.equal(images, bench.render(G, 7, seed=5, batch=7))
    assert not torch.equal(images, bench.render(G, 7, seed=6))
    mean, cov = bench.feature_moments(_MeanColour(), images, batch=2)
    feats = _MeanColour().features(float_to_uint8(images)).double().numpy()
    assert np.allclose(mean, feats.mean(axis=0)) and np.allclose(cov, np.cov(feats, rowvar=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device: render on a GPU-resident network')
def test_render_runs_a_network_where_its_weights_are():
    G = torch.nn.Linear(3, 12).cuda()
    G.z_dim, G.c_dim = 3, 0
    G.forward = lambda z, c, noise_mode, force_fp32: torch.nn.Linear.forward(G, z).view(-1, 3, 2, 2)
    images = bench.render(G, 5, seed=0)
    assert images.device.type == 'cpu' and images.shape == (5, 3, 2, 2)
