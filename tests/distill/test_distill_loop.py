"""The distillation loop: short CPU runs on tiny networks, exact resume, NaN guard, two gloo processes, CLI."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch

from gan_prune.distill import loop
from gan_prune.distill import rundir as rd
from gan_prune.errors import GanPruneError

RES = 16
STEP_KIMG = 0.004  # one iteration at batch 4


class _Interrupt(Exception):
    pass


def base_options(files, outdir, **overrides):
    opts = dict(teacher=str(files / 'teacher.pkl'), student=str(files / 'student.pkl'), data=str(files / 'data.zip'),
                outdir=str(outdir), batch=4, tick=STEP_KIMG, snap=2, kimg=3 * STEP_KIMG, workers=0, grid='2x2',
                device='cpu', dime=f'torchscript:{files / "embed.pt"}=5', dime_stats_samples=8,
                g_reg_interval=2, d_reg_interval=2, mirror=True, seed=0,
                trust=True)  # the DiME embedder is a TorchScript file the tests write themselves
    opts.update(overrides)
    return opts


def load_state(run_dir):
    return torch.load(os.path.join(run_dir, rd.RESUME_FILE), map_location='cpu', weights_only=True)


def assert_close_nested(a, b, path=''):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=path)
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_close_nested(a[k], b[k], f'{path}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_nested(x, y, f'{path}[{i}]')
    else:
        assert a == b, path


# ------------------------------------------------------------------------------------------------------------
# Small pieces

def test_lazy_adam_scaling_and_ema_half_life():
    p = [torch.nn.Parameter(torch.zeros(1))]
    group = loop.lazy_adam(p, 0.0025, 16).param_groups[0]
    c = 16 / 17
    assert group['lr'] == pytest.approx(0.0025 * c) and group['betas'] == pytest.approx((0.0, 0.99 ** c))
    assert loop.lazy_adam(p, 0.0025, None).param_groups[0]['betas'] == pytest.approx((0.0, 0.99))
    beta = loop.ema_beta(batch=64, cur_nimg=10 ** 6, ema_kimg=20, ema_rampup=None)
    assert beta ** (20000 / 64) == pytest.approx(0.5)
    assert loop.ema_beta(64, 1000, 20, 0.05) < beta  # ramp-up shortens the half-life early on
    G, G_ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = G.weight.detach() + 0.25 * (G_ema.weight.detach() - G.weight.detach())
    loop.update_ema(G_ema, G, 0.25)
    torch.testing.assert_close(G_ema.weight, expected)


def test_batch_layout():
    assert loop.batch_layout(64, None, 2) == (32, 1)
    assert loop.batch_layout(64, 8, 2) == (8, 4)
    for args in ((63, None, 2), (64, 12, 2)):
        with pytest.raises(GanPruneError):
            loop.batch_layout(*args)


def test_option_errors_are_one_line(files, tmp_path):
    good = base_options(files, tmp_path)
    bad_cases = [dict(good, data_free=True), dict(good, data=None), dict(good, kd='magic'), dict(good, bogus=1),
                 dict(good, teacher=None), dict(good, style_mixing=2.0), dict(good, resume=str(tmp_path / 'nothing'))]
    for opts in bad_cases:
        with pytest.raises(GanPruneError) as e:
            loop.resolve_options(opts)
        assert '\n' not in str(e.value)


def test_resume_options_come_from_the_run(files, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    rd.write_training_options(run, loop.resolve_options(base_options(files, tmp_path, kimg=1.0)))
    opts = loop.resolve_options({'resume': str(run), 'kimg': 2.0})
    assert opts['kimg'] == 2.0 and opts['batch'] == 4 and opts['resume'] == str(run)
    with pytest.raises(GanPruneError, match='cannot change'):
        loop.resolve_options({'resume': str(run), 'batch': 8})


# ------------------------------------------------------------------------------------------------------------
# Trust is never inherited from a run directory

def _crafted_run_dir(files, tmp_path, name, **overrides):
    """A run directory as someone could hand it over: training_options.json says trust=true and names files."""
    run = tmp_path / name
    run.mkdir()
    opts = loop.resolve_options(base_options(files, tmp_path, **overrides))
    opts['trust'] = True
    (run / rd.OPTIONS_FILE).write_text(json.dumps(opts))
    return str(run)


def test_resume_takes_trust_from_this_invocation_only(files, tmp_path):
    run = _crafted_run_dir(files, tmp_path, 'run')
    assert loop.resolve_options({'resume': run})['trust'] is False
    assert loop.resolve_options({'resume': run, 'trust': False})['trust'] is False
    assert loop.resolve_options({'resume': run, 'trust': True})['trust'] is True


def test_crafted_run_directory_cannot_run_code_on_resume(files, tmp_path, monkeypatch, capsys):
    from gan_prune.cli import main
    marker = tmp_path / 'ran.marker'
    mask = tmp_path / 'mask.pt'
    torch.save({'name': 'os.system', 'kwargs': {'command': f'touch {marker}'}, 'state_dict': {}}, mask)
    runs = [_crafted_run_dir(files, tmp_path, 'mask-run', kd='cagan', dime='', cagan_perceptual=0.0,
                             cagan_mask=str(mask)),
            _crafted_run_dir(files, tmp_path, 'embedder-run')]  # DiME with a TorchScript embedder
    jit_loads = []
    monkeypatch.setattr(torch.jit, 'load', lambda *a, **k: jit_loads.append(a) or pytest.fail('TorchScript loaded'))
    for run, named in zip(runs, ("'os.system'", 'TorchScript')):
        for flags in ([], ['--no-trust-pickle']):
            with pytest.raises(SystemExit) as e:
                main(['distill', '--resume', run, '--device', 'cpu'] + flags)
            assert e.value.code != 0
            err = capsys.readouterr().err.strip()
            assert err.startswith('error:') and named in err and '--trust-pickle' in err and '\n' not in err
    assert not marker.exists() and jit_loads == []


# ------------------------------------------------------------------------------------------------------------
# Routing at the loop level

def test_one_step_trains_student_and_discriminators_never_the_teacher(files, tmp_path):
    opts = loop.resolve_options(base_options(files, tmp_path))
    run_dir = rd.create_run_dir(tmp_path, 'step')
    trainer = loop.Trainer(opts, run_dir, loop.Dist(0, 1, torch.device('cpu')), torch.device('cpu'))
    trainer.setup()
    trainer.start_tick()
    nets = {'G_t': trainer.G_t, 'G_s': trainer.G_s, 'D_s': trainer.D_s, 'D_t': trainer.D_t,
            'nickel': trainer.loss.nickel}
    before = {k: copy.deepcopy(m.state_dict()) for k, m in nets.items()}
    trainer.train_step()
    trainer.train_step()

    def changed(key):
        return any(not torch.equal(v, before[key][n]) for n, v in nets[key].state_dict().items())

    assert not changed('G_t')
    assert changed('G_s') and changed('D_s') and changed('D_t')
    assert trainer.cur_nimg == 8 and trainer.batch_idx == 2
    assert all(not p.requires_grad for m in nets.values() for p in m.parameters())  # phases restore the flags
    assert {'Loss/G/dime', 'Loss/DS/nickel', 'Loss/G/pl_penalty', 'Loss/DS/r1_penalty',
            'Loss/DT/r1_penalty'} <= set(trainer.tick_stats)


def test_sanitize_grads_replaces_and_counts_like_stylegan2_ada():
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.tensor([float('nan'), 1.0, float('inf')])
    b.grad = torch.tensor([-float('inf'), 2.0, 3.0])
    assert int(loop.sanitize_grads([a, b, c])) == 3
    assert a.grad.tolist() == [0.0, 1.0, 1e5] and b.grad.tolist() == [-1e5, 2.0, 3.0] and c.grad is None


def test_one_nonfinite_loss_costs_one_step_not_the_run(files, tmp_path):
    opts = loop.resolve_options(base_options(files, tmp_path, dime=''))
    trainer = loop.Trainer(opts, rd.create_run_dir(tmp_path, 'overflow'), loop.Dist(0, 1, torch.device('cpu')),
                           torch.device('cpu'))
    trainer.setup()
    trainer.start_tick()
    generator_main = trainer.loss.generator_main
    calls = []

    def overflow_once(latents):  # as an fp16 overflow would: the loss and every gradient of G^S become NaN
        loss, stats = generator_main(latents)
        calls.append(1)
        return (loss * float('nan') if len(calls) == 1 else loss), stats
    trainer.loss.generator_main = overflow_once
    trainer.train_step()
    trainer.train_step()
    assert all(torch.isfinite(p).all() for p in trainer.G_s.parameters())
    stats = trainer.reduce_tick_stats()
    assert stats['Progress/nonfinite_grads']['num'] > 0 and stats['Progress/nonfinite_grads']['mean'] > 0
    assert stats['Progress/nonfinite_losses']['mean'] * stats['Progress/nonfinite_losses']['num'] == 1
    trainer.check_finite()  # does not raise: later losses were finite


# ------------------------------------------------------------------------------------------------------------
# Whole runs

@pytest.mark.slow
def test_short_run_writes_a_loadable_run_directory(files, tmp_path):
    import gan_prune
    infos = []
    run_dir = loop.distill(tick_callback=infos.append, **base_options(files, tmp_path))
    names = set(os.listdir(run_dir))
    assert {rd.OPTIONS_FILE, rd.LOG_FILE, rd.STATS_FILE, rd.RESUME_FILE, 'reals.png', 'teacher.png', 'fakes_init.png',
            'fakes000000.008.png', 'fakes000000.012.png', 'network-snapshot-000000.008.pkl',
            'network-snapshot-000000.012.pkl', loop.TEACHER_STATS_FILE} <= names  # ticks < 1 kimg: unique names
    assert not any(n.endswith('.tmp') for n in names)
    assert [i['cur_tick'] for i in infos] == [1, 2, 3] and infos[-1]['done'] and infos[1]['snapshot']

    rows = rd.read_stats(run_dir)
    assert [r['Progress/tick']['mean'] for r in rows] == [1, 2, 3]
    for key in ('Loss/G/main', 'Loss/G/dime', 'Loss/DS/nickel', 'Loss/DT/main', 'Timing/sec_per_kimg'):
        assert np.isfinite(rows[-1][key]['mean']), key
    log = open(os.path.join(run_dir, rd.LOG_FILE)).read()
    assert 'tick 3' in log and 'sec/kimg' in log and 'Snapshot' in log
    assert json.load(open(os.path.join(run_dir, rd.OPTIONS_FILE)))['kd'] == 'nickel-dime'

    data = gan_prune.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.012.pkl'))
    assert {'G', 'G_ema', 'D', 'D_teacher'} <= set(data)
    assert data['training_set_kwargs']['xflip'] is True
    G = data['G_ema']
    img = G(torch.randn([2, G.z_dim]), torch.zeros([2, 0]), noise_mode='const')
    assert img.shape == (2, 3, RES, RES) and torch.isfinite(img).all()
    teacher = gan_prune.load_network_pkl(str(files / 'teacher.pkl'))
    assert type(data['D']).__name__ == type(teacher['D']).__name__
    assert not torch.equal(data['D'].b4.out.weight, teacher['D'].b4.out.weight)  # random D^S, then trained

    # Warm start of a new run from that snapshot: its first grid is the snapshot's G_ema grid.
    snapshot = os.path.join(run_dir, 'network-snapshot-000000.012.pkl')
    warm_dir = loop.distill(**base_options(files, tmp_path, kimg=STEP_KIMG, resume=snapshot, dime=''))
    assert warm_dir != run_dir and 'Warm start' in open(os.path.join(warm_dir, rd.LOG_FILE)).read()
    first = np.asarray(PIL.Image.open(os.path.join(warm_dir, 'fakes_init.png')))
    np.testing.assert_array_equal(first, np.asarray(PIL.Image.open(os.path.join(run_dir, 'fakes000000.012.png'))))


def test_progress_bar_counts_to_the_step_that_ends_the_run(files, tmp_path, capsys):
    import re
    # 0.006 kimg at batch 4 ends after the second step, at 0.008 kimg: the bar's total says so from the start.
    loop.distill(**base_options(files, tmp_path, kimg=1.5 * STEP_KIMG, snap=100, metrics='none'))
    err = capsys.readouterr().err
    counts = [(float(n), float(total)) for n, total in re.findall(r'(\d+\.\d{3})/(\d+\.\d{3}) kimg', err)]
    assert counts and all(total == 2 * STEP_KIMG for _, total in counts)
    assert all(n <= total for n, total in counts) and counts[-1][0] == 2 * STEP_KIMG
    assert '<-' not in err  # no negative time left


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(files, tmp_path):
    from gan_prune.cli import main
    opts = base_options(files, tmp_path, kimg=4 * STEP_KIMG, snap=2)
    straight = loop.distill(**opts)

    def interrupt(info):
        if info['cur_tick'] == 3:  # the checkpoint is from tick 2: tick 3's work is lost, as in a crash
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        loop.distill(tick_callback=interrupt, **opts)
    interrupted = sorted(p for p in os.listdir(tmp_path) if p != os.path.basename(straight))[0]
    interrupted = os.path.join(tmp_path, interrupted)
    assert load_state(interrupted)['cur_tick'] == 2
    main(['distill', '--resume', interrupted, '--trust-pickle'])  # trust is never taken from the run directory

    a, b = load_state(straight), load_state(interrupted)
    assert a["cur_nimg"] == b["cur_nimg"] == 16 and a["batch_idx"] == b["batch_idx"] == 4
    for key in ('G', 'G_ema', 'D', 'D_teacher', 'kd_terms', 'path_length', 'opt_G', 'opt_D'):
        assert_close_nested(a[key], b[key], key)
    rows_a, rows_b = rd.read_stats(straight), rd.read_stats(interrupted)
    assert [r['Progress/tick']['mean'] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b):
        assert ra['Loss/G/main']['mean'] == pytest.approx(rb['Loss/G/main']['mean'], rel=1e-5, abs=1e-6)
    assert 'Resuming at kimg 0.008' in open(os.path.join(interrupted, rd.LOG_FILE)).read()


def test_nan_guard_stops_and_keeps_the_last_good_snapshot(files, tmp_path):
    import gan_prune

    def poison(info):
        if info['cur_tick'] == 1:
            with torch.no_grad():
                next(info['G'].parameters()).fill_(float('nan'))

    with pytest.raises(GanPruneError, match='diverged') as e:
        loop.distill(tick_callback=poison, **base_options(files, tmp_path, snap=1, dime=''))
    assert '\n' not in str(e.value) and 'network-snapshot-000000.004.pkl' in str(e.value)
    run_dir = [os.path.join(tmp_path, p) for p in os.listdir(tmp_path)][0]
    good = gan_prune.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.004.pkl'))
    assert all(torch.isfinite(p).all() for p in good['G'].parameters())
    assert load_state(run_dir)['cur_tick'] == 1
    log = open(os.path.join(run_dir, rd.LOG_FILE)).read()  # the failure's traceback is kept for later diagnosis
    assert 'process 0 failed' in log and 'Traceback' in log and 'GanPruneError: training diverged' in log


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['data-free-cagan', 'dataset-none'])
def test_baselines_and_data_free_run(files, tmp_path, variant):
    import gan_prune
    if variant == 'data-free-cagan':
        opts = base_options(files, tmp_path, data=None, data_free=True, kd='cagan', kimg=2 * STEP_KIMG, snap=1,
                            cagan_net=f'torchscript:{files / "embed.pt"}', cagan_mask='none')
    else:
        opts = base_options(files, tmp_path, kd='none', ds_init='teacher', teacher_d=False, kimg=2 * STEP_KIMG,
                            snap=1, style_mixing=0.0)
    run_dir = loop.distill(**opts)
    rows = rd.read_stats(run_dir)
    data = gan_prune.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.008.pkl'))
    if variant == 'data-free-cagan':
        # CAGAN's set-up: D^S only (no D^T game)
        assert 'Loss/G/kd_l1' in rows[-1] and 'Loss/G/kd_perceptual' in rows[-1] and 'Loss/DT/main' not in rows[-1]
        assert data['training_set_kwargs'] is None and 'reals.png' not in os.listdir(run_dir)
    else:
        assert 'Loss/DT/main' not in rows[-1] and 'Loss/G/dime' not in rows[-1] and 'Loss/DS/nickel' not in rows[-1]
        teacher = gan_prune.load_network_pkl(str(files / 'teacher.pkl'))
        torch.testing.assert_close(data['D_teacher'].b4.out.weight, teacher['D'].b4.out.weight)  # frozen D^T kept


@pytest.mark.slow
def _two_process_run(files, tmp_path, launcher):
    """Run two gloo processes (torchrun, or --gpus 2 spawned by distill itself); per-rank checksums and the run."""
    out = tmp_path / launcher
    out.mkdir()
    opts = base_options(files, out / 'runs', kimg=2 * STEP_KIMG, batch=8, snap=1)
    if launcher == 'spawn':
        opts['gpus'] = 2
    script = out / 'two_process_run.py'
    script.write_text(textwrap.dedent(f'''
        import json, os, sys
        from gan_prune.distill.loop import distill, module_checksum

        def report(info):
            if info['done']:
                sums = {{k: module_checksum(info[k]) for k in ('G', 'G_ema', 'D', 'D_teacher')}}
                with open(os.path.join({str(out)!r}, f"rank{{info['rank']}}.json"), 'w') as f:
                    json.dump(dict(sums, world=info['world']), f)

        if __name__ == '__main__':  # spawned processes import this file again
            distill(tick_callback=report, **json.loads({json.dumps(json.dumps(opts))}))
    '''))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, str(script)]
    if launcher == 'torchrun':
        cmd[1:1] = ['-m', 'torch.distributed.run', '--standalone', '--nnodes=1', '--nproc_per_node=2']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = [json.load(open(out / f'rank{r}.json')) for r in range(2)]
    run_dirs = os.listdir(out / 'runs')
    assert len(run_dirs) == 1  # one run directory, made by rank 0
    return sums, os.path.join(out, 'runs', run_dirs[0])


def test_two_gloo_processes_keep_identical_replicas(files, tmp_path):
    (r0, r1), run_dir = _two_process_run(files, tmp_path, 'torchrun')
    assert r0['world'] == r1['world'] == 2
    assert r0 == r1
    state = load_state(run_dir)
    assert state['world'] == 2 and len(state['processes']) == 2
    assert not torch.equal(state['processes'][0]['rng']['torch'], state['processes'][1]['rng']['torch'])
    # --gpus 2 (processes spawned by distill) is the same computation as torchrun with two processes.
    spawned, _ = _two_process_run(files, tmp_path, 'spawn')
    assert spawned == [r0, r1]


def test_cli_help_and_one_line_errors(capsys):
    from gan_prune.cli import main
    main(['distill', '--help'])
    out = capsys.readouterr().out
    for option in ('--outdir', '--data', '--kimg', '--batch', '--snap', '--seed', '--gpus', '--mirror', '--resume',
                   '--metrics', '--kd', '--ds-init', '--data-free', '--trust-pickle', '--no-trust-pickle'):
        assert option in out, option
    flat = ' '.join(out.split())
    assert 'default: 40000' in flat and 'default: nickel-dime' in flat and 'default: random' in flat
    with pytest.raises(SystemExit) as e:
        main(['distill', '--student', 's.pkl', '--data', 'd.zip'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and '--teacher' in err and '\n' not in err


def test_metrics_during_distill(files, tmp_path, monkeypatch):
    monkeypatch.setenv('GAN_PRUNE_CACHE_DIR', str(tmp_path / 'cache'))
    run_dir = loop.distill(**base_options(files, tmp_path / 'runs', kd='none', kimg=2 * STEP_KIMG, snap=1,
                                          metrics='fid,kid', metrics_num_gen=6))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, loop.METRICS_FILE))]
    assert [r['kimg'] for r in rows] == [STEP_KIMG, 2 * STEP_KIMG]
    for row in rows:
        assert set(row['results']) == {'fid_effnet-lite0', 'kid_effnet-lite0'}
        assert np.isfinite(row['results']['fid_effnet-lite0']) and row['results']['fid_effnet-lite0'] > 0
        assert os.path.exists(os.path.join(run_dir, row['snapshot_pkl']))
    with pytest.raises(GanPruneError, match='metrics-num-gen'):
        loop.distill(**base_options(files, tmp_path / 'runs', metrics_num_gen=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device: the GPU path (cudnn, NCCL-ready '
                                                          'device placement) of the loop')
def test_short_run_on_cuda(files, tmp_path):
    run_dir = loop.distill(**base_options(files, tmp_path / 'runs', device='cuda', kimg=2 * STEP_KIMG, snap=1))
    import gan_prune
    snap = gan_prune.load_network_pkl(rd.list_snapshots(run_dir)[-1])
    assert all(p.device.type == 'cpu' and torch.isfinite(p).all() for p in snap['G_ema'].parameters())
    state = load_state(run_dir)
    assert state['cur_nimg'] == 8

# ------------------------------------------------------------------------------------------------------------
# The step as a list of phases: same order of operations and random draws as the step it replaced.
# `reference_step` is the training step as it was written before the phases became data (one function with the
# G^S, D^S and D^T steps spelled out), driving a trainer through its public attributes. The same seed trained
# with Trainer.train_step and with reference_step must agree bit for bit: weights, optimiser states, the
# path-length mean, every recorded statistic and the random number generators afterwards.

def _reference_phase(trainer, records, modules, opt, compute, gain):
    for m in modules:
        m.requires_grad_(True)
    opt.zero_grad(set_to_none=True)
    for r in range(trainer.rounds):
        loss, stats = compute(r)
        for key, value in stats.items():
            records.setdefault(key, []).append(value.detach().float().flatten())
        finite = torch.isfinite(loss.detach())
        records.setdefault('Progress/nonfinite_losses', []).append((~finite).float().flatten())
        (loss * (gain / trainer.rounds)).backward()
    params = [p for m in modules for p in m.parameters()]
    trainer.dist.sync_grads(params)
    records.setdefault('Progress/nonfinite_grads', []).append(loop.sanitize_grads(params).detach().float().flatten())
    opt.step()
    for m in modules:
        m.requires_grad_(False)


def reference_step(trainer, records):
    loss, bg, source, device = trainer.loss, trainer.batch_gpu, trainer.source, trainer.device
    g_lat = [loss.sample_latents(bg, source.sample_labels(bg), device) for _ in range(trainer.rounds)]
    _reference_phase(trainer, records, [trainer.G_s], trainer.opt_G, lambda r: loss.generator_main(g_lat[r]), 1.0)
    if trainer.g_interval and trainer.batch_idx % trainer.g_interval == 0:
        reg_lat = [loss.sample_latents(bg, source.sample_labels(bg), device) for _ in range(trainer.rounds)]
        _reference_phase(trainer, records, [trainer.G_s], trainer.opt_G, lambda r: loss.generator_reg(reg_lat[r]),
                         float(trainer.g_interval))
    reals = [source.next() for _ in range(trainer.rounds)]
    d_lat = [loss.sample_latents(bg, source.sample_labels(bg), device) for _ in range(trainer.rounds)]
    fakes = [loss.fake_images(lat) for lat in d_lat]
    lazy_r1 = trainer.d_interval is not None
    do_r1 = lazy_r1 and trainer.batch_idx % trainer.d_interval == 0
    for which, D in loss.discriminators().items():
        mods = [D] + ([loss.nickel] if which == 'DS' and loss.nickel is not None else [])
        main = (lambda r, w=which: loss.discriminator_main(w, fakes[r], d_lat[r].c, reals[r][0], reals[r][1],
                                                           teacher_latents=d_lat[r],
                                                           with_r1=not lazy_r1 and loss.r1_gamma > 0))
        _reference_phase(trainer, records, mods, trainer.opt_D[which], main, 1.0)
        if do_r1:
            _reference_phase(trainer, records, [D], trainer.opt_D[which],
                             lambda r, w=which: loss.discriminator_reg(w, reals[r][0], reals[r][1]),
                             float(trainer.d_interval))
    trainer.dist.average_buffers(trainer.G_s)
    loop.update_ema(trainer.G_ema, trainer.G_s, loop.ema_beta(trainer.batch, trainer.cur_nimg, trainer.opts['ema_kimg'],
                                                    trainer.opts['ema_rampup']))
    trainer.cur_nimg += trainer.batch
    trainer.batch_idx += 1


def _trained(files, tmp_path, name, steps, step, **overrides):
    """Networks, optimiser states, statistics and RNG states after `steps` steps of a fresh trainer."""
    opts = loop.resolve_options(base_options(files, tmp_path, **overrides))
    device = torch.device('cpu')
    trainer = loop.Trainer(opts, rd.create_run_dir(tmp_path, name), loop.Dist(0, 1, device), device)
    trainer.setup()
    trainer.reset_tick_stats()
    records: dict = {}
    for _ in range(steps):
        step(trainer, records)
    trainer.source.close()
    modules = {'G': trainer.G_s, 'G_ema': trainer.G_ema, 'D': trainer.D_s, 'D_t': trainer.D_t,
               'path_length': trainer.loss.path_length, **trainer.loss.trainable_terms()}
    return dict(
        weights={k: m.state_dict() for k, m in modules.items() if m is not None},
        opt={'G': trainer.opt_G.state_dict(), **{k: o.state_dict() for k, o in trainer.opt_D.items()}},
        stats=records or trainer.tick_stats, counters=(trainer.cur_nimg, trainer.batch_idx),
        rng=(torch.get_rng_state(), np.random.get_state()[1].copy(), trainer.source.state_dict()))


def assert_identical(a, b, path=''):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_identical(a[k], b[k], f'{path}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f'{path}[{i}]')
    else:
        assert a == b, path


@pytest.mark.parametrize('variant', [
    dict(),  # the method: DiME + NICKEL, D^T on, path length and R1 every 2 steps (due at steps 0 and 2)
    dict(kd='none', teacher_d=False, g_reg_interval=None, d_reg_interval=None, style_mixing=0.0),  # R1 in main
], ids=['nickel-dime-lazy', 'none-r1-in-main'])
def test_phases_reproduce_the_reference_step_bit_for_bit(files, tmp_path, variant):
    steps = 3
    reference = _trained(files, tmp_path, 'reference', steps, reference_step, **variant)
    phased = _trained(files, tmp_path, 'phased', steps, lambda trainer, _: trainer.train_step(), **variant)
    assert reference['counters'] == phased['counters'] == (steps * 4, steps)
    assert any(k.endswith('r1_penalty') for k in reference['stats'])
    for key in ('weights', 'opt', 'stats', 'counters', 'rng'):
        assert_identical(reference[key], phased[key], key)


@pytest.mark.parametrize('overrides, expected', [
    (dict(), [('G', 1, 1.0), ('Greg', 2, 2.0), ('DS', 1, 1.0), ('DSreg', 2, 2.0), ('DT', 1, 1.0), ('DTreg', 2, 2.0)]),
    (dict(kd='none', teacher_d=False, g_reg_interval=None, d_reg_interval=4, pl_weight=0.0),
     [('G', 1, 1.0), ('DS', 1, 1.0), ('DSreg', 4, 4.0)]),
], ids=['method', 'no-teacher-d'])
def test_setup_builds_the_phases_of_the_options(files, tmp_path, overrides, expected):
    opts = loop.resolve_options(base_options(files, tmp_path, dime='', **overrides))
    device = torch.device('cpu')
    trainer = loop.Trainer(opts, rd.create_run_dir(tmp_path, 'phases'), loop.Dist(0, 1, device), device)
    trainer.setup()
    trainer.source.close()
    assert [(p.name, p.interval, p.gain) for p in trainer.phases] == expected
    assert [p.due(2) for p in trainer.phases] == [2 % interval == 0 for _, interval, _ in expected]
    by_name = {p.name: p for p in trainer.phases}
    assert by_name['G'].optimizer is trainer.opt_G and by_name['DS'].optimizer is trainer.opt_D['DS']
    assert by_name['DS'].modules[0] is trainer.D_s
    if 'DT' in by_name:  # NICKEL's projection learns with D^S, D^T alone in its phase
        assert by_name['DT'].modules == (trainer.D_t,)
        assert set(by_name['DS'].modules[1:]) == set(trainer.loss.trainable_terms().values())
