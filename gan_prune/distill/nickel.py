"""NICKEL: teach the student discriminator the teacher generator's high-frequency feature structure.

L_NICKEL = sum_{j=1..levels} MSE(H_j(F_GT), H_j(P(F_DS(x_T))))

F_GT is the teacher generator's feature map at one synthesis resolution (detached: no gradient reaches the
teacher), F_DS the student discriminator's feature map of the same size computed on the teacher image x_T, H_j
the three high-frequency Haar sub-bands of level j (the low-pass band is discarded), P an optional learnable 1x1
projection from student to teacher channels. Everything is computed in float32. The loss trains D^S (and P):
give `NickelLoss.parameters()` to D^S's optimiser.

Features are fetched with forward hooks:
    GeneratorFeatureTap(G, r)       output x of synthesis block b{r} (after conv0/conv1, before toRGB), [N, C, r, r]
    DiscriminatorFeatureTap(D, r)   output x of the D block whose output is r x r, i.e. block b{2r}
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.defaults import DISTILL
from gan_prune.distill.wavelets import haar_high_bands
from gan_prune.errors import GanPruneError


class NickelLoss(nn.Module):
    """Sum over Haar levels of the MSE between teacher and student high-frequency sub-bands."""

    def __init__(self, teacher_channels: int, student_channels: int, levels: int = DISTILL['nickel_levels']):
        super().__init__()
        if levels < 1:
            raise ValueError(f'levels must be >= 1, got {levels}')
        self.teacher_channels = int(teacher_channels)
        self.student_channels = int(student_channels)
        self.levels = int(levels)
        # Only when the channel counts differ; with equal counts (the released setting) the features are compared as-is.
        self.projection = (nn.Conv2d(self.student_channels, self.teacher_channels, kernel_size=1, bias=False)
                           if self.teacher_channels != self.student_channels else None)

    @property
    def has_projection(self) -> bool:
        return self.projection is not None

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
        teacher = teacher_feature.detach().float()
        student = student_feature.float()
        if student.shape[1] != self.student_channels or teacher.shape[1] != self.teacher_channels:
            raise ValueError(f'NickelLoss expects {self.teacher_channels} teacher / {self.student_channels} student '
                             f'channels, got {teacher.shape[1]} / {student.shape[1]}')
        if self.projection is not None:
            student = F.conv2d(student, self.projection.weight.float())
        if teacher.shape[-2:] != student.shape[-2:] or teacher.shape[0] != student.shape[0]:
            raise ValueError(f'NickelLoss: teacher feature {tuple(teacher.shape)} and student feature '
                             f'{tuple(student.shape)} differ in batch or spatial size')
        loss = teacher.new_zeros(())
        for t_bands, s_bands in zip(haar_high_bands(teacher, self.levels), haar_high_bands(student, self.levels)):
            loss = loss + F.mse_loss(s_bands, t_bands)
        return loss


# ---------------------------------------------------------------------------------------------------------------
# Feature taps


def generator_feature_resolutions(G: nn.Module) -> list[int]:
    """Resolutions r for which synthesis block b{r} exists."""
    synthesis = getattr(G, 'synthesis', G)
    return [int(r) for r in synthesis.block_resolutions]


def discriminator_feature_resolutions(D: nn.Module) -> list[int]:
    """Output resolutions of D's downsampling blocks (block b{r} outputs r/2), largest first."""
    return [int(r) // 2 for r in D.block_resolutions]


def feature_resolutions(net: nn.Module) -> list[int]:
    """Feature resolutions a tap can read from `net` (a Generator, a SynthesisNetwork or a Discriminator)."""
    if hasattr(net, 'synthesis'):
        return generator_feature_resolutions(net)
    if hasattr(getattr(net, 'b4', None), 'fc'):  # a discriminator ends in the b4 epilogue (conv, fc, out)
        return discriminator_feature_resolutions(net)
    if hasattr(net, 'block_resolutions'):
        return generator_feature_resolutions(net)
    raise GanPruneError(f'{type(net).__name__} is neither a StyleGAN2-ADA generator nor a discriminator')


def nearest_resolution(net: nn.Module, wanted: int) -> int:
    """The feature resolution of `net` closest to `wanted` on a log2 scale (ties go to the larger one)."""
    return _nearest(feature_resolutions(net), wanted)


def shared_resolution(G: nn.Module, D: nn.Module, wanted: int) -> int:
    """The resolution closest to `wanted` at which both G and D have a feature map (for NICKEL on any pair)."""
    common = sorted(set(generator_feature_resolutions(G)) & set(discriminator_feature_resolutions(D)))
    if not common:
        raise GanPruneError('the generator and discriminator share no feature resolution for the NICKEL loss')
    return _nearest(common, wanted)


def _nearest(candidates: Sequence[int], wanted: int) -> int:
    if wanted <= 0:
        raise ValueError(f'wanted resolution must be positive, got {wanted}')
    return min(candidates, key=lambda r: (abs(math.log2(r) - math.log2(wanted)), -r))


class _FeatureTap:
    """Forward hook that keeps the first output (x) of one block; use as a context manager or call remove()."""

    def __init__(self, block: nn.Module, resolution: int, channels: int):
        self.block = block
        self.resolution = resolution
        self.channels = channels
        self.feature: torch.Tensor | None = None
        self._handle = block.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.feature = output[0] if isinstance(output, (tuple, list)) else output

    def pop(self) -> torch.Tensor:
        """The feature of the last forward pass; cleared so a stale graph is never reused."""
        if self.feature is None:
            raise RuntimeError('no feature captured: run the network forward after creating the tap')
        feature, self.feature = self.feature, None
        return feature

    def remove(self) -> None:
        self._handle.remove()
        self.feature = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class GeneratorFeatureTap(_FeatureTap):
    """Captures the output x of `G.synthesis.b{resolution}` ([N, C, r, r], after conv0 and conv1, before toRGB)."""

    def __init__(self, G: nn.Module, resolution: int):
        synthesis = getattr(G, 'synthesis', G)
        available = generator_feature_resolutions(G)
        if resolution not in available:
            raise GanPruneError(f'generator has no synthesis block at resolution {resolution}; choose one of '
                                f'{available}')
        block = getattr(synthesis, f'b{resolution}')
        super().__init__(block, resolution, int(block.conv1.weight.shape[0]))


class DiscriminatorFeatureTap(_FeatureTap):
    """Captures the output x of the discriminator block whose output is `resolution` x `resolution` (block b{2r})."""

    def __init__(self, D: nn.Module, resolution: int):
        available = discriminator_feature_resolutions(D)
        if resolution not in available:
            raise GanPruneError(f'discriminator has no block with {resolution}x{resolution} output; choose one of '
                                f'{available}')
        block = getattr(D, f'b{resolution * 2}')
        super().__init__(block, resolution, int(block.conv1.weight.shape[0]))
