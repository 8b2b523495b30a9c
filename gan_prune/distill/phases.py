"""The phases of one training iteration, as data: which modules a phase trains, with which optimiser, how often,
with which loss gain, on which inputs.

A training iteration runs the phases that are due, in list order (StyleGAN2's loop has the same shape):

    G      G^S against D^S (and D^T) plus the G-side KD terms              every iteration
    Greg   G^S path-length penalty, loss x interval                       every g_reg_interval iterations
    DS     D^S adversarial plus the D-side KD terms (NICKEL trains with it) every iteration
    DSreg  D^S R1 penalty, loss x interval                                every d_reg_interval iterations
    DT     D^T adversarial (when the teacher D plays)                      every iteration
    DTreg  D^T R1 penalty                                                  every d_reg_interval iterations

Without a lazy interval, a regulariser is part of its main phase instead (R1) or off (path length).

Inputs are drawn when the first phase that needs them runs, so the order of random draws follows the phases:
each G phase draws its own latents; the D phases share one batch of real images, latents and the student's
images of those latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from gan_prune.distill.losses import DistillLoss, MixedLatents

# Input kinds a phase asks for.
LATENTS = 'latents'  # fresh latents (and labels) for every round, drawn when the phase runs
DISCRIMINATOR_BATCH = 'discriminator batch'  # one per iteration, shared by the D phases

LossAndStats = tuple[torch.Tensor, dict]


@dataclass(frozen=True)
class Phase:
    """One optimiser step: `compute(inputs of one round)` -> (batch-mean loss, stats), accumulated over the
    rounds with `gain`, for the parameters of `modules`, every `interval` iterations."""
    name: str
    modules: tuple[nn.Module, ...]
    optimizer: torch.optim.Optimizer
    compute: Callable[[Any], LossAndStats]
    inputs: str = LATENTS
    interval: int = 1
    gain: float = 1.0

    def due(self, batch_idx: int) -> bool:
        return batch_idx % self.interval == 0

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]


@dataclass(frozen=True)
class DiscriminatorRound:
    """The inputs of one round of a D phase: real images and labels, latents, and the student's images of them."""
    real_img: torch.Tensor
    real_c: torch.Tensor
    latents: MixedLatents
    fake_img: torch.Tensor


class StepInputs:
    """The inputs of one iteration's phases, drawn when a phase first asks for them."""

    def __init__(self, loss: DistillLoss, source: Any, batch_gpu: int, rounds: int, device: torch.device):
        self.loss, self.source, self.batch_gpu, self.rounds, self.device = loss, source, batch_gpu, rounds, device
        self._discriminator_batch: list[DiscriminatorRound] | None = None

    def draw(self, kind: str) -> list:
        """One entry per round."""
        if kind == LATENTS:
            return self._latents()
        if kind == DISCRIMINATOR_BATCH:
            if self._discriminator_batch is None:
                reals = [self.source.next() for _ in range(self.rounds)]
                latents = self._latents()
                fakes = [self.loss.fake_images(lat) for lat in latents]
                self._discriminator_batch = [DiscriminatorRound(real[0], real[1], lat, fake)
                                             for real, lat, fake in zip(reals, latents, fakes)]
            return self._discriminator_batch
        raise ValueError(f'unknown phase input {kind!r}; one of {LATENTS!r}, {DISCRIMINATOR_BATCH!r}')

    def _latents(self) -> list[MixedLatents]:
        bg = self.batch_gpu
        return [self.loss.sample_latents(bg, self.source.sample_labels(bg), self.device) for _ in range(self.rounds)]


def build_phases(loss: DistillLoss, opt_G: torch.optim.Optimizer, opt_D: dict[str, torch.optim.Optimizer],
                 g_interval: int | None, d_interval: int | None) -> list[Phase]:
    """The phases of the objective `loss` in the order they run. `opt_D`: one optimiser per discriminator
    ('DS', 'DT'); `g_interval` / `d_interval`: lazy path-length / R1 intervals (None: no lazy step).

    The loss functions are looked up on `loss` when a phase runs, not when it is built."""
    phases = [Phase('G', (loss.G_s,), opt_G, lambda latents: loss.generator_main(latents))]
    if g_interval:
        phases.append(Phase('Greg', (loss.G_s,), opt_G, lambda latents: loss.generator_reg(latents),
                            interval=g_interval, gain=float(g_interval)))
    r1_in_main = d_interval is None and loss.r1_gamma > 0
    for which, D in loss.discriminators().items():
        trained: tuple[nn.Module, ...] = (D,)
        if which == 'DS':  # the trainable KD terms (NICKEL's projection) learn with D^S
            trained += tuple(loss.trainable_terms().values())
        phases.append(Phase(which, trained, opt_D[which], _discriminator_main(loss, which, r1_in_main),
                            inputs=DISCRIMINATOR_BATCH))
        if d_interval:
            phases.append(Phase(f'{which}reg', (D,), opt_D[which], _discriminator_reg(loss, which),
                                inputs=DISCRIMINATOR_BATCH, interval=d_interval, gain=float(d_interval)))
    return phases


def _discriminator_main(loss: DistillLoss, which: str, with_r1: bool) -> Callable[[DiscriminatorRound], LossAndStats]:
    def compute(b: DiscriminatorRound) -> LossAndStats:
        return loss.discriminator_main(which, b.fake_img, b.latents.c, b.real_img, b.real_c,
                                       teacher_latents=b.latents, with_r1=with_r1)
    return compute


def _discriminator_reg(loss: DistillLoss, which: str) -> Callable[[DiscriminatorRound], LossAndStats]:
    def compute(b: DiscriminatorRound) -> LossAndStats:
        return loss.discriminator_reg(which, b.real_img, b.real_c)
    return compute
