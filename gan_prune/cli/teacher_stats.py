"""`gan-prune teacher-stats`: the teacher embedding statistics (mu1, mu2) that the DiME loss matches."""
from __future__ import annotations

import click

from gan_prune.cli import checks
from gan_prune.defaults import DIME, EMBED
from gan_prune.errors import GanPruneError
from gan_prune.fileio import refuse_overwriting_inputs


@click.command('teacher-stats')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Teacher network pickle (its G_ema is sampled): a path, an http(s) URL, or builtin:NAME.')
@click.option('--embed', 'embed_spec', default=EMBED['embed'], callback=checks.embedders, show_default=True, metavar='SPEC',
              help='Embedder(s), comma separated: effnet-lite0, clip:ARCH, dino-resnet50, torchscript:FILE. '
                   f'A DiME spec with weights (e.g. {DIME["release_spec"]}) is accepted; the weights are ignored here. '
                   'effnet-lite0 works offline; the released method uses clip:RN50,dino-resnet50.')
@click.option('--embed-weights', multiple=True, metavar='[SPEC=]FILE',
              help='Weights file of an embedder (repeat for several; SPEC=FILE says which one). Bare file names are '
                   'also searched in $GAN_PRUNE_WEIGHTS, ./weights and ~/.cache/gan_prune/weights. Without it the '
                   'official clip:RN50 and dino-resnet50 files are found in the cache or downloaded once (online).')
@click.option('--normalize/--no-normalize', default=EMBED['normalize'], show_default=True,
              help="Each model's own input preprocessing (resize, mean/std). The release uses none: pixels in "
                   '[-1, 1]. Must match the setting used for distillation.')
@click.option('--samples', type=click.IntRange(min=1), default=EMBED['samples'], show_default=True,
              help='Number of teacher images.')
@click.option('--batch', type=click.IntRange(min=1), default=EMBED['batch'], show_default=True,
              help='Images per generator/embedder call.')
@click.option('--seed', type=int, default=EMBED['seed'], show_default=True,
              help='Random seed of the teacher latents and noise.')
@click.option('--noise-mode', type=click.Choice(['random', 'const']), default=EMBED['noise_mode'],
              show_default=True, help='Teacher noise inputs while sampling.')
@click.option('--bank-size', type=click.IntRange(min=0), default=EMBED['bank_size'], show_default=True,
              help='Also keep this many teacher embeddings per embedder, for the kernel-MMD estimator.')
@click.option('--checkpoint-every', type=click.IntRange(min=1), default=EMBED['checkpoint_every'],
              show_default=True, help='Batches between saves of the resumable state <out>.partial.npz.')
@click.option('--device', default=EMBED['device'], callback=checks.device, show_default=True,
              help='auto, cpu or cuda (cuda falls back to cpu when unavailable).')
@click.option('--trust-pickle', is_flag=True,
              help='Let the given files run code, for files from a source you trust: the code embedded in the '
                   'pickle (custom architectures), and TorchScript embedder files (torchscript:FILE, CLIP .pt '
                   'archives other than the published OpenAI ones, which are known by checksum). Without it such '
                   'files are refused; state dicts need no flag.')
@click.option('--out', required=True, metavar='FILE',
              help='Output .npz (written atomically; never one of the input files).')
def command(src: str, embed_spec: str, embed_weights: tuple[str, ...], normalize: bool, samples: int, batch: int,
            seed: int, noise_mode: str, bank_size: int, checkpoint_every: int, device: str, trust_pickle: bool,
            out: str) -> None:
    """Sample the teacher and write the mean and mean square of its image embeddings (DiME statistics).

    Rerunning an interrupted command with the same options resumes where it stopped and gives the same file as an
    uninterrupted run.
    """
    from gan_prune.distill import teacher_stats
    from gan_prune.distill.dime import parse_dime_spec, resolve_weight_files
    from gan_prune.distill.embedders import build_embedder
    from gan_prune.distill.official_weights import resolve_embed_weights

    if not out.endswith('.npz'):
        raise GanPruneError(f'--out must be a .npz file, got {out}')
    names = [name for name, _ in parse_dime_spec(embed_spec)]
    # The official embedders (clip:RN50, dino-resnet50) find their files as distill does: given, local, cached or
    # downloaded once with a checksum; offline without them, one line names the files.
    files = resolve_weight_files(names, resolve_embed_weights(names, list(embed_weights)))
    inputs = [('--pkl', src)] + [('--embed-weights', path) for path in files.values()]
    inputs += [('--embed', name.partition(':')[2]) for name in names if name.startswith('torchscript:')]
    refuse_overwriting_inputs([out, teacher_stats.partial_path(out)], inputs)
    dev = teacher_stats.resolve_device(device)
    embedders = [build_embedder(name, weights=files.get(name), normalize=normalize, trust=trust_pickle)
                 for name in names]
    G = teacher_stats.load_teacher_generator(src, trust=trust_pickle)
    stats = teacher_stats.compute_teacher_stats(
        G, embedders, out, samples=samples, batch=batch, seed=seed, noise_mode=noise_mode, bank_size=bank_size,
        checkpoint_every=checkpoint_every, device=dev, source=src, spec=embed_spec)
    assert stats is not None  # None only when max_batches stops the run early
    for entry in stats.embeddings.values():
        bank = f', bank {entry.bank.shape[0]}' if entry.bank is not None else ''
        click.echo(f'{entry.name}: {entry.dim}-d, {entry.count} samples{bank}')
    click.echo(f'wrote {out}')
