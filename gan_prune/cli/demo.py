"""`gan-prune demo`: prune and distil the bundled teacher end to end, then show the result."""
from __future__ import annotations

import click

from gan_prune.cli import checks
from gan_prune.defaults import DEMO as D


@click.command('demo')
@click.option('--outdir', default=D['outdir'], show_default=True, metavar='DIR',
              help='Where everything goes: data/, pruned.pkl, runs/, student.pkl, comparison.png, results.*.')
@click.option('--rate', type=float, callback=checks.fraction, default=D['rate'], show_default=True,
              help='FLOPs compression rate of the student (0.8: about 5x fewer MACs; at 0.9, 10x, the short '
                   'fine-tuning no longer recovers each seed\'s face).')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=D['kimg'], show_default=True,
              help='Length of the NICKEL & DiME fine-tuning in thousands of images (longer: better student).')
@click.option('--batch', type=click.IntRange(min=2), default=D['batch'], show_default=True,
              help='Fine-tuning batch size.')
@click.option('--data-images', type=click.IntRange(min=16), default=D['data_images'], show_default=True,
              help='Procedural training images to write (deterministic; reused when present).')
@click.option('--metrics-num-gen', type=click.IntRange(min=2), default=D['metrics_num_gen'], show_default=True,
              help='Generated images per model for the metrics (below 1281 the effnet-lite0 FD is strongly biased).')
@click.option('--metrics-vs-teacher/--no-metrics-vs-teacher', default=D['metrics_vs_teacher'], show_default=True,
              help='Also measure how close each student is to the teacher\'s samples (embeds teacher images once).')
@click.option('--seeds', default=D['seeds'], callback=checks.seeds, show_default=True,
              help='Latent seeds of the side-by-side image (gan-prune generate conventions).')
@click.option('--seed', type=int, default=D['seed'], show_default=True, help='Seed of pruning and training.')
@click.option('--device', default=D['device'], callback=checks.device, show_default=True,
              help='cpu, cuda, or auto (cuda when available).')
def command(**options) -> None:
    """Prune the bundled 32 px teacher, fine-tune it briefly with NICKEL & DiME, export it, and compare.

    \b
    Writes <outdir>/comparison.png (teacher, pruned, distilled; same seeds), results.md (metrics, params,
    MACs, CPU latency), results.png (quality vs cost, training losses) and student.pkl (a normal
    StyleGAN2-ADA pickle). About 10 minutes on a 2-core laptop CPU with the defaults.
    """
    from gan_prune.demo.pipeline import run_demo
    run_demo(log=click.echo, **options)
