"""Write the procedural cartoon-face dataset (StyleGAN2-ADA zip format, with content masks).

    python tools/make_dataset.py --out data/faces32.zip --num 20000 --seed 0 --resolution 32

The same arguments give the same zip on every machine. A preview grid (images and masks) goes next to it.
"""
import os
import time

import click
import numpy as np
import PIL.Image

from gan_prune.demo.faces import make_faces, write_faces_zip


@click.command()
@click.option('--out', required=True, metavar='ZIP', help='Output dataset zip.')
@click.option('--num', type=click.IntRange(min=1), default=20000, show_default=True, help='Number of images.')
@click.option('--seed', type=int, default=0, show_default=True, help='Dataset seed.')
@click.option('--resolution', type=click.Choice(['16', '32', '64', '128', '256']), default='32', show_default=True,
              help='Image size in pixels.')
def main(out: str, num: int, seed: int, resolution: str) -> None:
    """Draw cartoon faces on varied backgrounds and write them with per-image content masks."""
    res = int(resolution)
    t0 = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_faces_zip(out, num, seed, res)
    images, masks = make_faces(min(num, 64), seed, res)
    n = int(np.sqrt(len(images)))
    tile = lambda a: a[:n * n].reshape(n, n, res, res, -1).transpose(0, 2, 1, 3, 4).reshape(n * res, n * res, -1)
    preview = np.concatenate([tile(images), tile(np.repeat(masks[..., None], 3, -1))], axis=1)
    preview_path = os.path.splitext(out)[0] + '-preview.png'
    PIL.Image.fromarray(preview).save(preview_path)
    click.echo(f'wrote {num} images of {res}x{res} to {out} in {time.time() - t0:.1f} s; preview {preview_path}')


if __name__ == '__main__':
    main()
