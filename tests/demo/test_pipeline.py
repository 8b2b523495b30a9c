"""`gan-prune demo` end to end on the bundled teacher, at a size that runs in about a minute."""
import copy
import json
import os

import PIL.Image
import pytest
import torch

import gan_prune
from gan_prune.cli import main
from gan_prune.defaults import DEMO
from gan_prune.demo import pipeline
from gan_prune.io.builtin import shipped_path
from gan_prune.errors import GanPruneError
from gan_prune.generator.cost import generator_cost

TINY = dict(data_images=32, prune_samples=8, kimg=0.032, batch=16, dime_stats_samples=32, metrics_num_gen=8,
            seeds='0-2', device='cpu')


def test_bundled_teacher_loads_safely_and_renders():
    data = gan_prune.load_network_pkl('builtin:teacher')
    G = data['G_ema']
    assert G.img_resolution == 32 and G.c_dim == 0
    assert data['G'] is not G  # stored once in the file, but G may be trained in place by callers
    assert os.path.getsize(shipped_path('teacher')) < 5 * 2**20
    with torch.no_grad():
        img = G(torch.randn([2, G.z_dim]), torch.zeros([2, 0]), noise_mode='const', force_fp32=True)
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp('demo')
    os.environ['GAN_PRUNE_CACHE_DIR'] = str(outdir / 'cache')
    try:
        results = pipeline.run_demo(log=lambda *_: None, outdir=str(outdir / 'out'), **TINY)
    finally:
        del os.environ['GAN_PRUNE_CACHE_DIR']
    return outdir / 'out', results


def test_demo_writes_every_artefact(demo_run):
    out, results = demo_run
    for name in ('pruned.pkl', 'student.pkl', 'comparison.png', 'results.md', 'results.json', 'results.png'):
        assert (out / name).is_file(), name
    assert json.loads((out / 'results.json').read_text())['models'] == json.loads(json.dumps(results['models']))
    assert [r['model'] for r in results['models']] == ['teacher', 'pruned', 'student']
    for row in results['models']:
        assert set(row['vs_data']) == {'fid_effnet-lite0', 'kid_effnet-lite0'} and row['latency_ms'] > 0
        assert set(row['vs_teacher']) == (set() if row['model'] == 'teacher' else set(row['vs_data']))
        assert (row['same_z_l1'] is None) == (row['model'] == 'teacher')
    assert results['models'][1]['same_z_l1'] > 0
    md = (out / 'results.md').read_text()
    assert '| NICKEL & DiME student |' in md and 'FD (effnet-lite0) vs data' in md and 'same z' in md
    # Three rows (teacher, pruned, student) of 3 seeds, each image enlarged 4x, after a label column.
    width, height = PIL.Image.open(out / 'comparison.png').size
    assert height == 3 * 32 * pipeline.TILE_SCALE and width > 3 * 32 * pipeline.TILE_SCALE
    assert PIL.Image.open(out / 'results.png').size[0] > 500


def test_demo_student_is_a_compact_pruned_snapshot(demo_run):
    out, results = demo_run
    student = gan_prune.load_network_pkl(str(out / 'student.pkl'))
    pruned = gan_prune.load_network_pkl(str(out / 'pruned.pkl'))
    teacher = gan_prune.load_network_pkl('builtin:teacher')
    assert student['G'] is student['G_ema']  # stored once
    assert student['pruning']['rate'] == pytest.approx(pruned['pruning']['rate'])
    rate = 1 - generator_cost(student['G_ema']).total_macs / generator_cost(teacher['G_ema']).total_macs
    assert rate == pytest.approx(student['pruning']['rate']) == results['rate']  # the records say what was built
    assert f'FLOPs rate of {rate:.2%} (asked for {DEMO["rate"]:.2%}' in (out / 'results.md').read_text()
    assert student['pruning']['target_rate'] == DEMO['rate'] and abs(rate - DEMO['rate']) < 0.01  # nearest config
    # Fine-tuning changed the student: its weights are no longer those of the pruned network.
    changed = [not torch.equal(a, b) for a, b in zip(student['G_ema'].parameters(), pruned['G_ema'].parameters())]
    assert any(changed)


def test_demo_reuses_its_data_and_rejects_bad_options(demo_run, tmp_path):
    out, _ = demo_run
    logged = []
    path = pipeline.write_demo_data(str(out / 'data'), TINY['data_images'], logged.append)
    assert logged == [f'reusing {path}']
    with pytest.raises(GanPruneError, match='--rate'):
        pipeline.run_demo(outdir=str(tmp_path), rate=1.5)
    with pytest.raises(GanPruneError, match='unknown demo option'):
        pipeline.run_demo(outdir=str(tmp_path), speed='fast')
    assert not os.listdir(tmp_path)  # nothing written for a bad request


def test_demo_cli_help_and_error(capsys, tmp_path):
    main(['demo', '--help'])
    flat = ' '.join(capsys.readouterr().out.split())
    assert '--outdir' in flat and '--kimg' in flat and 'default: demo-out' in flat
    with pytest.raises(SystemExit) as e:
        main(['demo', '--outdir', str(tmp_path / 'x'), '--rate', '2'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and '--rate' in err and '\n' not in err


def test_same_latent_distance_is_zero_for_the_teacher_only():
    from gan_prune.core.bench import render
    teacher = gan_prune.load_network_pkl('builtin:teacher')['G_ema']
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.synthesis.b32.torgb.bias.add_(0.1)  # every pixel moves by 0.1 in [-1, 1], i.e. 12.75 in 0-255
    teacher_images = render(teacher, 8, seed=0)
    assert pipeline.same_latent_distance(render(teacher, 8, seed=0), teacher_images) == 0
    assert pipeline.same_latent_distance(render(other, 8, seed=0), teacher_images) == pytest.approx(12.75, rel=0.05)
