"""BiSeNet face parser (19 classes), with the parameter names of the public `79999_iter.pth` weights.

Architecture (Yu et al., "BiSeNet", ECCV 2018, as trained for CelebAMask-HQ face parsing):
- context path: a ResNet-18 backbone (features at strides 8, 16, 32), attention refinement modules (ARM) on the
  stride-16 and stride-32 features, a global-average "tail" added to the stride-32 branch, nearest-neighbour
  up-sampling with 3x3 heads;
- spatial path: the stride-8 ResNet features. The public face-parsing weights were trained with the backbone's
  stride-8 output standing in for a separate spatial path, so there are no `sp.*` parameters in the file;
- feature fusion module (FFM) that concatenates the spatial and context features and re-weights them with a
  channel attention vector;
- three 19-class output heads (the main one on the fused features, two auxiliary ones used in training).

Only the architecture lives here; the weights come from the user's file (`load_bisenet(path)`).
Class 0 is background and 16 is cloth in the CelebAMask-HQ label order the weights use.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.errors import GanPruneError

NUM_CLASSES = 19
INPUT_SIZE = 512
# ImageNet statistics the backbone was trained with (input in [0, 1] before normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND_CLASS = 0
CLOTH_CLASS = 16


class ConvBNReLU(nn.Module):
    """conv (no bias) -> batch norm -> ReLU; parameter names `conv.*`, `bn.*`."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, kernel_size=ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; `downsample` (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_chan, out_chan, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chan))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_chan: int, out_chan: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_chan, out_chan, stride)]
    blocks += [BasicBlock(out_chan, out_chan, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the stride-8, -16 and -32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 2, 1)
        self.layer2 = _layer(64, 128, 2, 2)
        self.layer3 = _layer(128, 256, 2, 2)
        self.layer4 = _layer(256, 512, 2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBNReLU, then a sigmoid channel attention from the globally pooled features."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan, ks=3, stride=1, padding=1)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, kernel_size=1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    """Backbone + ARMs + global context; returns (stride-8 backbone features, context at /8, context at /16)."""

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_head16 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        global_context = F.interpolate(global_context, size=feat32.shape[2:], mode='nearest')

        feat32_sum = self.arm32(feat32) + global_context
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[2:], mode='nearest'))

        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[2:], mode='nearest'))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """Concatenate spatial and context features, 1x1 ConvBNReLU, then add an attention-weighted copy."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, stride=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, kernel_size=1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = feat.mean(dim=(2, 3), keepdim=True)
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return feat * atten + feat


class OutputHead(nn.Module):
    """3x3 ConvBNReLU then a 1x1 classifier (no bias); parameter names `conv.*`, `conv_out.*`."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan, ks=3, stride=1, padding=1)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser: NCHW ImageNet-normalised RGB -> per-pixel class logits at the input size.

    `forward` returns (main, aux16, aux32) logits like the trained model; `parse` returns only the main one.
    """

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        fused = self.ffm(feat_res8, feat_cp8)
        def upsample(o: torch.Tensor) -> torch.Tensor:
            return F.interpolate(o, size=size, mode='bilinear', align_corners=True)
        return upsample(self.conv_out(fused)), upsample(self.conv_out16(feat_cp8)), upsample(self.conv_out32(feat_cp16))

    def parse(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits only (skips the two auxiliary heads)."""
        size = x.shape[2:]
        feat_res8, feat_cp8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat_res8, feat_cp8))
        return F.interpolate(logits, size=size, mode='bilinear', align_corners=True)


def load_bisenet(path: str, device: torch.device | str = 'cpu') -> BiSeNet:
    """Build a BiSeNet and load a `79999_iter.pth`-style state dict; eval mode, frozen.

    Accepts a plain state dict, one wrapped in {'state_dict': ...}, and keys with a DataParallel `module.` prefix.
    """
    if not os.path.isfile(path):
        raise GanPruneError(f'face-parser weights not found: {path}; pass the path of 79999_iter.pth '
                            f'(face-parsing BiSeNet) to --parser-weights')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unreadable or not a torch file
        raise GanPruneError(f'cannot read face-parser weights {path}: {type(e).__name__}: {e}') from e
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    if not isinstance(state, dict):
        raise GanPruneError(f'{path} does not hold a state dict; expected the BiSeNet 79999_iter.pth weights')
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
    net = BiSeNet(NUM_CLASSES)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f'missing {missing[0]!r}' if missing else f'unexpected {unexpected[0]!r}'
        raise GanPruneError(f'{path} is not a 19-class BiSeNet face-parser state dict ({what}, '
                            f'{len(missing)} missing / {len(unexpected)} unexpected keys)')
    bad = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise GanPruneError(f'{path}: shape of {k} is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}; '
                            f'not the 19-class BiSeNet face-parser weights')
    net.load_state_dict(state, strict=False)
    return net.to(device).eval().requires_grad_(False)
