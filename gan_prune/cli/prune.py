"""`gan-prune prune`: content-aware channel pruning of a generator to a FLOPs compression rate."""
from __future__ import annotations

import click

from gan_prune import defaults
from gan_prune.cli import checks
from gan_prune.nets.cost import CONVENTIONS
from gan_prune.prune.importance import IMPORTANCE

D = defaults.PRUNE


@click.command('prune')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Teacher network pickle: a path, an http(s) URL, or builtin:NAME (tiny32, paper256).')
@click.option('--out', required=True, metavar='PKL', help='Where to write the pruned snapshot (.pkl).')
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
@click.option('--criterion', type=click.Choice(list(IMPORTANCE)), default=D['criterion'], show_default=True,
              help='Channel importance: content-aware (CAGAN gradient score under a content mask; the method\'s '
                   'criterion, used by paper and release alike), l1-out (same, whole image), weight-l1, random, '
                   'diversity (DCP-GAN).')
@click.option('--mask', default=D['mask'], show_default=True, metavar='auto|none|face-parser|demo-faces|FILE',
              help='Content-of-interest mask: face-parser (BiSeNet, needs --parser-weights), none (all pixels; for '
                   'non-face data), demo-faces (the segmenter shipped for the bundled cartoon-face teacher), or '
                   'your model (TorchScript file, or torch file with name + state_dict; either runs code, so it '
                   'needs --trust-pickle). auto: face-parser when --parser-weights is given, else none.')
@click.option('--parser-weights', default=None, metavar='FILE',
              help='BiSeNet face-parsing weights (79999_iter.pth) for --mask face-parser.')
@click.option('--samples', type=click.IntRange(min=1), default=D['samples'], show_default=True,
              help='Generated images used to score channels.')
@click.option('--batch', type=click.IntRange(min=1), default=D['batch'], show_default=True,
              help='Images per scoring batch (memory grows with it).')
@click.option('--micro-batch', type=click.IntRange(min=1), default=D['micro_batch'], show_default=True,
              help='Images per forward/backward pass while scoring; lower it to save memory (scores do not change).')
@click.option('--seed', type=int, default=D['seed'], show_default=True,
              help='Seed of the latents and the salt-and-pepper noise (the result is deterministic for a seed).')
@click.option('--noise-prob', type=click.FloatRange(0, 1), default=D['noise_prob'], show_default=True,
              help='Probability that a masked pixel gets salt-and-pepper noise.')
@click.option('--device', default=D['device'], callback=checks.device, show_default=True,
              help='cpu, cuda, cuda:N, or auto (cuda when available).')
@click.option('--trust-pickle', is_flag=True,
              help='Let the given files run code, for files from a source you trust: the code embedded in the '
                   'pickle (custom architectures), and a --mask model file (TorchScript, or a torch file naming a '
                   "class that is not one of the toolkit's own). Without it such files are refused; state dicts "
                   'and bundled files need no flag.')
def command(src, out, rate, ratio, channel_text, rate_convention, criterion, mask, parser_weights, samples, batch,
            micro_batch, seed, noise_prob, device, trust_pickle) -> None:
    """Score the teacher's channels, cut every feature map to the solved channel count, write a slim G.

    The output is a normal StyleGAN2-ADA snapshot (G, G_ema pruned; D from the teacher) plus a `pruning`
    entry; NVIDIA's tools load it and render it with G(z, c).
    """
    from gan_prune.errors import GanPruneError
    from gan_prune.prune.pipeline import prune
    from gan_prune.prune.solver import parse_channel_overrides
    if rate is None and ratio is None and not channel_text:
        raise GanPruneError('say how much to prune: --rate R (e.g. 0.9573), --ratio r (e.g. 0.8) '
                            'or --channels RES:N,...')
    result = prune(src, out, rate=rate, ratio=ratio, channels=parse_channel_overrides(channel_text),
                   criterion=criterion, mask=mask, parser_weights=parser_weights, samples=samples, batch=batch,
                   micro_batch=micro_batch, seed=seed, noise_prob=noise_prob, rate_convention=rate_convention,
                   device=device, trust=trust_pickle, progress=True, log=click.echo)
    click.echo(result.report)
    click.echo(f'wrote {out} ({criterion}, {result.seconds:.1f} s)')
