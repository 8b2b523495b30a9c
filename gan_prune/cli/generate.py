"""`gan-prune generate`: images from a teacher or student pickle, with the original generate.py conventions."""
from __future__ import annotations

import os
import re

import click

from gan_prune.cli import checks
from gan_prune import defaults
from gan_prune.fileio import refuse_overwriting_inputs

D = defaults.GENERATE


def _planned_outputs(outdir: str, seeds: list[int] | None, projected_w: str | None, grid: bool) -> list[str]:
    """The files generate will write in `outdir` (proj<i>.png: as many as the W file holds, so every name of that
    form already there counts)."""
    names = ['grid.png'] if grid else []
    if seeds is not None:
        names += [f'seed{seed:04d}.png' for seed in seeds]
    elif os.path.isdir(outdir):
        names += [name for name in os.listdir(outdir) if re.fullmatch(r'proj\d{2,}\.png', name)]
    return [os.path.join(outdir, name) for name in names]


def _known_backend(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--backend: a name registered in gan_prune.runtime.backends (one line listing them otherwise)."""
    from gan_prune.runtime.backends import BACKENDS
    BACKENDS.get(value)
    return value


@click.command('generate')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Network pickle: a path, an http(s) URL, or builtin:NAME; its G_ema is used. NaN/inf weights '
                   'give a warning, and the images are still written (they show what the network does). Also a '
                   'model from gan-prune export (.onnx or TorchScript), run by its own backend.')
@click.option('--seeds', default=D['seeds'], callback=checks.seeds, show_default=True, metavar='LIST',
              help='Seeds: numbers and inclusive ranges, e.g. 0-15 or 1,5,9-11.')
@click.option('--outdir', default=D['outdir'], show_default=True, metavar='DIR',
              help='Folder for seedNNNN.png (and grid.png).')
@click.option('--trunc', 'truncation_psi', type=float, default=D['truncation_psi'], show_default=True,
              help='Truncation psi.')
@click.option('--class', 'class_idx', type=int, default=None, metavar='N',
              help='Class label for conditional generators.')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default=D['noise_mode'],
              show_default=True, help='Noise inputs: the stored constant, fresh random, or none.')
@click.option('--projected-w', default=None, metavar='FILE',
              help='Render the W array (npz key w, [K, num_ws, w_dim]) instead of seeds, as projNN.png.')
@click.option('--grid/--no-grid', default=D['grid'], show_default=True, help='Also write grid.png.')
@click.option('--device', default=D['device'], callback=checks.device, show_default=True, help='cpu, cuda, cuda:N, or auto.')
@click.option('--precision', type=click.Choice(['auto', 'fp32', 'native']), default=D['precision'],
              show_default=True,
              help='auto: fp16 blocks run in fp32 on the CPU (much faster there) and natively on CUDA.')
@click.option('--backend', default='eager', callback=_known_backend, show_default=True, metavar='NAME',
              help='Runtime that renders: eager (the PyTorch network, exactly as the original tool), or another '
                   'of gan_prune.runtime.backends (onnxruntime, openvino, torchscript, ...; fp32 on the CPU, the '
                   'image within a few grey levels of eager). An exported model picks its own (an .onnx file: '
                   'onnxruntime, or openvino when named).')
@click.option('--trust-pickle', is_flag=True,
              help='Allow code in SRC to run, for a source you trust: a pickle\'s custom architecture, or a '
                   'TorchScript export (.pt), which is a program: loading it runs its code, so it renders only '
                   'with this flag. An ONNX export is data and needs none.')
def command(src, seeds, outdir, truncation_psi, class_idx, noise_mode, projected_w, grid, device, precision,
            backend, trust_pickle) -> None:
    """Render one PNG per seed: the same seed on the same pickle gives the image NVIDIA's generate.py gives."""
    from gan_prune.generate import generate_images, parse_seeds
    seed_list = None if projected_w else parse_seeds(seeds)
    refuse_overwriting_inputs(_planned_outputs(outdir, seed_list, projected_w, grid),
                              {'--pkl': src, '--projected-w': projected_w}, out_label='output')
    paths = generate_images(src, outdir, seeds=seed_list, truncation_psi=truncation_psi, noise_mode=noise_mode,
                            class_idx=class_idx, projected_w=projected_w, grid=grid, device=device,
                            precision=precision, trust=trust_pickle, progress=True, log=click.echo,
                            backend=backend)
    click.echo(f'wrote {len(paths)} images to {outdir}')
