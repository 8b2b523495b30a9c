"""Losses of the distillation loop: adversarial (G^S against D^S and D^T), R1, path length, style mixing, KD.

Objective (method.md sections 6-7), sp = softplus:
    G^S:  sp(-D^S(x_S)) + sp(-D^T(x_S)) + KD(x_S) [+ path-length penalty, lazily]
    D^S:  sp(D^S(x_S)) + sp(-D^S(x_real)) + nickel_weight * L_NICKEL [+ R1, lazily]
    D^T:  sp(D^T(x_S)) + sp(-D^T(x_real)) [+ R1, lazily]
KD is a list of terms (gan_prune.distill.terms) chosen by the `--kd` preset (gan_prune.distill.presets):
DiME and NICKEL (`nickel-dime`, the method), CAGAN's masked L1 + LPIPS (`cagan`), or none (`none`).

Every function returns batch-mean scalar losses plus a dict of detached per-sample values for stats.jsonl;
the loop multiplies by the lazy-regularisation gain, calls backward and decides which module's parameters
take gradients. Nothing here calls an optimiser.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.distill.cagan_kd import CaganKD
from gan_prune.errors import GanPruneError



# ------------------------------------------------------------------------------------------------------------
# Generator sampling with style mixing (shared between student and teacher)

class MixedLatents:
    """Latents for one generator call: z, c and the style-mixing second latent with per-sample crossover.

    The same object drives the student and the teacher, so x_S and x_T share z, the second latent and the
    crossover point (method.md notation). `cutoff[i] == num_ws` means sample i is not mixed.
    """

    def __init__(self, z: torch.Tensor, c: torch.Tensor, z2: torch.Tensor | None = None,
                 cutoff: torch.Tensor | None = None):
        self.z, self.c, self.z2, self.cutoff = z, c, z2, cutoff

    @classmethod
    def sample(cls, batch: int, z_dim: int, num_ws: int, c: torch.Tensor, mixing_prob: float,
               device: torch.device) -> 'MixedLatents':
        z = torch.randn([batch, z_dim], device=device)
        if mixing_prob <= 0 or num_ws < 2:
            return cls(z, c)
        z2 = torch.randn([batch, z_dim], device=device)
        cutoff = torch.randint(1, num_ws, [batch], device=device)
        mixed = torch.rand([batch], device=device) < mixing_prob
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws))
        return cls(z, c, z2, cutoff)

    def head(self, n: int) -> 'MixedLatents':
        """The first n samples (path-length regularisation uses a smaller batch)."""
        pick = (lambda t: None if t is None else t[:n])
        return MixedLatents(self.z[:n], self.c[:n], pick(self.z2), pick(self.cutoff))


def map_latents(G: nn.Module, latents: MixedLatents) -> torch.Tensor:
    """ws [N, num_ws, w_dim] of G for these latents, style mixing applied."""
    ws = G.mapping(latents.z, latents.c)
    if latents.z2 is not None and latents.cutoff is not None:  # set together by MixedLatents.sample
        # The second latent must not move w_avg: it is not an extra sample of the training distribution.
        ws2 = G.mapping(latents.z2, latents.c, skip_w_avg_update=True)
        take_second = torch.arange(ws.shape[1], device=ws.device)[None, :] >= latents.cutoff[:, None]
        ws = torch.where(take_second[:, :, None], ws2, ws)
    return ws


def synthesize(G: nn.Module, latents: MixedLatents, force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(img, ws) of G for these latents with random noise inputs."""
    ws = map_latents(G, latents)
    img = G.synthesis(ws, noise_mode='random', force_fp32=force_fp32)
    return img, ws


@contextlib.contextmanager
def same_noise(device: torch.device):
    """Run the block, then rewind the global RNG: the next generator call draws the same noise inputs.

    Student and teacher have the same noise layers in the same order (pruning keeps the block structure),
    so rewinding gives x_S and x_T the same per-pixel noise, which instance-level KD needs.
    """
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        yield


# ------------------------------------------------------------------------------------------------------------
# Adversarial terms and regularisers

def generator_adversarial(logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss per sample: sp(-D(G(z)))."""
    return F.softplus(-logits).flatten()


def discriminator_adversarial(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (sp(D(fake)), sp(-D(real)))."""
    return F.softplus(fake_logits).flatten(), F.softplus(-real_logits).flatten()


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of dD(x)/dx at the real images (Mescheder et al. 2018); keeps the graph."""
    from torch_utils.ops import conv2d_gradfix
    # Only the gradient with respect to the images is asked for here; the weights get theirs from the penalty.
    with conv2d_gradfix.no_weight_gradients():
        (grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img], create_graph=True,
                                       only_inputs=True)
    return grads.square().sum(dim=[1, 2, 3])


class PathLengthRegularizer(nn.Module):
    """StyleGAN2's path-length penalty: (|J_w^T y| - a)^2 with y ~ N(0, I)/sqrt(HW) and a running mean a.

    `pl_mean` is a buffer so it is saved with the resume checkpoint. `all_reduce_mean`, if given, averages the
    batch mean length over processes so every replica keeps the same running mean.
    """

    def __init__(self, decay: float = 0.01):
        super().__init__()
        self.decay = float(decay)
        self.register_buffer('pl_mean', torch.zeros([]))

    def forward(self, img: torch.Tensor, ws: torch.Tensor,
                all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        from torch_utils.ops import conv2d_gradfix
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        # Only the gradient with respect to ws is needed here; the weights get theirs from the backward below.
        with conv2d_gradfix.no_weight_gradients():
            (grads,) = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True,
                                           only_inputs=True)
        lengths = grads.square().sum(2).mean(1).sqrt()
        batch_mean = lengths.mean().detach()
        if all_reduce_mean is not None:
            batch_mean = all_reduce_mean(batch_mean)
        pl_mean = self.pl_mean.lerp(batch_mean.to(self.pl_mean.dtype), self.decay)
        self.pl_mean.copy_(pl_mean.detach())
        penalty = (lengths - pl_mean).square()
        return penalty, lengths.detach()


# ------------------------------------------------------------------------------------------------------------
# The whole objective

class DistillLoss:
    """All loss terms of one distillation run, bound to its networks.

    G_s: student generator (trained); G_t: teacher generator (frozen); D_s: student discriminator (trained);
    D_t: teacher discriminator (trained) or None to play against D^S only.
    terms: the KD terms (gan_prune.distill.terms), each added to the G^S or the D^S loss as it declares.
    dime / nickel (with nickel_res, nickel_weight) / cagan: the same terms given as bare modules (wrapped here).
    shared_noise: the teacher images of the G phase use the student's noise inputs (False: independent noise).
    """

    def __init__(self, G_s: nn.Module, G_t: nn.Module, D_s: nn.Module, D_t: nn.Module | None = None, *,
                 terms: Sequence[nn.Module] = (),
                 dime: Callable[[torch.Tensor], torch.Tensor] | None = None, nickel: nn.Module | None = None,
                 nickel_res: int | None = None, nickel_weight: float = 10.0, cagan: CaganKD | None = None,
                 r1_gamma: float = 1.0, pl_weight: float = 2.0, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 style_mixing: float = 0.9, force_fp32: bool = True, shared_noise: bool = True,
                 all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None):
        from gan_prune.distill.terms import CaganTerm, DiMETerm, NickelTerm
        if G_s.num_ws != G_t.num_ws or G_s.z_dim != G_t.z_dim or G_s.c_dim != G_t.c_dim:
            raise GanPruneError('student and teacher generators differ in z_dim, c_dim or num_ws; the student must be '
                                'a pruned copy of the teacher (gan-prune prune)')
        self.G_s, self.G_t, self.D_s, self.D_t = G_s, G_t, D_s, D_t
        terms = list(terms)
        if dime is not None:
            terms.append(DiMETerm(dime))
        if cagan is not None:
            terms.append(CaganTerm(cagan))
        if nickel is not None:
            if nickel_res is None:
                raise ValueError('nickel_res is required with a NICKEL loss')
            terms.append(NickelTerm(nickel, nickel_res, nickel_weight))
        self.terms = terms
        self.r1_gamma, self.pl_weight = float(r1_gamma), float(pl_weight)
        self.pl_batch_shrink = max(1, int(pl_batch_shrink))
        self.style_mixing = float(style_mixing)
        self.force_fp32 = bool(force_fp32)
        self.shared_noise = bool(shared_noise)
        self.path_length = PathLengthRegularizer(pl_decay)
        self.all_reduce_mean = all_reduce_mean

    def terms_of_phase(self, phase: str) -> list[nn.Module]:
        return [t for t in self.terms if t.phase == phase]

    def trainable_terms(self) -> dict[str, nn.Module]:
        """Terms with parameters of their own (trained with D^S, saved in resume.pt), by name."""
        return {t.name: t for t in self.terms if t.trainable}

    def _term(self, name: str) -> nn.Module | None:
        return next((t for t in self.terms if t.name == name), None)

    @property
    def dime(self):
        term = self._term('dime')
        return term.dime if term is not None else None

    @property
    def nickel(self) -> nn.Module | None:
        term = self._term('nickel')
        return term.nickel if term is not None else None

    @property
    def nickel_res(self) -> int | None:
        term = self._term('nickel')
        return term.resolution if term is not None else None

    @property
    def cagan(self) -> CaganKD | None:
        term = self._term('cagan')
        return term.kd if term is not None else None

    def discriminator(self, which: str) -> nn.Module:
        """D^S for 'DS', D^T for 'DT'."""
        if which == 'DS':
            return self.D_s
        if which == 'DT' and self.D_t is not None:
            return self.D_t
        raise ValueError(f'no discriminator {which!r} in this objective; it has {", ".join(self.discriminators())}')

    def discriminators(self) -> dict[str, nn.Module]:
        return {'DS': self.D_s} if self.D_t is None else {'DS': self.D_s, 'DT': self.D_t}

    def sample_latents(self, batch: int, c: torch.Tensor, device: torch.device) -> MixedLatents:
        return MixedLatents.sample(batch, self.G_s.z_dim, self.G_s.num_ws, c, self.style_mixing, device)

    def _D(self, D: nn.Module, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return D(img, c, force_fp32=self.force_fp32)

    # -- generator

    def generator_main(self, latents: MixedLatents) -> tuple[torch.Tensor, dict]:
        """Batch-mean adversarial + KD loss of G^S, and per-sample stats."""
        stats = {}
        img_t = None
        kd_terms = self.terms_of_phase('G')
        if any(t.needs_teacher_images for t in kd_terms):
            noise = same_noise(latents.z.device) if self.shared_noise else contextlib.nullcontext()
            with torch.no_grad(), noise:
                img_t, _ = synthesize(self.G_t, latents, self.force_fp32)
        img_s, _ = synthesize(self.G_s, latents, self.force_fp32)

        logits_s = self._D(self.D_s, img_s, latents.c)
        loss = generator_adversarial(logits_s)
        stats['Loss/scores/fake_DS'] = logits_s.detach().flatten()
        stats['Loss/G/adv_DS'] = loss.detach()
        if self.D_t is not None:
            logits_t = self._D(self.D_t, img_s, latents.c)
            adv_t = generator_adversarial(logits_t)
            loss = loss + adv_t
            stats['Loss/scores/fake_DT'] = logits_t.detach().flatten()
            stats['Loss/G/adv_DT'] = adv_t.detach()
        loss = loss.mean()
        for term in kd_terms:
            value, term_stats = term(img_s, img_t)
            loss = loss + value
            stats.update(term_stats)
        stats['Loss/G/main'] = loss.detach().reshape(1)
        return loss, stats

    def generator_reg(self, latents: MixedLatents) -> tuple[torch.Tensor, dict]:
        """Batch-mean weighted path-length penalty of G^S (zero tensor when pl_weight is 0)."""
        if self.pl_weight == 0:
            return latents.z.new_zeros([]), {}
        n = max(1, latents.z.shape[0] // self.pl_batch_shrink)
        img, ws = synthesize(self.G_s, latents.head(n), self.force_fp32)
        penalty, lengths = self.path_length(img, ws, self.all_reduce_mean)
        stats = {'Loss/pl_length': lengths, 'Loss/G/pl_penalty': penalty.detach()}
        return penalty.mean() * self.pl_weight, stats

    # -- discriminators

    @torch.no_grad()
    def fake_images(self, latents: MixedLatents) -> torch.Tensor:
        """Student images for the discriminator steps (no graph into G^S)."""
        img, _ = synthesize(self.G_s, latents, self.force_fp32)
        return img.detach()

    def discriminator_main(self, which: str, fake_img: torch.Tensor, fake_c: torch.Tensor, real_img: torch.Tensor,
                           real_c: torch.Tensor, teacher_latents: MixedLatents | None = None,
                           with_r1: bool = False) -> tuple[torch.Tensor, dict]:
        """Batch-mean loss of D^S ('DS') or D^T ('DT'): adversarial, NICKEL (D^S only), and R1 if with_r1."""
        D = self.discriminator(which)
        fake_logits = self._D(D, fake_img, fake_c)
        real = real_img.detach().requires_grad_(with_r1 and self.r1_gamma > 0)
        real_logits = self._D(D, real, real_c)
        loss_fake, loss_real = discriminator_adversarial(fake_logits, real_logits)
        loss = (loss_fake + loss_real).mean()
        stats = {f'Loss/scores/fake_{which}_D': fake_logits.detach().flatten(),
                 f'Loss/scores/real_{which}': real_logits.detach().flatten(),
                 f'Loss/{which}/fake': loss_fake.detach(), f'Loss/{which}/real': loss_real.detach()}
        if with_r1 and self.r1_gamma > 0:
            penalty = r1_penalty(real_logits, real)
            loss = loss + penalty.mean() * (self.r1_gamma / 2)
            stats[f'Loss/{which}/r1_penalty'] = penalty.detach()
        if which == 'DS':
            for term in self.terms_of_phase('DS'):
                if teacher_latents is None:
                    raise ValueError(f'the {term.name} term needs the teacher latents of the discriminator step')
                value, term_stats = term(self, teacher_latents)
                loss = loss + value
                stats.update(term_stats)
        stats[f'Loss/{which}/main'] = loss.detach().reshape(1)
        return loss, stats

    def discriminator_reg(self, which: str, real_img: torch.Tensor, real_c: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Batch-mean weighted R1 penalty of one discriminator (the lazy regularisation step)."""
        D = self.discriminator(which)
        if self.r1_gamma == 0:
            return real_img.new_zeros([]), {}
        real = real_img.detach().requires_grad_(True)
        real_logits = self._D(D, real, real_c)
        penalty = r1_penalty(real_logits, real)
        return penalty.mean() * (self.r1_gamma / 2), {f'Loss/{which}/r1_penalty': penalty.detach()}

    def nickel_term(self, latents: MixedLatents) -> torch.Tensor:
        """L_NICKEL of this objective's NICKEL term (unweighted)."""
        nickel, resolution = self.nickel, self.nickel_res
        if nickel is None or resolution is None:
            raise ValueError('this objective has no NICKEL term')
        return self.nickel_features_loss(nickel, resolution, latents)

    def nickel_features_loss(self, nickel: nn.Module, resolution: int, latents: MixedLatents) -> torch.Tensor:
        """`nickel`(teacher-G features at `resolution`, D^S features on the teacher image); grad to D^S only."""
        from gan_prune.distill.nickel import DiscriminatorFeatureTap, GeneratorFeatureTap
        # Taps live only for one call: a hook left on a module would be deep-copied into snapshots.
        with torch.no_grad(), GeneratorFeatureTap(self.G_t, resolution) as g_tap:
            img_t, _ = synthesize(self.G_t, latents, self.force_fp32)
            feat_t = g_tap.pop().detach()
        with DiscriminatorFeatureTap(self.D_s, resolution) as d_tap:
            self._D(self.D_s, img_t.detach(), latents.c)
            feat_s = d_tap.pop()
        return nickel(feat_t, feat_s)
