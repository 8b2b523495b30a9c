"""The knowledge-distillation terms of the objective, one class each, in one registry (`KD_TERMS`).

A KD method (`--kd`) is a preset of these terms (gan_prune.distill.presets). Each term declares what its caller
needs to know when it is registered:

    phase                 'G': added to G^S's loss (gets the student images, with their graph);
                          'DS': added to D^S's loss (gets the latents of the discriminator step)
    trainable             it has parameters of its own, trained with D^S's optimiser and saved in resume.pt
    needs_teacher_images  the G phase must render x_T = G^T(z) for the same latents
    uses_mask             it weighs pixels by the teacher image's content-of-interest mask

Adding a term is one class here: subclass `KDTerm`, implement `from_options` (None when its weight is 0) and
`forward`, register it. Add its name to a preset's `terms` to use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from gan_prune.registry import Registry

KD_TERMS: Registry['KDTerm'] = Registry('KD term')


@dataclass
class TermEnv:
    """What building a term may use besides the options: the frozen teacher G, the student D, the device,
    whether given files may run code, a log function, and a function that returns the path of the teacher
    statistics of the run's DiME spec (computing them first when needed)."""
    G_t: nn.Module
    D_s: nn.Module
    device: torch.device
    trust: bool = False
    log: Callable[[str], None] = print
    teacher_stats: Callable[[], str] | None = None


class KDTerm(nn.Module):
    """One term of the distillation objective. `forward` returns (weighted batch-mean loss, stats)."""

    name: ClassVar[str] = ''
    phase: ClassVar[str] = 'G'
    trainable: ClassVar[bool] = False
    uses_mask: ClassVar[bool] = False

    @property
    def needs_teacher_images(self) -> bool:
        return bool(KD_TERMS.info(self.name).get('needs_teacher_images', False))

    @classmethod
    def from_options(cls, opts: dict, env: TermEnv) -> 'KDTerm | None':
        raise NotImplementedError


def register_term(name: str, *, phase: str, trainable: bool = False, needs_teacher_images: bool = False,
                  uses_mask: bool = False):
    """Register a KDTerm subclass under `name` with its declared facts (also set as class attributes)."""
    if phase not in ('G', 'DS'):
        raise ValueError(f'phase must be G or DS, got {phase!r}')

    def decorate(cls: type[KDTerm]) -> type[KDTerm]:
        cls.name, cls.phase, cls.trainable, cls.uses_mask = name, phase, trainable, uses_mask
        KD_TERMS.register(name, phase=phase, trainable=trainable, needs_teacher_images=needs_teacher_images,
                          uses_mask=uses_mask)(cls)
        return cls
    return decorate


def build_terms(names, opts: dict, env: TermEnv) -> list[KDTerm]:
    """The terms named (in order) built from the options; terms switched off by their options are left out."""
    terms = []
    for name in names:
        term_class: Any = KD_TERMS.get(name)
        term = term_class.from_options(opts, env)
        if term is not None:
            terms.append(term.to(env.device))
    return terms


# ------------------------------------------------------------------------------------------------------------
# The method: DiME (G phase) and NICKEL (D^S phase)

@register_term('dime', phase='G')
class DiMETerm(KDTerm):
    """DiME: the student batch's embeddings against the teacher's embedding distribution, in frozen embedders
    (gan_prune.distill.dime). `dime` is a DiMELoss (or any callable images -> weighted scalar)."""

    def __init__(self, dime: Any):
        super().__init__()
        self.dime = dime

    @property
    def needs_teacher_images(self) -> bool:
        return bool(getattr(self.dime, 'needs_teacher_images', False))

    @classmethod
    def from_options(cls, opts, env):
        if not opts.get('dime') or str(opts['dime']).strip().lower() == 'none':
            return None
        from gan_prune.distill.dime import DiMELoss
        from gan_prune.distill.teacher_stats import load_teacher_stats
        stats = load_teacher_stats(env.teacher_stats()) if env.teacher_stats is not None else None
        normalize = stats.normalize if stats is not None else False
        # The embedders prepare images the way the statistics were made (--normalize of teacher-stats).
        dime = DiMELoss.build(opts['dime'], estimator=opts['dime_estimator'], stats=stats,
                              weight_files=opts.get('embed_weights') or None, normalize=normalize,
                              trust=env.trust, chunk=opts.get('dime_batch'))
        return cls(dime)

    def forward(self, img_s: torch.Tensor, img_t: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        stats: dict[str, torch.Tensor] = {}
        loss: torch.Tensor
        if hasattr(self.dime, 'term_values'):  # DiMELoss: log every embedder's term on its own
            values = self.dime.term_values(img_s, img_t)
            loss = torch.stack([w * values[n] for n, w in zip(self.dime.names, self.dime.weights)]).sum()
            for name, value in values.items():
                stats[f'Loss/G/dime_{name}'] = value.detach().reshape(1)
        else:
            loss = self.dime(img_s)
        stats['Loss/G/dime'] = loss.detach().reshape(1)
        return loss, stats


@register_term('nickel', phase='DS', trainable=True)
class NickelTerm(KDTerm):
    """NICKEL: teacher-G features vs D^S features of the teacher image, high Haar bands (gan_prune.distill.nickel).
    Trains D^S (and the 1x1 projection inside `nickel` when the channel counts differ)."""

    def __init__(self, nickel: nn.Module, resolution: int, weight: float):
        super().__init__()
        self.nickel, self.resolution, self.weight = nickel, int(resolution), float(weight)

    @classmethod
    def from_options(cls, opts, env):
        if not opts.get('nickel_weight'):
            return None
        from gan_prune.distill.nickel import (DiscriminatorFeatureTap, GeneratorFeatureTap, NickelLoss,
                                              shared_resolution)
        wanted = int(opts.get('nickel_res') or max(4, env.G_t.img_resolution // 4))
        res = shared_resolution(env.G_t, env.D_s, wanted)
        with GeneratorFeatureTap(env.G_t, res) as gt, DiscriminatorFeatureTap(env.D_s, res) as ds:
            t_ch, s_ch = gt.channels, ds.channels
        levels = min(int(opts['nickel_levels']), int(math.log2(res)))
        nickel = NickelLoss(t_ch, s_ch, levels=levels)
        env.log(f'NICKEL at {res}x{res}: teacher G {t_ch} ch, student D {s_ch} ch, {levels} Haar levels'
                f'{", 1x1 projection" if nickel.has_projection else ""}')
        return cls(nickel, res, float(opts['nickel_weight']))

    def forward(self, objective: Any, latents: Any) -> tuple[torch.Tensor, dict]:
        value = objective.nickel_features_loss(self.nickel, self.resolution, latents)
        return self.weight * value, {'Loss/DS/nickel': value.detach().reshape(1)}


# ------------------------------------------------------------------------------------------------------------
# CAGAN's instance-level KD (G phase)

@register_term('cagan', phase='G', needs_teacher_images=True, uses_mask=True)
class CaganTerm(KDTerm):
    """CAGAN: l1 * mean|M (x_T - x_S)| + perceptual * P(M x_S, M x_T) with M the teacher image's content mask
    (gan_prune.distill.cagan_kd.CaganKD)."""

    def __init__(self, kd: nn.Module):
        super().__init__()
        self.kd = kd

    @classmethod
    def from_options(cls, opts, env):
        from gan_prune.distill.cagan_kd import CaganKD, PerceptualDistance
        if not opts.get('cagan_l1') and not opts.get('cagan_perceptual'):
            return None
        perceptual = PerceptualDistance(opts['cagan_net'], trust=env.trust) if opts['cagan_perceptual'] > 0 else None
        mask = None  # 'none': every pixel counts, and skipping the multiply is cheaper than a ones mask
        if str(opts.get('cagan_mask') or 'none') != 'none':
            from gan_prune.prune.masks import build_mask
            mask = build_mask(opts['cagan_mask'], opts.get('parser_weights'), trust=env.trust,
                              option='--cagan-mask').to(env.device)
        return cls(CaganKD(perceptual, opts['cagan_l1'], opts['cagan_perceptual'], mask=mask))

    def forward(self, img_s: torch.Tensor, img_t: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        if img_t is None:
            raise ValueError('the cagan term needs the teacher images of the same latents')
        l1, perceptual = self.kd(img_s, img_t)
        loss = self.kd.l1_weight * l1.mean() + self.kd.perceptual_weight * perceptual.mean()
        return loss, {'Loss/G/kd_l1': l1.detach(), 'Loss/G/kd_perceptual': perceptual.detach()}
