import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gan_prune.distill import teacher_stats as ts
from gan_prune.distill.embedders import Embedder
from gan_prune.errors import GanPruneError


class PooledConvEmbedder(Embedder):
    """A small frozen embedder so that the tests spend their time on the bookkeeping, not on big networks."""

    def __init__(self, dim=5, name='test-conv', seed=0):
        super().__init__(name, dim, normalize=False)
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.freeze()

    def embed(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3)) + x.mean(dim=(1, 2, 3))[:, None]


class FailingEmbedder(PooledConvEmbedder):
    """Raises `exc` on its `fail_at`-th call (0-based), to simulate an interrupted run."""

    def __init__(self, fail_at, exc, **kwargs):
        super().__init__(**kwargs)
        self.calls, self.fail_at, self.exc = 0, fail_at, exc

    def embed(self, x):
        if self.calls == self.fail_at:
            raise self.exc
        self.calls += 1
        return super().embed(x)


class StandInGenerator(nn.Module):
    """Used only if the compatibility layer cannot be imported: same call signature, global-RNG noise."""

    def __init__(self):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = 8, 0, 8, 3
        self.fc = nn.Linear(8, 3 * 8 * 8)

    def forward(self, z, c, truncation_psi=1, noise_mode='random', force_fp32=False):
        img = self.fc(z).view(-1, 3, 8, 8)
        if noise_mode == 'random':
            img = img + 0.1 * torch.randn_like(img)
        return img


@pytest.fixture(scope='module')
def G():
    torch.manual_seed(0)
    try:
        from training import networks
        G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                               mapping_kwargs=dict(num_layers=2),
                               synthesis_kwargs=dict(channel_base=128, channel_max=16))
        with torch.no_grad():  # non-zero noise strengths so that the noise mode matters
            for name, p in G.named_parameters():
                if name.endswith('noise_strength'):
                    p.fill_(0.5)
    except ImportError:
        G = StandInGenerator()
    return G.eval().requires_grad_(False)


def _direct_stats(G, embedders, samples, batch, seed, noise_mode='random'):
    """Reference: generate every batch by the documented seed rule, embed all images at once, average in float64."""
    images = []
    for b, start in enumerate(range(0, samples, batch)):
        n = min(batch, samples - start)
        s = int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
        z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(s))
        torch.manual_seed(s)
        with torch.no_grad():
            images.append(G(z, torch.zeros(n, G.c_dim), truncation_psi=1, noise_mode=noise_mode, force_fp32=True))
    images = torch.cat(images)
    out = []
    for emb in embedders:
        with torch.no_grad():
            e = emb(images).double().numpy()
        out.append((e.mean(0), np.square(e).mean(0), e.astype(np.float32)))
    return out


def _read(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k].copy() for k in f.files}


def test_stats_equal_direct_computation(G, tmp_path):
    embedders = [PooledConvEmbedder(5, 'a', seed=1), PooledConvEmbedder(3, 'b', seed=2)]
    out = tmp_path / 'stats.npz'
    rng_before = torch.get_rng_state()
    stats = ts.compute_teacher_stats(G, embedders, str(out), samples=10, batch=4, seed=7, bank_size=6,
                                     source='test-G', spec='a,b', progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    direct = _direct_stats(G, embedders, samples=10, batch=4, seed=7)
    loaded = ts.load_teacher_stats(str(out))
    assert loaded.names == ['a', 'b'] and not loaded.normalize
    for name, (mu1, mu2, emb) in zip(['a', 'b'], direct):
        for entry in (stats.get(name), loaded.get(name)):
            assert entry.count == 10
            np.testing.assert_allclose(entry.mu1, mu1, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(entry.mu2, mu2, rtol=1e-5, atol=1e-7)
            assert entry.bank.shape == (6, entry.dim)
            np.testing.assert_allclose(entry.bank, emb[:6], rtol=1e-5, atol=1e-6)
    raw = _read(out)
    assert str(raw['source']) == 'test-G' and str(raw['spec']) == 'a,b' and int(raw['seed']) == 7
    assert raw['batch_seeds'].tolist() == [ts.batch_seed(7, b) for b in range(3)]
    assert raw['sum.0'].dtype == np.float64 and raw['mu1.0'].dtype == np.float64
    assert loaded.meta['samples'] == 10 and loaded.meta['noise_mode'] == 'random'
    assert sorted(os.listdir(tmp_path)) == ['stats.npz']  # no partial or temp files left


def test_noise_mode_and_seed_change_the_statistics(G, tmp_path):
    emb = [PooledConvEmbedder(4, 'a', seed=1)]
    runs = {}
    for key, kwargs in {'random': dict(seed=0), 'const': dict(seed=0, noise_mode='const'),
                        'seed1': dict(seed=1)}.items():
        runs[key] = ts.compute_teacher_stats(G, emb, str(tmp_path / f'{key}.npz'), samples=6, batch=3,
                                             progress=False, **kwargs).get('a').mu1
    again = ts.compute_teacher_stats(G, emb, str(tmp_path / 'again.npz'), samples=6, batch=3, progress=False)
    assert np.array_equal(again.get('a').mu1, runs['random'])  # deterministic
    assert not np.allclose(runs['random'], runs['seed1'])
    if isinstance(G, StandInGenerator) or any(n.endswith('noise_strength') for n, _ in G.named_parameters()):
        assert not np.allclose(runs['random'], runs['const'])
    direct = _direct_stats(G, emb, samples=6, batch=3, seed=0, noise_mode='const')
    np.testing.assert_allclose(runs['const'], direct[0][0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('exc', [RuntimeError('simulated crash'), KeyboardInterrupt()])
def test_interrupted_and_resumed_equals_uninterrupted(G, tmp_path, exc):
    kwargs = dict(samples=11, batch=2, seed=3, bank_size=5, checkpoint_every=2, progress=False)
    full = tmp_path / 'full.npz'
    ts.compute_teacher_stats(G, [PooledConvEmbedder(4, 'a', seed=1)], str(full), **kwargs)

    out = tmp_path / 'resumed.npz'
    with pytest.raises(type(exc)):
        ts.compute_teacher_stats(G, [FailingEmbedder(3, exc, dim=4, name='a', seed=1)], str(out), **kwargs)
    assert not out.exists()
    partial = _read(ts.partial_path(str(out)))
    # A crash keeps the last checkpoint (after batch 2); Ctrl-C also keeps the batches finished since.
    assert int(partial['next_batch']) == (3 if isinstance(exc, KeyboardInterrupt) else 2)
    assert int(partial['count']) == 2 * int(partial['next_batch'])

    ts.compute_teacher_stats(G, [PooledConvEmbedder(4, 'a', seed=1)], str(out), **kwargs)
    assert not os.path.exists(ts.partial_path(str(out)))
    a, b = _read(full), _read(out)
    for key in ('mu1.0', 'mu2.0', 'sum.0', 'sumsq.0', 'bank.0', 'count', 'batch_seeds'):
        assert np.array_equal(a[key], b[key]), key


def test_time_sliced_run_with_max_batches(G, tmp_path):
    kwargs = dict(samples=9, batch=2, seed=5, checkpoint_every=100, progress=False)
    emb = [PooledConvEmbedder(3, 'a', seed=4)]
    full = ts.compute_teacher_stats(G, emb, str(tmp_path / 'full.npz'), **kwargs)
    out = str(tmp_path / 'sliced.npz')
    slices = 0
    while ts.compute_teacher_stats(G, emb, out, max_batches=2, **kwargs) is None:
        slices += 1
        assert int(_read(ts.partial_path(out))['next_batch']) == 2 * slices
    assert slices == 2
    assert np.array_equal(ts.load_teacher_stats(out).get('a').mu2, full.get('a').mu2)


def test_resume_refuses_different_options(G, tmp_path):
    out = str(tmp_path / 's.npz')
    emb = [PooledConvEmbedder(3, 'a', seed=4)]
    assert ts.compute_teacher_stats(G, emb, out, samples=8, batch=2, max_batches=1, progress=False) is None
    with pytest.raises(GanPruneError, match='seed'):
        ts.compute_teacher_stats(G, emb, out, samples=8, batch=2, seed=9, progress=False)
    with pytest.raises(GanPruneError, match='samples'):
        ts.compute_teacher_stats(G, emb, out, samples=10, batch=2, progress=False)


def test_argument_and_file_errors(G, tmp_path):
    emb = [PooledConvEmbedder(3, 'a')]
    with pytest.raises(GanPruneError):
        ts.compute_teacher_stats(G, emb, str(tmp_path / 'x.npz'), samples=0, progress=False)
    with pytest.raises(GanPruneError):
        ts.compute_teacher_stats(G, emb, str(tmp_path / 'x.npz'), samples=2, noise_mode='weird', progress=False)
    with pytest.raises(GanPruneError):
        ts.compute_teacher_stats(G, [], str(tmp_path / 'x.npz'), samples=2, progress=False)
    with pytest.raises(GanPruneError, match='not found'):
        ts.load_teacher_stats(str(tmp_path / 'missing.npz'))
    other = tmp_path / 'other.npz'
    np.savez(other, mu=np.zeros(3))
    with pytest.raises(GanPruneError, match='not a teacher-stats file'):
        ts.load_teacher_stats(str(other))
    assert ts.resolve_device('cpu').type == 'cpu'
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning):
            assert ts.resolve_device('cuda').type == 'cpu'
        assert ts.resolve_device('auto').type == 'cpu'


def test_batch_seeds_are_distinct():
    seeds = {ts.batch_seed(s, b) for s in range(5) for b in range(5)}
    assert len(seeds) == 25
    assert ts.batch_sizes(10, 4) == [4, 4, 2]


# ------------------------------------------------------------------------------------------------ CLI

def _teacher_source(monkeypatch, G):
    """builtin:tiny32 through the real pickle loader when it is available, else the module's small G."""
    try:
        from gan_prune.io.pickles import load_builtin
        load_builtin('tiny32')
        return 'builtin:tiny32'
    except ImportError:
        monkeypatch.setattr(ts, 'load_teacher_generator', lambda src, trust=False: G)
        return 'test-generator'


def test_cli_teacher_stats(tmp_path, monkeypatch, G):
    from gan_prune.cli import main
    from gan_prune.cli.teacher_stats import command
    src = _teacher_source(monkeypatch, G)
    out = tmp_path / 'stats.npz'
    result = CliRunner().invoke(command, ['--pkl', src, '--embed', 'effnet-lite0=20', '--samples', '3', '--batch',
                                          '2', '--seed', '1', '--bank-size', '2', '--device', 'cpu', '--out',
                                          str(out)])
    assert result.exit_code == 0, result.output
    assert 'effnet-lite0: 1280-d, 3 samples, bank 2' in result.output
    stats = ts.load_teacher_stats(str(out))
    entry = stats.get('effnet-lite0')
    assert entry.count == 3 and entry.mu1.shape == (1280,) and entry.bank.shape == (2, 1280)
    assert np.all(entry.mu2 >= np.square(entry.mu1) - 1e-6)  # E[x^2] >= E[x]^2
    assert stats.meta['source'] == src and stats.meta['spec'] == 'effnet-lite0=20'

    help_text = ''.join(CliRunner().invoke(command, ['--help']).output.split())  # ignore line wrapping
    assert '--embed-weights' in help_text and '[default:effnet-lite0]' in help_text

    # Errors the user can fix are one line and a non-zero exit.
    with pytest.raises(SystemExit) as exit_info:
        main(['teacher-stats', '--pkl', src, '--embed', 'no-such-embedder', '--out', str(tmp_path / 'x.npz')])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:
        main(['teacher-stats', '--pkl', src, '--out', str(tmp_path / 'x.txt')])
    assert exit_info.value.code == 1


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_cli_torchscript_embedder_needs_trust_pickle(tmp_path, monkeypatch, G, save_tiny_embedder, capsys):
    from gan_prune.cli import main
    src = _teacher_source(monkeypatch, G)
    embed = save_tiny_embedder(tmp_path / 'tiny.pt')
    args = ['teacher-stats', '--pkl', src, '--embed', f'torchscript:{embed}', '--samples', '2', '--batch', '2',
            '--device', 'cpu', '--out', str(tmp_path / 'stats.npz')]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert '--trust-pickle' in err and 'TorchScript' in err and '\n' not in err
    assert not (tmp_path / 'stats.npz').exists()
    main(args + ['--trust-pickle'])
    assert ts.load_teacher_stats(str(tmp_path / 'stats.npz')).get(f'torchscript:{embed}').dim == 6
