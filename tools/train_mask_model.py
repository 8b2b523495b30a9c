"""Train the content segmenter for the cartoon-face data and save it as a mask model file (class name + state dict).

    python tools/train_mask_model.py --out gan_prune/assets/face_mask.pt --steps 1500

Trains on a pool of procedural faces (seeds disjoint from the teacher's data), with x-flips; reports IoU on
held-out seeds.
"""
import time

import click
import numpy as np
import torch
import torch.nn.functional as F
import tqdm

from gan_prune.demo.faces import make_faces
from gan_prune.features.segmenter import ContentSegmenter, save_mask_model


def to_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(masks).float().unsqueeze(1) / 255
    return x, y


def iou(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = model(x) > 0.5
    target = y > 0.5
    return float((pred & target).sum() / (pred | target).sum())


@click.command()
@click.option('--out', required=True, help='Output TorchScript file.')
@click.option('--steps', type=int, default=1500, show_default=True, help='Training steps.')
@click.option('--batch', type=int, default=32, show_default=True, help='Images per step.')
@click.option('--resolution', type=int, default=32, show_default=True, help='Training image size.')
@click.option('--pool', type=int, default=4000, show_default=True, help='Training faces drawn once up front.')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed.')
def main(out: str, steps: int, batch: int, resolution: int, pool: int, seed: int) -> None:
    """Train ContentSegmenter on procedural faces and their masks."""
    torch.manual_seed(seed)
    model = ContentSegmenter()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    val_x, val_y = to_tensors(*make_faces(256, seed=10_000 + seed, resolution=resolution))
    # Seed 1000+: disjoint from the teacher's training data (seed 0) and from the validation faces.
    train_x, train_y = to_tensors(*make_faces(pool, seed=1000 + seed, resolution=resolution))
    rng = torch.Generator().manual_seed(seed)
    bar = tqdm.tqdm(range(steps), desc='train segmenter')
    for step in bar:
        idx = torch.randint(pool, [batch], generator=rng)
        x, y = train_x[idx], train_y[idx]
        if step % 2:
            x, y = x.flip(3), y.flip(3)
        loss = F.binary_cross_entropy_with_logits(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f'{loss.item():.4f}', val_iou=f'{iou(model, val_x, val_y):.4f}')
    model.eval()
    save_mask_model(model, out)
    click.echo(f'validation IoU {iou(model, val_x, val_y):.4f}; {sum(p.numel() for p in model.parameters())} '
               f'parameters; {time.time() - t0:.0f} s; wrote {out}')


if __name__ == '__main__':
    main()
