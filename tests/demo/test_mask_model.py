"""The shipped content segmenter finds the content of cartoon faces it has never seen (held-out seeds)."""
import numpy as np
import torch

from gan_prune.demo.faces import _background, make_faces
from gan_prune.prune.masks import build_mask


def test_demo_mask_segments_unseen_faces():
    provider = build_mask('demo-faces')
    images, masks = make_faces(48, seed=777)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    pred = provider(x)
    assert pred.shape == (48, 1, 32, 32) and pred.dtype == torch.float32
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1
    pred_bin = pred[:, 0].numpy() > 0.5
    target = masks > 127
    iou = (pred_bin & target).sum() / (pred_bin | target).sum()
    assert iou > 0.85
    # Backgrounds alone (no face drawn) are mostly not content.
    backgrounds = np.stack([np.asarray(_background(np.random.RandomState(i), 32)) for i in range(16)])
    bg = provider(torch.from_numpy(backgrounds).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert float(bg.mean()) < 0.5 * float(pred.mean())
