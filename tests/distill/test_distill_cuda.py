"""The distillation loop on CUDA: the same losses as the CPU run of the same seed, and resume on the GPU.

CPU and CUDA have separate random generators, so for the comparison every random draw (latents, noise inputs,
path-length noise, data order) is made on the CPU generator and then moved to the device; what remains to
differ is arithmetic: our fused ops and cuDNN against the CPU reference path.
"""
import functools
import os

import pytest
import torch

from gan_prune.distill import loop
from gan_prune.distill import rundir as rd

RES = 16
STEP_KIMG = 0.004  # one iteration at batch 4
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA device (tools/device_check.sh runs these)')
pytestmark = [pytest.mark.cuda, needs_cuda]
DEVICE = 'cuda'


def options(files, outdir, **overrides):
    opts = dict(teacher=str(files / 'teacher.pkl'), student=str(files / 'student.pkl'), data=str(files / 'data.zip'),
                outdir=str(outdir), batch=4, tick=STEP_KIMG, snap=2, kimg=3 * STEP_KIMG, workers=0, grid='2x2',
                device='cpu', dime=f'torchscript:{files / "embed.pt"}=5', dime_stats_samples=8,
                g_reg_interval=2, d_reg_interval=2, mirror=True, seed=0, trust=True)
    opts.update(overrides)
    return opts


def _on_cpu_generator(draw):
    @functools.wraps(draw)
    def wrapped(*args, device=None, **kwargs):
        return draw(*args, device='cpu', **kwargs).to(device if device is not None else 'cpu')
    return wrapped


def _like_on_cpu_generator(draw):
    @functools.wraps(draw)
    def wrapped(t, *args, **kwargs):
        return draw(t.cpu(), *args, **kwargs).to(t.device)
    return wrapped


@pytest.fixture
def draws_on_the_cpu(monkeypatch):
    for name in ('randn', 'rand', 'randint', 'randperm'):
        monkeypatch.setattr(torch, name, _on_cpu_generator(getattr(torch, name)))
    for name in ('randn_like', 'rand_like'):
        monkeypatch.setattr(torch, name, _like_on_cpu_generator(getattr(torch, name)))


def _losses_after_steps(files, tmp_path, device, steps):
    opts = loop.resolve_options(options(files, tmp_path, device=device))
    run_dir = rd.create_run_dir(tmp_path, f'steps-{device}')
    trainer = loop.Trainer(opts, run_dir, loop.Dist(0, 1, torch.device(device)), torch.device(device))
    trainer.setup()
    trainer.start_tick()
    for _ in range(steps):
        trainer.train_step()
    return {key: torch.cat(values).cpu().double() for key, values in trainer.tick_stats.items()}


def test_cuda_steps_match_the_cpu_run_of_the_same_seed(files, tmp_path, draws_on_the_cpu):
    cpu = _losses_after_steps(files, tmp_path, 'cpu', steps=3)
    cuda = _losses_after_steps(files, tmp_path, DEVICE, steps=3)
    assert set(cpu) == set(cuda) and 'Loss/G/dime' in cpu and 'Loss/DS/r1_penalty' in cpu
    for key in cpu:
        # The DiME embedders may run under fp16 autocast on CUDA, as the release runs them.
        tol = 2e-2 if 'dime' in key else 5e-3
        torch.testing.assert_close(cuda[key], cpu[key], rtol=tol, atol=tol / 10, msg=key)


def test_resume_on_cuda_continues_the_run(files, tmp_path):
    class Interrupt(Exception):
        pass

    opts = options(files, tmp_path, device=DEVICE, kimg=4 * STEP_KIMG, snap=2)
    straight = loop.distill(**opts)

    def interrupt(info):
        if info['cur_tick'] == 3:
            raise Interrupt()

    with pytest.raises(Interrupt):
        loop.distill(tick_callback=interrupt, **opts)
    interrupted = os.path.join(tmp_path, sorted(p for p in os.listdir(tmp_path)
                                                if p != os.path.basename(straight))[0])
    state = torch.load(os.path.join(interrupted, rd.RESUME_FILE), map_location='cpu', weights_only=True)
    assert state['cur_tick'] == 2
    assert all('cuda' in process['rng'] for process in state['processes'])  # the CUDA generator is saved
    loop.distill(resume=interrupted, device=DEVICE, trust=True)
    rows_a, rows_b = rd.read_stats(straight), rd.read_stats(interrupted)
    assert [r['Progress/tick']['mean'] for r in rows_b] == [1, 2, 3, 4]
    assert all('Resources/peak_gpu_mem_gb' in r for r in rows_b)
    for ra, rb in zip(rows_a, rows_b):
        # Same random draws and data; cuDNN's benchmark mode may pick other algorithms in the new process, so
        # the arithmetic agrees to float rounding rather than bit for bit.
        assert ra['Loss/G/main']['mean'] == pytest.approx(rb['Loss/G/main']['mean'], rel=1e-3, abs=1e-5)

