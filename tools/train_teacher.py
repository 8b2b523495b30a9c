"""Train the bundled teacher: a small StyleGAN2-ADA generator on the procedural cartoon faces, on the CPU.

    python tools/make_dataset.py --out data/faces32.zip --num 20000 --seed 0
    python tools/train_teacher.py --data data/faces32.zip --outdir runs/teacher --kimg 300 \
        --out gan_prune/assets/teacher.pkl

Training is the distillation loop with nothing to distil: a freshly initialised generator is both "teacher"
and "student", --kd none, no D^T game, D^S starts from the fresh D. That is plain StyleGAN2 training
(non-saturating loss, lazy R1, EMA; no path length, no ADA: the data are plentiful). The run directory is a
normal distill run (log.txt, stats.jsonl, fakes*.png, snapshots; interrupt and rerun with --resume RUN_DIR).
`--out` receives the final G_ema and D as a compact snapshot (G and G_ema are one object, pickled once).
"""
from __future__ import annotations

import copy
import os
import time

import click
import torch

from gan_prune.io.builtin import easydicts
from gan_prune.demo.pipeline import export_generator
from gan_prune.errors import GanPruneError
from gan_prune.io.pickles import save_network_pkl

# The bundled teacher: 32 px, 64 channels at every resolution, 128-d latents, 2 mapping layers, fp32.
TEACHER_G = dict(z_dim=128, w_dim=128, c_dim=0, img_resolution=32, img_channels=3,
                 mapping_kwargs=dict(num_layers=2),
                 synthesis_kwargs=dict(channel_base=2048, channel_max=64, num_fp16_res=0, conv_clamp=None))
TEACHER_D = dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=2048, channel_max=64,
                 epilogue_kwargs=dict(mbstd_group_size=4))


def initial_networks(seed: int) -> dict:
    """Freshly initialised G, G_ema and D of the teacher architecture (a snapshot dict)."""
    from training import networks
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = networks.Generator(**easydicts(TEACHER_G)).eval().requires_grad_(False)
        D = networks.Discriminator(**easydicts(TEACHER_D)).eval().requires_grad_(False)
    return dict(G=G, G_ema=copy.deepcopy(G), D=D, training_set_kwargs=None, augment_pipe=None)


@click.command()
@click.option('--data', metavar='ZIP', help='Training images (tools/make_dataset.py output).')
@click.option('--outdir', default='runs/teacher', show_default=True, metavar='DIR', help='Parent of the run directory.')
@click.option('--out', default=None, metavar='PKL', help='Also export the final G_ema and D to this compact pickle.')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=300, show_default=True,
              help='Training length in thousands of real images.')
@click.option('--batch', type=click.IntRange(min=1), default=32, show_default=True, help='Batch size.')
@click.option('--lr', type=float, default=0.0025, show_default=True, help='Adam learning rate of G and D.')
@click.option('--gamma', type=float, default=0.01, show_default=True,
              help='R1 weight (StyleGAN2-ADA uses 0.01 for 32 px CIFAR-10).')
@click.option('--ema-kimg', type=float, default=10.0, show_default=True, help='EMA half-life of G_ema in kimg.')
@click.option('--tick', type=float, default=4.0, show_default=True, help='kimg between progress lines.')
@click.option('--snap', type=int, default=5, show_default=True, help='Ticks between snapshots.')
@click.option('--seed', type=int, default=0, show_default=True, help='Initialisation and training seed.')
@click.option('--workers', type=int, default=1, show_default=True, help='Data loader processes.')
@click.option('--resume', default=None, metavar='RUN_DIR', help='Continue an interrupted run directory.')
@click.option('--export-snapshot', default=None, metavar='PKL',
              help='Do not train: export this snapshot of a run to --out (e.g. the one before an interruption).')
def main(data, outdir, out, kimg, batch, lr, gamma, ema_kimg, tick, snap, seed, workers, resume, export_snapshot):
    """Train the bundled 32 px teacher with gan-prune's own training loop on the CPU."""
    from gan_prune.distill.loop import distill
    from gan_prune.distill import rundir as rd
    t0 = time.time()
    if export_snapshot:
        if not out:
            raise click.UsageError('--export-snapshot needs --out PKL')
        try:
            export_generator(export_snapshot, out)
        except GanPruneError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f'teacher written to {out} ({os.path.getsize(out) / 2**20:.2f} MiB)')
        return
    if not data and not resume:
        raise click.UsageError('give --data ZIP (or --resume RUN_DIR)')
    try:
        if resume:
            init_pkl = os.path.join(resume, 'initial.pkl')
            run_dir = distill(resume=resume, kimg=kimg, tick=tick, snap=snap, workers=workers)
        else:
            os.makedirs(outdir, exist_ok=True)
            init_pkl = os.path.join(outdir, f'initial-seed{seed}.pkl')
            save_network_pkl(initial_networks(seed), init_pkl)
            run_dir = distill(teacher=init_pkl, student=init_pkl, data=data, outdir=outdir, desc='teacher-faces32',
                              kd='none', teacher_d=False, ds_init='teacher', kimg=kimg, batch=batch, lr=lr,
                              gamma=gamma, pl_weight=0.0, style_mixing=0.9, ema_kimg=ema_kimg, ema_rampup=0.05,
                              tick=tick, snap=snap, seed=seed, workers=workers, dime='', metrics='none')
        snaps = rd.list_snapshots(run_dir)
        if out and snaps:
            export_generator(snaps[-1], out)
            click.echo(f'teacher written to {out} ({os.path.getsize(out) / 2**20:.2f} MiB)')
    except GanPruneError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f'done in {(time.time() - t0) / 60:.1f} min; run directory {run_dir}')


if __name__ == '__main__':
    main()
