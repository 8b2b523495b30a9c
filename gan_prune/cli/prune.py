"""`gan-prune prune`: content-aware channel pruning of a generator to a FLOPs compression rate."""
from __future__ import annotations

import click

from gan_prune import defaults
from gan_prune.cli import checks
from gan_prune.generator.cost import CONVENTIONS
from gan_prune.prune.importance import CRITERIA, criterion_help
from gan_prune.prune.masks import MASKS
from gan_prune.prune.surgery import TORGB_GAINS

D = defaults.PRUNE


@click.command('prune')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Teacher network pickle: a path, an http(s) URL, or builtin:NAME (tiny32, paper256).')
@click.option('--out', required=True, metavar='PKL',
              help='Where to write the pruned snapshot (.pkl); never one of the input files.')
@click.option('--rate', type=float, default=None, callback=checks.fraction, metavar='R',
              help='Target FLOPs compression rate 1 - MACs(student)/MACs(teacher), e.g. 0.9892; it resolves to '
                   'the uniform channel configuration whose rate is nearest (reported next to the target), so the '
                   'paper\'s rounded rates 0.7496, 0.9073, 0.9892, 0.9969 build its r = 0.5, 0.7, 0.9, 0.95 '
                   'students on paper256 (a "smallest ratio that reaches it" or "rounds to it" rule misses 0.9073 '
                   'and 0.9969, and gives 51 instead of 52 channels for 0.9892). 0.9573 is reproduced by no '
                   'configuration and resolves to 104/52/26/13 channels (95.85 %); the paper\'s "95.73 %" student '
                   'is --ratio 0.8.')
@click.option('--ratio', type=float, default=None, callback=checks.fraction, metavar='r',
              help='Uniform channel ratio instead of --rate: remove int(C*r) channels of every feature map '
                   '(paper: 0.5, 0.7, 0.8, 0.9, 0.95).')
@click.option('--channels', 'channel_text', default=None, metavar='RES:N,...',
              help='Pin the channel count of whole blocks, e.g. 128:32,256:16; --rate/--ratio apply to the rest.')
@click.option('--rate-convention', type=click.Choice(CONVENTIONS), default=D['rate_convention'], show_default=True,
              help="MAC counting for --rate: 'conv' = synthesis convs + toRGB (the paper's rates), 'total' adds "
                   'style affines and the mapping network.')
@click.option('--criterion', type=click.Choice(CRITERIA.names()), default=D['criterion'], show_default=True,
              help=f'Channel importance. {criterion_help()}. content-aware needs a content mask (--mask).')
@click.option('--mask', default=D['mask'], show_default=True, metavar='auto|' + '|'.join(MASKS.names()) + '|FILE',
              help='Content-of-interest mask for --criterion content-aware: '
                   + '; '.join(f'{name}: {MASKS.info(name)["summary"]}' for name in MASKS.names())
                   + '; FILE: your model (TorchScript file, or torch file with name + state_dict; either runs code, '
                   'so it needs --trust-pickle). auto: face-parser when --parser-weights is given or 79999_iter.pth '
                   'is in the weights folders, otherwise an error (never a silent all-ones mask).')
@click.option('--parser-weights', default=None, metavar='FILE',
              help='BiSeNet face-parsing weights (79999_iter.pth) for --mask face-parser.')
@click.option('--samples', type=click.IntRange(min=1), default=D['samples'],
              help='Latents used to score channels (images for the gradient criteria, w samples for l1-out). '
                   'Default: the criterion\'s own, ' + ', '.join(
                       f'{name} {CRITERIA.info(name)["samples"]}' for name in CRITERIA.names()
                       if CRITERIA.info(name)['needs_samples']) + '.')
@click.option('--batch', type=click.IntRange(min=1), default=D['batch'],
              help='Latents per scoring batch. Default: the criterion\'s own (8; diversity 5, as DCP-GAN, whose '
                   'per-batch variance depends on it).')
@click.option('--micro-batch', type=click.IntRange(min=1), default=D['micro_batch'], show_default=True,
              help='Images per forward/backward pass while scoring; lower it to save memory (scores do not change).')
@click.option('--seed', type=int, default=D['seed'], show_default=True,
              help='Seed of the latents and the salt-and-pepper noise (the result is deterministic for a seed).')
@click.option('--noise-prob', type=click.FloatRange(0, 1), default=D['noise_prob'], show_default=True,
              help='Probability that a masked pixel gets salt-and-pepper noise.')
@click.option('--directions', type=click.IntRange(min=2), default=D['directions'], show_default=True,
              help='diversity: latent directions per batch, drawn in proportion to explained variance.')
@click.option('--strength', type=float, default=D['strength'], show_default=True,
              help='diversity: alpha of the edit w + alpha d.')
@click.option('--pca-samples', type=click.IntRange(min=2), default=D['pca_samples'], show_default=True,
              help='diversity: mapped latents in the PCA of W that gives the directions.')
@click.option('--torgb-gain', type=click.Choice(TORGB_GAINS), default=D['torgb_gain'], show_default=True,
              help="toRGB weight gain of the student: 'pruned' rebuilds toRGB with the pruned fan-in as the "
                   "authors' release does (toRGB outputs about 3x larger at r = 0.9); 'teacher' keeps the teacher's "
                   "fan-in, so the pruned network computes what its kept channels computed in the teacher. The "
                   "default is the release's 'pruned': in the miniature table (docs/results.md, 3 seeds) students "
                   "fine-tuned from it ended closer to their teacher at every rate, while FD against the data was "
                   "level at 75 % and 99 % and better with 'teacher' at 91 %. Recorded in the pickle.")
@click.option('--device', default=D['device'], callback=checks.device, show_default=True,
              help='cpu, cuda, cuda:N, or auto (cuda when available).')
@click.option('--trust-pickle', is_flag=True,
              help='Let the given files run code, for files from a source you trust: the code embedded in the '
                   'pickle (custom architectures), and a --mask model file (TorchScript, or a torch file naming a '
                   "class that is not one of the toolkit's own). Without it such files are refused; state dicts "
                   'and bundled files need no flag.')
def command(src, out, rate, ratio, channel_text, rate_convention, criterion, mask, parser_weights, samples, batch,
            micro_batch, seed, noise_prob, directions, strength, pca_samples, torgb_gain, device,
            trust_pickle) -> None:
    """Score the teacher's channels, cut every feature map to the solved channel count, write a slim G.

    The output is a normal StyleGAN2-ADA snapshot (G, G_ema pruned; D from the teacher) plus a `pruning`
    entry; NVIDIA's tools load it and render it with G(z, c).
    """
    from gan_prune.errors import GanPruneError
    from gan_prune.fileio import refuse_overwriting_inputs
    from gan_prune.prune.pipeline import prune
    from gan_prune.prune.solver import parse_channel_overrides
    if rate is None and ratio is None and not channel_text:
        raise GanPruneError('say how much to prune: --rate R (e.g. 0.9573), --ratio r (e.g. 0.8) '
                            'or --channels RES:N,...')
    refuse_overwriting_inputs(out, {'--pkl': src, '--parser-weights': parser_weights, '--mask': mask})
    result = prune(src, out, rate=rate, ratio=ratio, channels=parse_channel_overrides(channel_text),
                   criterion=criterion, mask=mask, parser_weights=parser_weights, samples=samples, batch=batch,
                   micro_batch=micro_batch, seed=seed, noise_prob=noise_prob, directions=directions,
                   strength=strength, pca_samples=pca_samples, torgb_gain=torgb_gain, rate_convention=rate_convention,
                   device=device, trust=trust_pickle, progress=True, log=click.echo)
    click.echo(result.report)
    click.echo(f'wrote {out} ({criterion}, {result.seconds:.1f} s)')
