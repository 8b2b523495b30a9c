"""The VGG-16 trunk of the perceptual distance (LPIPS, Zhang et al. 2018), loaded from local files only.

`load_lpips_vgg(FILE)`: the `lpips` package's LPIPS-VGG with its learned per-channel linear weights (shipped with
the package) on torchvision's ImageNet VGG-16 trunk read from FILE. `load_vgg16_features(FILE)`: the trunk alone
(torchvision's `vgg16().features`). Where FILE comes from when the user gives none (the official file, found,
fetched and checked) is the caller's business: gan_prune.distill.cagan_kd passes it in.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gan_prune.errors import GanPruneError

# LPIPS input scaling (Zhang et al. 2018): images in [-1, 1] are shifted/scaled per channel before VGG.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features


def load_lpips_vgg(path: str | None, official_file: Callable[[], str] | None = None) -> nn.Module:
    """lpips.LPIPS(net='vgg') with the package's linear weights and the VGG-16 trunk read from `path` (a
    torchvision vgg16 state dict), or when `path` is None from the file `official_file()` returns (asked only
    once the lpips package is known to be there). lpips never downloads anything here."""
    import warnings
    try:
        import lpips
    except ImportError:
        raise GanPruneError('--cagan-net lpips-vgg needs the lpips package: pip install lpips') from None
    if path is None:
        if official_file is None:
            raise GanPruneError('lpips-vgg needs a torchvision vgg16 state dict: use lpips-vgg:FILE')
        path = official_file()
    features = load_vgg16_features(path)
    with warnings.catch_warnings():  # lpips builds its random trunk with torchvision's deprecated pretrained=False
        warnings.simplefilter('ignore')
        model = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True, verbose=False)
    # lpips splits torchvision's features into slices that keep the layer indices: features.{i} -> slice{k}.{i}.
    trunk = {}
    for slice_name, block in model.net.named_children():
        for index in block._modules:
            layer = features[int(index)]
            for key, value in layer.state_dict().items():
                trunk[f'{slice_name}.{index}.{key}'] = value
    model.net.load_state_dict(trunk, strict=True)
    return model.eval().requires_grad_(False)


def load_vgg16_features(path: str) -> nn.Sequential:
    """torchvision's vgg16().features with the weights of the state dict at `path` (bare names are searched in
    the weights folders), in eval mode."""
    import torchvision
    from gan_prune.weights import resolve_weights
    found = resolve_weights(path)
    if found is None:
        raise GanPruneError(f'VGG16 weights file not found: {path} (give a torchvision vgg16 state dict; bare names '
                            f'are also searched in $GAN_PRUNE_WEIGHTS, ./weights and ~/.cache/gan_prune/weights)')
    net = torchvision.models.vgg16(weights=None)
    try:
        state = torch.load(found, map_location='cpu', weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith('features.')}
        net.load_state_dict(state, strict=False)
        missing = [k for k in net.state_dict() if k.startswith('features.') and k not in state]
    except Exception as e:  # pylint: disable=broad-except
        first = (str(e).strip().splitlines() or [''])[0]  # torch's size-mismatch report spans many lines
        raise GanPruneError(f'cannot read VGG16 weights {found} ({type(e).__name__}: {first}); '
                            f'give a torchvision vgg16 state dict') from e
    if missing:
        raise GanPruneError(f'{found} is not a torchvision vgg16 state dict (missing {missing[0]})')
    return net.features.eval()
