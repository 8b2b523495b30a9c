"""`gan-prune export`: a generator as an ONNX model, a TorchScript file, or a static web page."""
from __future__ import annotations

import os

import click

from gan_prune.errors import GanPruneError
from gan_prune.runtime.export import EXPORT_NOISE_MODES, FORMATS


@click.command('export')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Network pickle (teacher or pruned student): a path, an http(s) URL, or builtin:NAME; its G_ema '
                   'is exported.')
@click.option('--format', 'fmt', type=click.Choice(FORMATS), default='onnx', show_default=True,
              help='onnx: one .onnx file (opset 18) for ONNX Runtime or OpenVINO; torchscript: a traced file for '
                   'torch.jit.load (a format PyTorch has deprecated; prefer onnx); '
                   'web: a folder with index.html, model.onnx and the onnxruntime-web runtime.')
@click.option('--out', required=True, metavar='PATH',
              help='Output file (onnx, torchscript) or folder (web). Written whole or not at all.')
@click.option('--batch', default='dynamic', show_default=True, metavar='N|dynamic',
              help='Batch size of the inputs: a fixed N, or dynamic (any batch). The web page always uses dynamic.')
@click.option('--truncation', 'truncation_psi', type=float, default=1.0, show_default=True, metavar='PSI',
              help='Truncation psi built into the model (for web: the slider\'s start value; the page passes psi '
                   'as an input).')
@click.option('--noise-mode', type=click.Choice(EXPORT_NOISE_MODES), default='const', show_default=True,
              help='Noise inputs built into the model: the stored constant noise, or none.')
@click.option('--fp16', 'fp16_weights', is_flag=True,
              help='Store the weights as float16 (about half the file size), cast back to float32 when the model '
                   'loads: all arithmetic stays float32, on weights rounded to fp16. onnx and web only.')
@click.option('--ort-web', metavar='PATH', envvar='GAN_PRUNE_ORT_WEB', show_envvar=True,
              help='For --format web: an unpacked onnxruntime-web npm package (or its .tgz from npm pack), whose '
                   'runtime files are copied next to the page so that it works offline.')
@click.option('--trust-pickle', is_flag=True,
              help='Allow code embedded in the pickle to run (only for custom architectures from a source you trust).')
def command(src, fmt, out, batch, truncation_psi, noise_mode, fp16_weights, ort_web, trust_pickle) -> None:
    """Export G_ema with inputs z (and c when conditional) and output img (NCHW float32, about [-1, 1]).

    The model includes mapping and truncation and runs the network's fp32 reference path, so it gives the
    images `gan-prune generate` gives (check with `gan-prune generate --backend onnxruntime --pkl OUT`).
    """
    from gan_prune import load_network_pkl
    from gan_prune.runtime.export import export_generator, parse_batch
    batch_size = parse_batch(batch)
    if fmt == 'web':
        from gan_prune.runtime.webassets import check_out_folder, find_ort_web
        find_ort_web(ort_web)  # before the slow part: a missing runtime or a wrong folder fails at once
        check_out_folder(out)
    if not src.startswith('builtin:') and '://' not in src and not os.path.exists(src):
        raise GanPruneError(f'no such file: {src}')
    G = load_network_pkl(src, trust=trust_pickle).get('G_ema')
    if G is None:
        raise GanPruneError(f'{src} holds no G_ema; is it a StyleGAN2-ADA network pickle?')
    click.echo(f'exporting {src} as {fmt} (fp32 reference path) ...')
    facts = export_generator(G, fmt, out, batch_size, truncation_psi, noise_mode, fp16_weights, source=src,
                             ort_web=ort_web)
    inputs = ', '.join(facts['inputs'])
    if fmt == 'web':
        click.echo(f'wrote {out}/ ({len(facts["files"])} files; model {facts["model_bytes"] / 2 ** 20:.1f} MiB); '
                   f'serve it with: python -m http.server -d {out} 8000, then open http://localhost:8000/')
    else:
        click.echo(f'wrote {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB; inputs {inputs}; output img)')
