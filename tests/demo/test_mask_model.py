"""The shipped content segmenter finds the content of cartoon faces it has never seen (held-out seeds)."""
import numpy as np
import torch

from gan_prune.demo.faces import make_faces
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
    # A blank image has no content.
    assert float(provider(torch.zeros(1, 3, 32, 32) - 1).mean()) < 0.2
