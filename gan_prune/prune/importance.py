"""Channel importance criteria: one small class per criterion behind one interface.

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

Criteria:
- content-aware: CAGAN. Images x = G(z) (const noise), a content-of-interest mask M, salt-and-pepper noise
  (probability noise_prob per masked pixel, value +1 or -1 on all colour channels) gives a detached x_noisy;
  L = sum |x_noisy - x| is back-propagated and a channel's score is mean_{out,kh,kw} |dL/dW[:, channel]|,
  summed over batches.
- l1-out: the same gradient score with an all-ones mask.
- weight-l1: mean |W| over (out, kh, kw) of the consuming layer's input channel (data-free).
- random: uniform random scores from the seed (a baseline).
- diversity: DCP-GAN. The gradient score is computed with the latents moved along K principal directions of W
  space (w + strength * d_k, d_k unit length); a channel's score is the variance over k of its K scores.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from gan_prune.prune.masks import MaskProvider, OnesMask
from gan_prune.prune.surgery import feature_maps, scoring_layers


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', disable=not enabled, leave=False)


class Importance:
    """Interface. `scores(G, ...)` -> {feature map name: float64 CPU tensor [channels]}."""

    name = 'importance'
    needs_samples = True  # whether it renders images (and so uses samples/batch/mask)

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
    """CAGAN's gradient score under a mask provider (content-aware with a parser, l1-out with all ones)."""

    name = 'content-aware'

    def __init__(self, mask: MaskProvider | None = None, noise_prob: float = 0.05, micro_batch: int = 4):
        self.mask = mask if mask is not None else OnesMask()
        self.noise_prob = float(noise_prob)
        self.micro_batch = max(1, int(micro_batch))  # images per forward/backward pass (memory bound only)

    def describe(self) -> dict:
        return {'criterion': self.name, 'mask': self.mask.name, 'noise_prob': self.noise_prob}

    def _ws_batches(self, G, samples, batch, seed, device):
        z, c = sample_latents(G, samples, seed)
        for start in range(0, samples, batch):
            zb, cb = z[start:start + batch].to(device), c[start:start + batch].to(device)
            with torch.no_grad():
                ws = G.mapping(zb, cb)
            yield ws  # outside no_grad: the consumer back-propagates while this generator is suspended

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        _check_sampling(samples, batch)
        work = _ScoringCopy(G, device)
        mask = self.mask.to(device)
        gen = torch.Generator().manual_seed(int(seed) + 1)  # noise stream, separate from the latents
        totals = {name: torch.zeros(layer.weight.shape[1], dtype=torch.float64) for name, layer in work.layers.items()}
        with _progress_bar(samples, f'scoring ({self.name})', progress) as bar:
            for ws in self._ws_batches(work.G, samples, batch, seed, device):
                work.zero_grad()
                _accumulate_batch_grads(work.G, ws, mask, self.noise_prob, gen, self.micro_batch)
                for name, s in work.grad_scores().items():
                    totals[name] += s
                bar.update(ws.shape[0])
        work.zero_grad()
        return totals


class ContentAwareImportance(GradientImportance):
    name = 'content-aware'


class L1OutImportance(GradientImportance):
    name = 'l1-out'

    def __init__(self, mask: MaskProvider | None = None, noise_prob: float = 0.05, micro_batch: int = 4):
        super().__init__(OnesMask(), noise_prob, micro_batch)  # the whole image, whatever mask was configured


class WeightL1Importance(Importance):
    name = 'weight-l1'
    needs_samples = False

    def __init__(self, **_ignored):
        pass

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        return {name: layer.weight.detach().abs().mean(dim=(0, 2, 3)).double().cpu()
                for name, layer in scoring_layers(G).items()}


class RandomImportance(Importance):
    name = 'random'
    needs_samples = False

    def __init__(self, **_ignored):
        pass

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        gen = torch.Generator().manual_seed(int(seed))
        return {name: torch.rand(channels, generator=gen, dtype=torch.float64)
                for name, channels in feature_maps(G).items()}


class DiversityImportance(GradientImportance):
    """DCP-GAN: variance over latent-direction perturbations of the gradient score."""

    name = 'diversity'

    def __init__(self, mask: MaskProvider | None = None, noise_prob: float = 0.05, micro_batch: int = 4,
                 directions: int = 4, strength: float = 5.0, pca_samples: int = 2000):
        super().__init__(mask, noise_prob, micro_batch)
        self.directions = int(directions)
        self.strength = float(strength)
        self.pca_samples = int(pca_samples)

    def describe(self) -> dict:
        return dict(super().describe(), directions=self.directions, strength=self.strength,
                    pca_samples=self.pca_samples)

    @torch.no_grad()
    def principal_directions(self, G: torch.nn.Module, seed: int, device) -> torch.Tensor:
        """Top principal directions of W (unit rows [K, w_dim]) from pca_samples mapped latents."""
        z, c = sample_latents(G, self.pca_samples, seed + 2)
        w = torch.cat([G.mapping(z[i:i + 500].to(device), c[i:i + 500].to(device))[:, 0].double().cpu()
                       for i in range(0, len(z), 500)])
        w = w - w.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(w, full_matrices=False)
        k = min(self.directions, vh.shape[0])
        return vh[:k].float()

    def scores(self, G, *, samples=400, batch=8, seed=0, device='cpu', progress=False):
        _check_sampling(samples, batch)
        if self.directions < 2:
            raise ValueError('diversity needs at least 2 directions')
        work = _ScoringCopy(G, device)
        mask = self.mask.to(device)
        dirs = self.principal_directions(work.G, seed, device).to(device)
        gen = torch.Generator().manual_seed(int(seed) + 1)
        per_dir = {name: torch.zeros([len(dirs), layer.weight.shape[1]], dtype=torch.float64)
                   for name, layer in work.layers.items()}
        with _progress_bar(samples * len(dirs), f'scoring ({self.name})', progress) as bar:
            for ws in self._ws_batches(work.G, samples, batch, seed, device):
                for k, d in enumerate(dirs):
                    work.zero_grad()
                    _accumulate_batch_grads(work.G, ws + self.strength * d, mask, self.noise_prob, gen,
                                            self.micro_batch)
                    for name, s in work.grad_scores().items():
                        per_dir[name][k] += s
                    bar.update(ws.shape[0])
        work.zero_grad()
        return {name: v.var(dim=0, unbiased=False) for name, v in per_dir.items()}


def _check_sampling(samples: int, batch: int) -> None:
    from gan_prune.errors import GanPruneError
    if samples < 1 or batch < 1:
        raise GanPruneError(f'--samples ({samples}) and --batch ({batch}) must be at least 1')


IMPORTANCE: dict[str, Callable[..., Importance]] = {
    'content-aware': ContentAwareImportance,
    'l1-out': L1OutImportance,
    'weight-l1': WeightL1Importance,
    'random': RandomImportance,
    'diversity': DiversityImportance,
}


def build_importance(name: str, mask: MaskProvider | None = None, noise_prob: float = 0.05,
                     **options) -> Importance:
    """The criterion called `name` (see IMPORTANCE)."""
    from gan_prune.errors import GanPruneError
    if name not in IMPORTANCE:
        raise GanPruneError(f'unknown importance criterion {name!r}; choose one of: {", ".join(IMPORTANCE)}')
    cls = IMPORTANCE[name]
    if issubclass(cls, GradientImportance):
        return cls(mask=mask, noise_prob=noise_prob, **options)
    return cls(**options)


def keep_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` highest scores; ties go to the lower index, so results are stable."""
    scores = scores.double().cpu()
    if not 1 <= keep <= len(scores):
        raise ValueError(f'cannot keep {keep} of {len(scores)} channels')
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)

