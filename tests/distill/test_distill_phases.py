"""The trainer's step as a list of phases: same order of operations and random draws as the step it replaced.

`reference_step` below is the training step as it was written before the phases became data (one function
with the G^S, D^S and D^T steps spelled out); it drives a trainer through its public attributes. The same
seed trained with `Trainer.train_step` and with `reference_step` must agree bit for bit: weights, optimiser
states, the path-length mean, every recorded statistic and the random number generators afterwards.
"""
import numpy as np
import pytest
import torch

from gan_prune.distill import loop
from gan_prune.distill import rundir as rd
from gan_prune.distill.trainer import ema_beta, sanitize_grads, update_ema

from test_distill_loop import base_options, files  # noqa: F401  (the tiny networks and dataset)


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
    records.setdefault('Progress/nonfinite_grads', []).append(sanitize_grads(params).detach().float().flatten())
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
    update_ema(trainer.G_ema, trainer.G_s, ema_beta(trainer.batch, trainer.cur_nimg, trainer.opts['ema_kimg'],
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
