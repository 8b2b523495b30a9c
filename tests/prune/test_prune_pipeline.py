"""prune(): teacher pickle in, slim student snapshot out; the CLI around it."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gan_prune import load_network_pkl, save_network_pkl
from gan_prune.errors import GanPruneError
from gan_prune.prune.pipeline import prune, source_checksum
from gan_prune.prune.surgery import feature_maps

FAST = dict(samples=4, batch=4, seed=0, device='cpu', log=None)


def small_snapshot(path, planted=False, c_dim=0):
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
        if planted:
            G.synthesis.b16.conv1.bias[6] = 30.0  # b16.out channel 6 dominates the last toRGB input
    G.requires_grad_(False)
    G_train = networks.Generator(**G.init_kwargs).eval().requires_grad_(False)
    G_train.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in G.state_dict().items()})
    save_network_pkl(dict(G=G_train, G_ema=G, D=D.eval().requires_grad_(False),
                          training_set_kwargs=dict(path='data.zip'), augment_pipe=None, notes='kept'), path)
    return G


def images(G, seeds=(0, 1)):
    z = torch.from_numpy(np.random.RandomState(list(seeds)).randn(len(seeds), G.z_dim))
    with torch.no_grad():
        return G(z, torch.zeros([len(seeds), G.c_dim]), noise_mode='const')


def test_ratio_zero_reproduces_teacher_images_exactly(tmp_path):
    src, out = tmp_path / 'teacher.pkl', tmp_path / 'student.pkl'
    small_snapshot(src)
    prune(str(src), str(out), ratio=0.0, criterion='content-aware', mask='none', **FAST)
    t, s = load_network_pkl(str(src)), load_network_pkl(str(out))
    assert type(s['G_ema']).__name__ == 'SlimGenerator'
    assert torch.equal(images(s['G_ema']), images(t['G_ema']))
    assert torch.equal(images(s['G']), images(t['G']))


def test_output_snapshot_contents(tmp_path):
    src, out = tmp_path / 'teacher.pkl', tmp_path / 'student.pkl'
    G = small_snapshot(src)
    result = prune(str(src), str(out), rate=0.8, criterion='weight-l1', **FAST)
    data = load_network_pkl(str(out))
    assert {'G', 'G_ema', 'D', 'training_set_kwargs', 'augment_pipe', 'pruning'} <= set(data)
    assert data['notes'] == 'kept' and data['training_set_kwargs'] == dict(path='data.zip')
    assert type(data['D']).__name__ == 'Discriminator'
    pr = data['pruning']
    assert pr['criterion'] == 'weight-l1' and pr['rate_convention'] == 'conv'
    assert abs(pr['rate'] - 0.8) < 0.05 and pr['target_rate'] == 0.8 and 0 < pr['ratio'] < 1
    assert pr['source_sha256'] == source_checksum(str(src)) and len(pr['source_sha256']) == 64
    assert pr['channels'] == feature_maps(data['G_ema']) == feature_maps(data['G'])
    for name, idx in pr['kept'].items():
        assert idx == sorted(idx) and len(idx) == pr['channels'][name]
        assert len(pr['scores'][name]) == feature_maps(G)[name]
        # kept = the highest scores
        scores = np.array(pr['scores'][name])
        assert scores[idx].min() >= np.delete(scores, idx).max(initial=-np.inf)
    assert abs(pr['rate'] - result.plan.rate) < 1e-12
    assert '%' in result.report and 'total' in result.report
    # G and G_ema are cut with the same indices: the training G stays 0.01 away from G_ema everywhere.
    diff = data['G'].synthesis.b16.conv1.weight - data['G_ema'].synthesis.b16.conv1.weight
    assert torch.allclose(diff, torch.full_like(diff, 0.01), atol=1e-6)


def test_planted_channel_is_kept(tmp_path):
    src, out = tmp_path / 'teacher.pkl', tmp_path / 'student.pkl'
    small_snapshot(src, planted=True)
    prune(str(src), str(out), ratio=0.9, criterion='content-aware', mask='none', **FAST)
    kept = load_network_pkl(str(out))['pruning']['kept']
    assert kept['b16.out'] == [6]  # b16 has 8 channels; ratio 0.9 keeps 8 - int(7.2) = 1


def test_deterministic_for_a_seed(tmp_path):
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    a = prune(str(src), None, ratio=0.5, mask='none', **FAST).data['pruning']
    b = prune(str(src), None, ratio=0.5, mask='none', **FAST).data['pruning']
    assert a['kept'] == b['kept'] and a['scores'] == b['scores']


def test_impossible_requests_fail_before_scoring(tmp_path):
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    with pytest.raises(GanPruneError, match='outside'):
        prune(str(src), None, rate=1.0, mask='none', **FAST)
    with pytest.raises(GanPruneError, match='0 channels'):
        prune(str(src), None, rate=0.9999, mask='none', **FAST)
    with pytest.raises(GanPruneError, match="unknown criterion 'best'"):
        prune(str(src), None, ratio=0.5, criterion='best', **FAST)
    with pytest.raises(GanPruneError, match='--parser-weights'):
        prune(str(src), None, ratio=0.5, mask='face-parser', **FAST)


def test_cli_prune_and_errors(tmp_path):
    from gan_prune.cli import cli
    src, out = tmp_path / 'teacher.pkl', tmp_path / 'student.pkl'
    small_snapshot(src)
    runner = CliRunner()
    res = runner.invoke(cli, ['prune', '--pkl', str(src), '--out', str(out), '--ratio', '0.5', '--samples', '4',
                              '--batch', '4', '--device', 'cpu', '--criterion', 'l1-out'])
    assert res.exit_code == 0, res.output
    assert 'compression rate' in res.output and "'conv'" in res.output and os.path.isfile(out)
    assert load_network_pkl(str(out))['pruning']['ratio'] == 0.5
    help_text = runner.invoke(cli, ['prune', '--help']).output
    for option in ('--rate', '--ratio', '--channels', '--rate-convention', '--criterion', '--mask',
                   '--parser-weights', '--samples', '--batch', '--seed', '--torgb-gain', '--directions',
                   '--pca-samples'):
        assert option in help_text
    flat = ' '.join(help_text.split())
    assert 'content-aware 400' in flat and 'diversity 5000' in flat and '[default: pruned]' in flat
    for name in ('content-aware', 'gradient-unmasked', 'l1-out', 'weight-l1', 'random', 'diversity'):
        assert name in flat  # choices come from the registry
    # User errors: one line on stderr, non-zero exit (through the real entry point).
    proc = subprocess.run([sys.executable, '-m', 'gan_prune', 'prune', '--pkl', str(src), '--out', str(out),
                           '--rate', '1.5'], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().count('\n') == 0 and 'between 0 and 1' in proc.stderr
    proc = subprocess.run([sys.executable, '-m', 'gan_prune', 'prune', '--pkl', str(src), '--out', str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and '--rate' in proc.stderr and proc.stderr.strip().count('\n') == 0


def test_block_override_and_total_convention(tmp_path):
    src, out = tmp_path / 'teacher.pkl', tmp_path / 'student.pkl'
    small_snapshot(src)
    prune(str(src), str(out), ratio=0.5, channels={16: 3}, criterion='random', rate_convention='total', **FAST)
    pr = load_network_pkl(str(out))['pruning']
    assert pr['block_overrides'] == {16: 3} and pr['rate_convention'] == 'total'
    assert pr['channels']['b16.mid'] == pr['channels']['b16.out'] == 3
    assert pr['channels']['b8.out'] == 8 and pr['samples'] == 0  # 16 channels at ratio 0.5; random renders nothing


def test_content_aware_without_a_mask_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv('GAN_PRUNE_WEIGHTS', str(tmp_path / 'empty'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    with pytest.raises(GanPruneError) as err:
        prune(str(src), None, ratio=0.5, criterion='content-aware', **FAST)
    text = str(err.value)
    assert '--criterion content-aware needs a content mask' in text and '\n' not in text
    assert '79999_iter.pth' in text and 'face-parsing.PyTorch' in text and '--mask none' in text
    env = dict(os.environ, GAN_PRUNE_WEIGHTS=str(tmp_path / 'empty'), HOME=str(tmp_path / 'home'))
    proc = subprocess.run([sys.executable, '-m', 'gan_prune', 'prune', '--pkl', str(src), '--out',
                           str(tmp_path / 's.pkl'), '--ratio', '0.5', '--device', 'cpu'],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode != 0 and proc.stderr.strip().count('\n') == 0
    assert '79999_iter.pth' in proc.stderr and not os.path.exists(tmp_path / 's.pkl')


def test_mask_none_says_it_scores_unmasked(tmp_path):
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    lines = []
    result = prune(str(src), None, ratio=0.5, criterion='content-aware', mask='none', **dict(FAST, log=lines.append))
    assert any('mask: none' in line and 'every pixel' in line for line in lines)
    assert result.data['pruning']['importance']['mask'] == 'none'


def test_criteria_take_their_own_defaults_and_options(tmp_path):
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    quick = dict(seed=0, device='cpu', log=None)
    l1 = prune(str(src), None, ratio=0.5, criterion='l1-out', samples=3, **quick).data['pruning']
    assert l1['criterion'] == 'l1-out' and l1['samples'] == 3 and l1['batch'] == 8
    div = prune(str(src), None, ratio=0.5, criterion='diversity', samples=2, directions=2, pca_samples=50,
                **quick).data['pruning']
    assert div['batch'] == 5 and div['importance'] == dict(criterion='diversity', directions=2, strength=5.0,
                                                             pca_samples=50)
    rnd = prune(str(src), None, ratio=0.5, criterion='random', **quick).data['pruning']
    assert rnd['samples'] == 0


@pytest.mark.parametrize('gain', ['teacher', 'pruned'])
def test_torgb_gain_is_applied_and_recorded(tmp_path, gain):
    src = tmp_path / 'teacher.pkl'
    teacher = small_snapshot(src)
    result = prune(str(src), None, ratio=0.75, criterion='weight-l1', torgb_gain=gain, **FAST)
    student = result.data['G_ema']
    assert result.data['pruning']['torgb_gain'] == gain and gain in result.report
    t_rgb, s_rgb = teacher.synthesis.b16.torgb, student.synthesis.b16.torgb
    fan_in = {'teacher': t_rgb.weight.shape[1], 'pruned': s_rgb.weight.shape[1]}[gain]
    assert s_rgb.weight.shape[1] == t_rgb.weight.shape[1] // 4
    assert s_rgb.weight_gain == pytest.approx(1 / np.sqrt(fan_in))
    # Same kept weights, only the gain differs: the toRGB contribution scales by sqrt(teacher/student fan-in).
    if gain == 'pruned':
        other = prune(str(src), None, ratio=0.75, criterion='weight-l1', torgb_gain='teacher', **FAST).data['G_ema']
        assert s_rgb.weight_gain / other.synthesis.b16.torgb.weight_gain == pytest.approx(2.0)
        assert not torch.allclose(images(student), images(other))


def test_unknown_torgb_gain_is_an_error(tmp_path):
    src = tmp_path / 'teacher.pkl'
    small_snapshot(src)
    with pytest.raises(GanPruneError, match='--torgb-gain'):
        prune(str(src), None, ratio=0.5, criterion='random', torgb_gain='student', **FAST)
