"""`gan-prune distill`: fine-tune a pruned student with NICKEL & DiME (or a baseline) in a StyleGAN2-ADA-style run."""
from __future__ import annotations

import click
from click.core import ParameterSource

from gan_prune.defaults import DISTILL as D

_NONE = 'none'


def _optional_int(value):
    return None if value in (None, '', _NONE, 'None') else int(value)


def _optional_float(value):
    return None if value in (None, '', _NONE, 'None') else float(value)


@click.command('distill')
@click.option('--teacher', metavar='PKL', default=D['teacher'],
              help='Teacher network pickle (its G_ema is G^T, its D is D^T): path, URL or builtin:NAME.')
@click.option('--student', metavar='PKL', default=D['student'],
              help='Pruned student pickle from gan-prune prune (its G_ema is the starting G^S).')
@click.option('--outdir', metavar='DIR', default=D['outdir'], show_default=True,
              help='Where run directories <id>-<desc> are created.')
@click.option('--data', metavar='PATH', default=D['data'],
              help='Training images: zip or folder in StyleGAN2-ADA format (optional dataset.json labels).')
@click.option('--data-free', is_flag=True, default=D['data_free'], show_default=True,
              help='No dataset: teacher samples stand in for the real images.')
@click.option('--kd', type=click.Choice(['nickel-dime', 'cagan', 'none']), default=D['kd'], show_default=True,
              help='Distillation: nickel-dime (the method); cagan (masked L1 + perceptual, baseline); '
                   'none (adversarial fine-tuning only, baseline).')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=D['kimg'], show_default=True,
              help='Training length in thousands of images shown to the discriminators.')
@click.option('--batch', type=click.IntRange(min=1), default=D['batch'], show_default=True,
              help='Total batch size over all processes.')
@click.option('--batch-gpu', metavar='INT', default=D['batch_gpu'], show_default=True, callback=lambda c, p, v: _optional_int(v),
              help='Images per process per round; smaller than batch/gpus accumulates gradients (less memory).')
@click.option('--tick', type=click.FloatRange(min=0, min_open=True), default=D['tick'], show_default=True,
              help='kimg between progress lines and stats.jsonl rows.')
@click.option('--snap', type=click.IntRange(min=1), default=D['snap'], show_default=True,
              help='Ticks between snapshots (network pickle, sample grid, resume checkpoint, metrics).')
@click.option('--seed', type=int, default=D['seed'], show_default=True,
              help='Random seed (latents, data order, D^S initialisation).')
@click.option('--gpus', type=click.IntRange(min=1), default=D['gpus'], show_default=True,
              help='Processes to spawn (one per GPU; gloo processes on CPU). Under torchrun, WORLD_SIZE decides.')
@click.option('--mirror', is_flag=True, default=D['mirror'], show_default=True,
              help='Add x-flipped copies of the dataset images.')
@click.option('--resume', metavar='RUN_DIR|PKL', default=D['resume'],
              help='A run directory: continue it exactly (other options come from its training_options.json; '
                   'only --kimg, --snap, --metrics, --lr, --gamma and similar may change; --teacher, --student and '
                   '--data may name a moved copy, and a file that differs from the one the run started with is '
                   'refused). One process at a time: a directory in use is refused. A snapshot .pkl: start a new '
                   'run from its G, G_ema, D and D_teacher.')
@click.option('--metrics', default=D['metrics'], show_default=True,
              help="Metrics at every snapshot, comma list (e.g. fid,kid) or 'none'; see gan-prune metrics.")
@click.option('--metrics-num-gen', type=click.IntRange(min=2), default=D['metrics_num_gen'], show_default=True,
              help='Generated images per snapshot metric (more: less noise, slower).')
@click.option('--metrics-detector', default=D['metrics_detector'], show_default=True,
              help="Feature network of the metrics: effnet-lite0 (bundled), inception or inception:FILE (TorchScript: "
                   "NVIDIA's published file is known by checksum, any other needs --trust-pickle).")
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), default=D['lr'], show_default=True,
              help='Adam learning rate of G^S, D^S and D^T (betas 0, 0.99; lazy-regularisation scaling applied).')
@click.option('--gamma', type=click.FloatRange(min=0), default=D['gamma'], show_default=True,
              help='R1 regularisation weight of both discriminators (1 for paper256, 10 for CAGAN).')
@click.option('--pl-weight', type=click.FloatRange(min=0), default=D['pl_weight'], show_default=True,
              help='Path-length regularisation weight (0 disables it).')
@click.option('--pl-batch-shrink', type=click.IntRange(min=1), default=D['pl_batch_shrink'], show_default=True,
              help='Path-length regularisation runs on batch / this.')
@click.option('--pl-decay', type=click.FloatRange(min=0, max=1), default=D['pl_decay'], show_default=True,
              help='Decay of the running mean path length.')
@click.option('--g-reg-interval', metavar='INT', default=D['g_reg_interval'], show_default=True,
              callback=lambda c, p, v: _optional_int(v),
              help="Path-length step every this many iterations ('none': every step, no lazy scaling).")
@click.option('--d-reg-interval', metavar='INT', default=D['d_reg_interval'], show_default=True,
              callback=lambda c, p, v: _optional_int(v),
              help="R1 step every this many iterations ('none': every step, no lazy scaling).")
@click.option('--style-mixing', type=click.FloatRange(min=0, max=1), default=D['style_mixing'], show_default=True,
              help='Probability of style mixing (student and teacher share the second latent and crossover).')
@click.option('--ema-kimg', type=click.FloatRange(min=0, min_open=True), default=D['ema_kimg'], show_default=True,
              help='Half-life of the G_ema average in kimg.')
@click.option('--ema-rampup', metavar='FLOAT', default=D['ema_rampup'], show_default=True,
              callback=lambda c, p, v: _optional_float(v),
              help="Limit the EMA half-life to this fraction of the images seen so far ('none': off).")
@click.option('--ds-init', type=click.Choice(['random', 'teacher']), default=D['ds_init'], show_default=True,
              help='D^S start: random full-size D (the released method) or a copy of D^T.')
@click.option('--teacher-d/--no-teacher-d', default=D['teacher_d'], show_default=True,
              help='G^S also plays against D^T, which keeps training (the method); off: D^S only (as CAGAN).')
@click.option('--dime', metavar='SPEC', default=D['dime'], show_default=True,
              help='DiME terms EMBEDDER=WEIGHT, comma separated; the release uses clip:RN50=15,dino-resnet50=20 '
                   '(needs --embed-weights). The default runs offline.')
@click.option('--dime-estimator', type=click.Choice(['moments', 'mmd']), default=D['dime_estimator'],
              show_default=True, help='moments: the released first/second-moment L1; mmd: Gaussian-kernel MMD^2.')
@click.option('--embed-weights', multiple=True, metavar='SPEC=FILE', default=D['embed_weights'],
              help='Weights file of an embedder (repeat per embedder), e.g. clip:RN50=RN50.pt.')
@click.option('--dime-stats', metavar='NPZ', default=D['dime_stats'],
              help='Teacher statistics from gan-prune teacher-stats; without it they are computed at the start.')
@click.option('--dime-stats-samples', type=click.IntRange(min=2), default=D['dime_stats_samples'], show_default=True,
              help='Teacher samples for statistics computed at the start.')
@click.option('--nickel-weight', type=click.FloatRange(min=0), default=D['nickel_weight'], show_default=True,
              help='Weight of the NICKEL loss in the D^S step (0 disables it).')
@click.option('--nickel-res', metavar='INT', default=D['nickel_res'], show_default=True,
              callback=lambda c, p, v: _optional_int(v),
              help="Feature resolution for NICKEL ('none': image resolution / 4, i.e. 64 at 256 px as released).")
@click.option('--nickel-levels', type=click.IntRange(min=1), default=D['nickel_levels'], show_default=True,
              help='Haar wavelet levels of NICKEL.')
@click.option('--cagan-l1', type=click.FloatRange(min=0), default=D['cagan_l1'], show_default=True,
              help='--kd cagan: weight of the L1 term.')
@click.option('--cagan-perceptual', type=click.FloatRange(min=0), default=D['cagan_perceptual'], show_default=True,
              help='--kd cagan: weight of the perceptual term.')
@click.option('--cagan-net', metavar='SPEC', default=D['cagan_net'], show_default=True,
              help='--kd cagan perceptual network: an embedder spec, or vgg16:FILE (LPIPS-style on local VGG16 weights).')
@click.option('--cagan-mask', metavar='none|face-parser|FILE', default=D['cagan_mask'], show_default=True,
              help='--kd cagan content-of-interest mask: all pixels, BiSeNet face parsing, or your own model file '
                   '(TorchScript or name + state_dict: it runs code, so it needs --trust-pickle).')
@click.option('--parser-weights', metavar='FILE', default=D['parser_weights'],
              help='BiSeNet face-parsing weights (79999_iter.pth) for --cagan-mask face-parser.')
@click.option('--workers', type=click.IntRange(min=0), default=D['workers'], show_default=True,
              help='Data loader processes.')
@click.option('--grid', metavar='COLSxROWS', default=D['grid'], show_default=True,
              help='Size of the sample grids (fakes*.png).')
@click.option('--device', default=D['device'], show_default=True,
              help='auto (CUDA if available), cpu or cuda.')
@click.option('--desc', metavar='TEXT', default=D['desc'],
              help='Run directory name after the id (default: from kd, data and batch).')
@click.option('--trust-pickle/--no-trust-pickle', 'trust', default=D['trust'], show_default=True,
              help='Let the given files run code, for files from a source you trust: the code embedded in the '
                   'pickles (custom architectures), TorchScript files (torchscript:FILE embedders, --cagan-net, '
                   'CLIP archives other than the published OpenAI ones, Inception files other than NVIDIA\'s) and '
                   '--cagan-mask model files. Without it such files are refused; state dicts need no flag. Never '
                   'taken from a run directory: --resume RUN_DIR trusts only when this command line says so.')
@click.pass_context
def command(ctx: click.Context, **options) -> None:
    """Fine-tune a pruned generator against the teacher (NICKEL & DiME, or a baseline) in a run directory.

    \b
    The run directory holds training_options.json, log.txt, stats.jsonl, sample grids, network snapshots
    (NVIDIA format: G, G_ema, D = D^S, plus D_teacher) and resume.pt for --resume RUN_DIR.
    Several GPUs: torchrun --nproc_per_node N -m gan_prune distill ... (or --gpus N).
    """
    from gan_prune.distill.loop import distill
    options['embed_weights'] = list(options['embed_weights'])
    if options.get('resume'):
        import os
        if os.path.isdir(options['resume']):
            # Continue with the run's own options; only what the user typed overrides them.
            options = {k: v for k, v in options.items()
                       if k == 'resume' or ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE,
                                                                           ParameterSource.ENVIRONMENT)}
    run_dir = distill(**options)
    click.echo(f'Run directory: {run_dir}')
