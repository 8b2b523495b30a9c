"""`gan-prune distill`: fine-tune a pruned student with NICKEL & DiME (or a baseline) in a StyleGAN2-ADA-style run."""
from __future__ import annotations

import click
from click.core import ParameterSource

from gan_prune.defaults import DISTILL as D
from gan_prune.distill.dime import DIME_ESTIMATORS, dime_estimator_help
from gan_prune.distill.presets import KD_PRESETS, PRESET_TABLE

_PRESET_HELP = '; '.join(f'{p.name}: {p.summary}' + (' (sets ' + ', '.join(f'{k}={v}' for k, v in p.sets.items()) + ')'
                                                     if p.sets else '') for p in PRESET_TABLE)
_BY_PRESET = ' (--kd cagan and --kd none set their own value: see --kd)'

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
@click.option('--kd', type=click.Choice(KD_PRESETS.names()), default=D['kd'], show_default=True,
              help=f'KD method, a preset of KD terms and options; options given on the command line override the '
                   f'preset, and the run prints what it used. {_PRESET_HELP}.')
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
@click.option('--mirror/--no-mirror', default=D['mirror'], show_default=True,
              help='Add x-flipped copies of the dataset images (on: the release\'s config).')
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
              help='Adam learning rate of G^S, D^S and D^T (betas 0, 0.99; lazy-regularisation scaling applied); '
                   '0.0025 is the release\'s paper256 value' + _BY_PRESET + '.')
@click.option('--gamma', type=click.FloatRange(min=0), default=D['gamma'], show_default=True,
              help='R1 regularisation weight of both discriminators (1: the release\'s paper256 value; CAGAN uses 10)'
                   + _BY_PRESET + '.')
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
              help='D^S start: random full-size D (the release\'s choice, the default) or a copy of D^T' + _BY_PRESET
                   + '.')
@click.option('--teacher-d/--no-teacher-d', default=D['teacher_d'], show_default=True,
              help='G^S also plays against D^T, which keeps training (the method as released); off: D^S only (as '
                   'CAGAN)' + _BY_PRESET + '.')
@click.option('--dime', metavar='SPEC', default=D['dime'], show_default=True,
              help='DiME terms EMBEDDER=WEIGHT, comma separated. The default is the release\'s (CLIP RN50: bilinear '
                   '224 px, no CLIP normalisation; DINO ResNet-50: the raw image; fp16 on CUDA); their weights come '
                   'from --embed-weights, a local copy, or are downloaded once from their official sources. Offline: '
                   'effnet-lite0=15 (weights ship with a Python package; effnet-lite0:96=15 is cheaper on small '
                   'images).')
@click.option('--dime-batch', type=click.IntRange(min=1), default=D['dime_batch'], show_default=True,
              help='Images per DiME moment estimate: each round\'s images are split into groups of this size and the '
                   'group estimates averaged. 8 reproduces the release (batch 64 on 4 GPUs, 8 per GPU per round).')
@click.option('--dime-estimator', type=click.Choice(DIME_ESTIMATORS.names()), default=D['dime_estimator'],
              show_default=True, help=dime_estimator_help())
@click.option('--embed-weights', multiple=True, metavar='SPEC=FILE', default=D['embed_weights'],
              help='Weights file of an embedder (repeat per embedder), e.g. clip:RN50=RN50.pt, '
                   'dino-resnet50=dino_resnet50_pretrain.pth. Without it the official files are looked for in the '
                   'weights folders and the download cache, and downloaded when online.')
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
              help='--kd cagan: weight of the masked L1 term (CAGAN: 3).')
@click.option('--cagan-perceptual', type=click.FloatRange(min=0), default=D['cagan_perceptual'], show_default=True,
              help='--kd cagan: weight of the perceptual term (CAGAN: 3).')
@click.option('--cagan-net', metavar='SPEC', default=D['cagan_net'], show_default=True,
              help="--kd cagan perceptual network: lpips-vgg (CAGAN's: LPIPS with its learned linear weights from "
                   "the lpips package; VGG-16 trunk downloaded once, or lpips-vgg:FILE for a local torchvision "
                   "vgg16 state dict), vgg16:FILE (LPIPS-style without the learned weights) or an embedder spec "
                   "such as effnet-lite0 (offline).")
@click.option('--cagan-mask', metavar='none|face-parser|FILE', default=D['cagan_mask'], show_default=True,
              help="--kd cagan content-of-interest mask of the teacher image: face-parser (CAGAN's: BiSeNet, needs "
                   "--parser-weights), none (all pixels), or your own model file (TorchScript or name + state_dict: "
                   "it runs code, so it needs --trust-pickle).")
@click.option('--kd-noise', type=click.Choice(['shared', 'independent']), default=D['kd_noise'], show_default=True,
              help='Noise inputs of the teacher images that instance-level KD terms (--kd cagan) compare with: the '
                   'student\'s own (shared) or independent draws, as CAGAN does' + _BY_PRESET + '.')
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
    # Only what the user typed goes on: the --kd preset and a resumed run's own options fill in the rest, and
    # an explicit option always wins over both.
    options = {k: v for k, v in options.items()
               if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    if 'embed_weights' in options:
        options['embed_weights'] = list(options['embed_weights'])
    run_dir = distill(**options)
    click.echo(f'Run directory: {run_dir}')
