"""Where local weight files for the frozen models are looked for (the released method's CLIP, DINO and VGG-16
files may also come from the download cache: gan_prune.distill.official_weights).

A model option that takes a weights FILE also accepts a bare file name, which is then searched for in, in order:
$GAN_PRUNE_WEIGHTS (a list separated by os.pathsep), ./weights, and <cache dir>/weights (the toolkit's cache
directory, gan_prune.core.cache: ~/.cache/gan_prune unless configured).
"""
from __future__ import annotations

import os

from gan_prune.core.cache import cache_dir

# model -> the file name its public release uses
KNOWN_FILES = {
    'face-parser': '79999_iter.pth',                    # BiSeNet, face-parsing.PyTorch
    'clip:RN50': 'RN50.pt',                            # OpenAI CLIP ResNet-50 (open_clip pretrained=FILE)
    'dino-resnet50': 'dino_resnet50_pretrain.pth',     # DINO ResNet-50 backbone state dict
    'inception': 'inception-2015-12-05.pt',            # the TorchScript Inception used by StyleGAN2-ADA metrics
}


def search_dirs() -> list[str]:
    dirs = [d for d in os.environ.get('GAN_PRUNE_WEIGHTS', '').split(os.pathsep) if d]
    dirs += [os.path.join(os.getcwd(), 'weights'), os.path.join(cache_dir(), 'weights')]
    return dirs


def resolve_weights(path_or_name: str) -> str | None:
    """An existing path as given, else the first match of its file name in search_dirs(), else None."""
    if os.path.isfile(path_or_name):
        return path_or_name
    name = os.path.basename(path_or_name)
    for d in search_dirs():
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate):
            return candidate
    return None
