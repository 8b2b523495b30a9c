"""Channel importance criteria: one small class per criterion behind one interface, in the CRITERIA registry.

Every criterion returns one score vector per prunable feature map of the generator's synthesis network (names
from gan_prune.prune.surgery.feature_maps: 'b4.const', 'b{r}.mid', 'b{r}.out'). Higher means more important;
the pruner keeps the highest-scoring channels of each feature map.

A feature map is scored where it is consumed (CAGAN): at the input channels of the layer that reads it.
- 'b4.const' by b4.conv1, 'b{r}.mid' by b{r}.conv1, 'b{r}.out' by the next block's conv0, and the last
  block's output by its toRGB layer (the only toRGB scored).
- The learned 4x4 constant is a feature map like any other: its channels get b4.conv1's input-channel scores,
  and the constant is cut with the same indices as b4.conv1's input (and that layer's style rows).
A batch is run in micro-batches whose weight gradients are summed before the absolute value is taken, so the
score of a batch of 8 is exactly that of one pass over 8 images; only peak memory depends on micro_batch.

Criteria (registered with the facts a caller asks instead of looking at classes: needs_mask, needs_samples,
needs_gradients, the constructor `options` it takes, and its default `samples` and `batch`):
- content-aware: CAGAN. Images x = G(z) (const noise), a content-of-interest mask M, salt-and-pepper noise
  (probability noise_prob per masked pixel, value +1 or -1 on all colour channels) gives a detached x_noisy;
  L = sum |x_noisy - x| is back-propagated and a channel's score is mean_{out,kh,kw} |dL/dW[:, channel]|,
  summed over batches. It needs a content mask.
- gradient-unmasked: the same gradient score with an all-ones mask (every pixel perturbed); an ablation.
- l1-out: CAGAN's data-free score, the L1 norm of a channel's outgoing effective weights (see L1OutImportance).
- weight-l1: mean |W| over (out, kh, kw) of the consuming layer's input channel (raw weights, data-free).
- random: uniform random scores from the seed (a baseline).
- diversity: DCP-GAN's diversity-aware score (see DiversityImportance).
"""
from __future__ import annotations

import copy
import torch

from gan_prune.errors import GanPruneError
from gan_prune.prune.masks import MaskProvider, OnesMask
from gan_prune.prune.surgery import feature_maps, scoring_layers
from gan_prune.registry import Registry


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', disable=not enabled, leave=False)


class Importance:
    """Interface. `scores(G, ...)` -> {feature map name: float64 CPU tensor [channels]}."""

    name = 'importance'

    def scores(self, G: torch.nn.Module, *, samples: int = 400, batch: int = 8, seed: int = 0,
               device: torch.device | str = 'cpu', progress: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain-data description stored in the output pickle."""
        return {'criterion': self.name}


def sample_latents(G: torch.nn.Module, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z [samples, z_dim] and one-hot c [samples, c_dim] (random classes) from one seeded CPU generator."""
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([samples, G.z_dim], generator=gen)
    c = torch.zeros([samples, G.c_dim])
    if G.c_dim > 0:
        classes = torch.randint(0, G.c_dim, [samples], generator=gen)
        c[torch.arange(samples), classes] = 1
    return z, c


def salt_and_pepper(images: torch.Tensor, mask: torch.Tensor, prob: float, gen: torch.Generator | None = None,
                    uniforms: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Copy of `images` where each masked pixel is, with probability `prob`, set to +1 or -1 (all channels).

    The two uniform fields ([N, 1, H, W]: hit, sign) come from `gen`, or are given (pre-drawn for a whole batch,
    so that splitting the batch into micro-batches does not change the noise).
    """
    n, _, h, w = images.shape
    if uniforms is None:
        uniforms = (torch.rand([n, 1, h, w], generator=gen), torch.rand([n, 1, h, w], generator=gen))
    hit_u, sign_u = (u.to(images.device) for u in uniforms)
    value = torch.where(sign_u < 0.5, 1.0, -1.0).to(images.dtype)
    hit = (hit_u < prob) & (mask > 0.5)
    return torch.where(hit, value, images)


class _ScoringCopy:
    """A float32 copy of G on `device` with grads enabled only on the weights that score each feature map."""

    def __init__(self, G: torch.nn.Module, device: torch.device | str):
        self.G = copy.deepcopy(G).float().to(device).eval().requires_grad_(False)
        self.layers = scoring_layers(self.G)  # feature map -> layer module
        for layer in self.layers.values():
            layer.weight.requires_grad_(True)

    def grad_scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in self.layers.items():
            grad = layer.weight.grad
            if grad is None:  # layer not on the graph (cannot happen for a well-formed G)
                out[name] = torch.zeros(layer.weight.shape[1], dtype=torch.float64)
            else:
                out[name] = grad.detach().abs().mean(dim=(0, 2, 3)).double().cpu()
        return out

    def zero_grad(self) -> None:
        for layer in self.layers.values():
            layer.weight.grad = None


CRITERIA: Registry[Importance] = Registry('criterion')

_GRADIENT_OPTIONS = ('noise_prob', 'micro_batch')


def _perturbation_loss(G: torch.nn.Module, ws: torch.Tensor, mask_provider: MaskProvider, noise_prob: float,
                       uniforms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images = G.synthesis(ws, noise_mode='const', force_fp32=True)
    with torch.no_grad():
        mask = mask_provider(images.detach())
        noisy = salt_and_pepper(images.detach(), mask, noise_prob, uniforms=uniforms)
    return (noisy - images).abs().sum()


def _accumulate_batch_grads(G: torch.nn.Module, ws: torch.Tensor, mask_provider: MaskProvider, noise_prob: float,
                            gen: torch.Generator, micro_batch: int) -> None:
    """Backward of L(batch) into the weights' .grad, in micro-batches (the summed grads are the batch's grads).

    Splitting only bounds peak memory; the noise for the whole batch is drawn first, so results do not depend
    on the micro-batch size.
    """
    n, res = ws.shape[0], int(G.img_resolution)
    hit_u = torch.rand([n, 1, res, res], generator=gen)
    sign_u = torch.rand([n, 1, res, res], generator=gen)
    for start in range(0, n, micro_batch):
        end = min(n, start + micro_batch)
        _perturbation_loss(G, ws[start:end], mask_provider, noise_prob, (hit_u[start:end], sign_u[start:end])).backward()


class GradientImportance(Importance):
    """CAGAN's gradient score under a mask provider (the shared machinery of content-aware and gradient-unmasked)."""

    def __init__(self, mask: MaskProvider, noise_prob: float = 0.05, micro_batch: int = 4):
        self.mask = mask
        self.noise_prob = float(noise_prob)
        self.micro_batch = max(1, int(micro_batch))  # images per forward/backward pass (memory bound only)

    def describe(self) -> dict:
        return {'criterion': self.name, 'mask': self.mask.name, 'noise_prob': self.noise_prob}

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        _check_sampling(samples, batch)
        work = _ScoringCopy(G, device)
        mask = self.mask.to(device)
        gen = torch.Generator().manual_seed(int(seed) + 1)  # noise stream, separate from the latents
        totals = _zero_scores(work)
        with _progress_bar(samples, f'scoring ({self.name})', progress) as bar:
            for ws in _ws_batches(work.G, samples, batch, seed, device):
                work.zero_grad()
                _accumulate_batch_grads(work.G, ws, mask, self.noise_prob, gen, self.micro_batch)
                for name, s in work.grad_scores().items():
                    totals[name] += s
                bar.update(ws.shape[0])
        work.zero_grad()
        return totals


@CRITERIA.register('content-aware', needs_mask=True, needs_samples=True, needs_gradients=True,
                   options=('mask',) + _GRADIENT_OPTIONS, samples=400, batch=8,
                   summary='CAGAN gradient score under a content mask (the method\'s criterion)')
class ContentAwareImportance(GradientImportance):
    name = 'content-aware'


@CRITERIA.register('gradient-unmasked', needs_mask=False, needs_samples=True, needs_gradients=True,
                   options=_GRADIENT_OPTIONS, samples=400, batch=8,
                   summary='the same gradient score with an all-ones mask (ablation)')
class GradientUnmaskedImportance(GradientImportance):
    name = 'gradient-unmasked'

    def __init__(self, noise_prob: float = 0.05, micro_batch: int = 4):
        super().__init__(OnesMask(), noise_prob, micro_batch)


@CRITERIA.register('l1-out', needs_mask=False, needs_samples=True, needs_gradients=False, options=(),
                   samples=400, batch=8, summary="CAGAN's data-free L1 norm of outgoing effective weights")
class L1OutImportance(Importance):
    """CAGAN's l1-out: the L1 norm of each input channel's outgoing effective weights, averaged over w samples.

    For a modulated conv with weight W[o, i, kh, kw] and styles s_n = affine(w_n) of sample n, the effective
    weight is W[o, i, kh, kw] * s_n[i] * d_n[o] with the demodulation d_n[o] = (sum_{i,kh,kw} (W s_n)^2 +
    1e-8)^-1/2. The score of input channel i is

        sum_{o,kh,kw} | mean_n W[o, i, kh, kw] s_n[i] d_n[o] |  =  sum_o |M[o, i]| sum_{kh,kw} |W[o, i, kh, kw]|

    with M[o, i] = mean_n d_n[o] s_n[i]. The last toRGB layer is not demodulated; its effective weight is
    W[o, i] * s_n[i] * weight_gain. No image is rendered and nothing is differentiated: `samples` latents are
    mapped to w (no truncation) and fed to the layers' affines.
    """

    name = 'l1-out'

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        _check_sampling(samples, batch)
        work = _ScoringCopy(G, device)
        z, c = sample_latents(work.G, samples, seed)
        with torch.no_grad():
            w = torch.cat([work.G.mapping(z[i:i + batch].to(device), c[i:i + batch].to(device))[:, 0]
                           for i in range(0, samples, batch)])
            return {name: _outgoing_l1(layer, w).double().cpu() for name, layer in work.layers.items()}


def _outgoing_l1(layer: torch.nn.Module, w: torch.Tensor) -> torch.Tensor:
    """l1-out score of `layer`'s input channels for the w samples [N, w_dim] (see L1OutImportance)."""
    weight = layer.weight.detach().double()                      # [O, I, kh, kw]
    styles = layer.affine(w).double()                             # [N, I]
    kernel_l1 = weight.abs().sum(dim=(2, 3))                      # [O, I]
    if _is_torgb(layer):
        mean_style = styles.mean(dim=0) * float(layer.weight_gain)  # [I]
        return (kernel_l1 * mean_style.abs()[None, :]).sum(dim=0)
    demod = (styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8).rsqrt()  # [N, O]
    mean_coef = demod.T @ styles / styles.shape[0]                # [O, I]: mean_n d_n[o] s_n[i]
    return (kernel_l1 * mean_coef.abs()).sum(dim=0)


def _is_torgb(layer: torch.nn.Module) -> bool:
    from training import networks
    return isinstance(layer, networks.ToRGBLayer)


@CRITERIA.register('weight-l1', needs_mask=False, needs_samples=False, needs_gradients=False, options=(),
                   summary='mean |W| of the raw weights (data-free)')
class WeightL1Importance(Importance):
    name = 'weight-l1'

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        return {name: layer.weight.detach().abs().mean(dim=(0, 2, 3)).double().cpu()
                for name, layer in scoring_layers(G).items()}


@CRITERIA.register('random', needs_mask=False, needs_samples=False, needs_gradients=False, options=(),
                   summary='uniform random scores from the seed (baseline)')
class RandomImportance(Importance):
    name = 'random'

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        gen = torch.Generator().manual_seed(int(seed))
        return {name: torch.rand(channels, generator=gen, dtype=torch.float64)
                for name, channels in feature_maps(G).items()}


@CRITERIA.register('diversity', needs_mask=False, needs_samples=True, needs_gradients=True,
                   options=('micro_batch', 'directions', 'strength', 'pca_samples'), samples=5000, batch=5,
                   summary="DCP-GAN's diversity-aware score")
class DiversityImportance(Importance):
    """DCP-GAN: how differently a channel responds to moves of w along its principal directions.

    A PCA of `pca_samples` mapped latents gives unit directions u_j and their explained-variance ratios p_j. For
    every batch of latents (w_1..w_B), K = `directions` directions d_1..d_K are drawn with replacement with
    probabilities p_j, and for each d_k

        L_k = sum_n | G(w_n + alpha d_k) - G(w_n) |,     G(w + alpha d_k) detached, noise off, no mask,
        g_k[c] = mean_{out,kh,kw} | dL_k / dW[:, c] |     (the consuming layer's weight, as for content-aware).

    The score of channel c is sum over batches of Var_k(g_k[c]) = (1/K) sum_k (g_k[c] - mean_k g_k[c])^2
    (population variance; DCP-GAN's sum of squared deviations is K times this, the same ranking).
    alpha = `strength` (5). The directions are the same for every layer (w + alpha d in every ws slot).
    """

    name = 'diversity'

    def __init__(self, micro_batch: int = 4, directions: int = 10, strength: float = 5.0, pca_samples: int = 10000):
        self.micro_batch = max(1, int(micro_batch))
        self.directions = int(directions)
        self.strength = float(strength)
        self.pca_samples = int(pca_samples)
        if self.directions < 2:
            raise GanPruneError(f'--directions {self.directions}: the diversity score is a variance across '
                                f'directions; give at least 2')
        if self.pca_samples < 2:
            raise GanPruneError(f'--pca-samples {self.pca_samples}: the PCA of w needs at least 2 samples')

    def describe(self) -> dict:
        return {'criterion': self.name, 'directions': self.directions, 'strength': self.strength,
                'pca_samples': self.pca_samples}

    @torch.no_grad()
    def principal_components(self, G: torch.nn.Module, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit principal directions of W (rows [P, w_dim]) and their explained-variance ratios [P] (sum 1)."""
        z, c = sample_latents(G, self.pca_samples, int(seed) + 2)
        w = torch.cat([G.mapping(z[i:i + 500].to(device), c[i:i + 500].to(device))[:, 0].double().cpu()
                       for i in range(0, len(z), 500)])
        w = w - w.mean(dim=0, keepdim=True)
        _, singular, vh = torch.linalg.svd(w, full_matrices=False)
        variance = singular.square()
        return vh.float(), variance / variance.sum()

    def draw_directions(self, components: torch.Tensor, var_ratio: torch.Tensor,
                        gen: torch.Generator) -> torch.Tensor:
        """K directions [K, w_dim] drawn with replacement in proportion to explained variance."""
        picks = torch.multinomial(var_ratio.double(), self.directions, replacement=True, generator=gen)
        return components[picks]

    def scores(self, G, *, samples=5000, batch=5, seed=0, device='cpu', progress=False):
        _check_sampling(samples, batch)
        work = _ScoringCopy(G, device)
        components, var_ratio = self.principal_components(work.G, seed, device)
        gen = torch.Generator().manual_seed(int(seed) + 3)  # direction draws, separate from latents and PCA
        totals = _zero_scores(work)
        with _progress_bar(samples * self.directions, f'scoring ({self.name})', progress) as bar:
            for ws in _ws_batches(work.G, samples, batch, seed, device):
                per_direction = []
                for d in self.draw_directions(components, var_ratio, gen).to(device):
                    work.zero_grad()
                    for start in range(0, ws.shape[0], self.micro_batch):
                        _edit_loss(work.G, ws[start:start + self.micro_batch], self.strength * d).backward()
                    per_direction.append(work.grad_scores())
                    bar.update(ws.shape[0])
                for name in totals:
                    stacked = torch.stack([g[name] for g in per_direction])
                    totals[name] += stacked.var(dim=0, unbiased=False)
        work.zero_grad()
        return totals


def _edit_loss(G: torch.nn.Module, ws: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """sum |G(w + offset) - G(w)| with the edited image detached and noise off (DCP-GAN)."""
    with torch.no_grad():
        edited = G.synthesis(ws + offset, noise_mode='none', force_fp32=True)
    return (edited - G.synthesis(ws, noise_mode='none', force_fp32=True)).abs().sum()


def _ws_batches(G, samples, batch, seed, device):
    """Mapped latents [b, num_ws, w_dim] of `samples` seeded latents, `batch` at a time."""
    z, c = sample_latents(G, samples, seed)
    for start in range(0, samples, batch):
        zb, cb = z[start:start + batch].to(device), c[start:start + batch].to(device)
        with torch.no_grad():
            ws = G.mapping(zb, cb)
        yield ws  # outside no_grad: the consumer back-propagates while this generator is suspended


def _zero_scores(work: _ScoringCopy) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(layer.weight.shape[1], dtype=torch.float64) for name, layer in work.layers.items()}


def _check_sampling(samples: int, batch: int) -> None:
    if samples < 1 or batch < 1:
        raise GanPruneError(f'--samples ({samples}) and --batch ({batch}) must be at least 1')


def criterion_help() -> str:
    """'name: summary; ...' for --help, from the registry."""
    return '; '.join(f'{name}: {CRITERIA.info(name)["summary"]}' for name in CRITERIA.names())


def keep_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` highest scores; ties go to the lower index, so results are stable."""
    scores = scores.double().cpu()
    if not 1 <= keep <= len(scores):
        raise ValueError(f'cannot keep {keep} of {len(scores)} channels')
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)
