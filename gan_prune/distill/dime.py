"""DiME: match the distribution of student images to the teacher's in frozen embedding spaces.

Two estimators share one interface, `estimator(student_emb, teacher_emb=None) -> scalar`:

- `MomentsDiME` (the released method, the default): L1 distance of the first and second moments,
      mean_d |mean_b phi_d(x_S) - mu1_d| + mean_d |mean_b phi_d(x_S)^2 - mu2_d|
  against teacher statistics mu1 = E[phi(G^T(z))], mu2 = E[phi(G^T(z))^2] computed once by
  `gan-prune teacher-stats` (or, without statistics, against the moments of a teacher batch).
- `KernelMMD` (the paper's wording taken literally): the unbiased MMD^2 estimate with a sum of Gaussian kernels
  whose bandwidths are the median pairwise distance times (0.5, 1, 2), against fresh teacher embeddings or a
  random subset of a stored bank of teacher embeddings.

The estimators are plug-ins of `DIME_ESTIMATORS` (`--dime-estimator` takes its names): each is a factory
`(teacher statistics entry or None, scales, bank_batch) -> DiMEEstimator` declaring what it needs, `needs_bank`
(teacher-stats keeps an embedding bank for it) and `min_images` (per estimate, --dime-batch).

`DiMELoss` combines several embedders, each with its own estimator and weight, from a spec string such as
`clip:RN50=15,dino-resnet50=20` (the released setting). Gradients reach only the student images: embedders are
frozen and teacher embeddings are detached.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gan_prune.defaults import DIME, DISTILL
from gan_prune.distill.embedders import Embedder, build_embedder
from gan_prune.errors import GanPruneError
from gan_prune.registry import Registry

if TYPE_CHECKING:
    from gan_prune.distill.teacher_stats import EmbeddingStats

DEFAULT_MMD_SCALES = tuple(DIME['mmd_scales'])
DEFAULT_BANK_BATCH = DIME['bank_batch']


class DiMEEstimator(nn.Module):
    """Distance between a batch of student embeddings [B, d] and the teacher's embedding distribution."""

    #: True when forward needs teacher embeddings of the current step (no stored statistics/bank).
    needs_teacher: bool = False

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class MomentsDiME(DiMEEstimator):
    """L1 on the first and second moments of the embeddings (a linear-kernel MMD on [phi, phi^2])."""

    def __init__(self, mu1: torch.Tensor | np.ndarray | None = None, mu2: torch.Tensor | np.ndarray | None = None):
        super().__init__()
        if (mu1 is None) != (mu2 is None):
            raise ValueError('give both mu1 and mu2, or neither (then teacher embeddings are needed every step)')
        self.needs_teacher = mu1 is None
        if mu1 is not None:
            mu1, mu2 = torch.as_tensor(mu1).float().flatten(), torch.as_tensor(mu2).float().flatten()
            if mu1.shape != mu2.shape:
                raise ValueError(f'mu1 and mu2 differ in shape: {tuple(mu1.shape)} vs {tuple(mu2.shape)}')
            self.register_buffer('mu1', mu1)
            self.register_buffer('mu2', mu2)
        else:
            self.mu1 = self.mu2 = None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        student = student.float()
        if self.mu1 is not None:
            mu1, mu2 = self.mu1, self.mu2
        elif teacher is not None:
            teacher = teacher.detach().float()
            mu1, mu2 = teacher.mean(0), teacher.square().mean(0)
        else:
            raise ValueError('MomentsDiME without statistics needs teacher embeddings')
        if student.shape[1] != mu1.shape[0]:
            raise ValueError(f'embedding dimension {student.shape[1]} does not match the statistics ({mu1.shape[0]})')
        first = (student.mean(0) - mu1).abs().mean()
        second = (student.square().mean(0) - mu2).abs().mean()
        return first + second


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 for all pairs, [n, m], clamped at 0 against rounding."""
    d2 = a.square().sum(1, keepdim=True) + b.square().sum(1)[None, :] - 2 * (a @ b.T)
    return d2.clamp_min(0)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median heuristic: the median distance over distinct pairs of the pooled (detached) samples."""
    z = torch.cat([x, y]).detach()
    d2 = pairwise_sq_dists(z, z)
    n = z.shape[0]
    off_diagonal = d2[~torch.eye(n, dtype=torch.bool, device=z.device)]
    sigma = off_diagonal.median().sqrt()
    return torch.where(sigma > 0, sigma, torch.ones_like(sigma))  # all samples equal: any bandwidth gives 0


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = DEFAULT_MMD_SCALES,
                  bandwidth: torch.Tensor | float | None = None) -> torch.Tensor:
    """Unbiased MMD^2 between samples x [m, d] and y [n, d] with the kernel
    k(a, b) = mean_s exp(-||a - b||^2 / (2 (s * bandwidth)^2)); bandwidth defaults to the median heuristic."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f'unbiased MMD needs at least 2 samples on each side, got {m} and {n}')
    sigma = median_bandwidth(x, y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype,
                                                                             device=x.device)

    def kernel(d2: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor = functools.reduce(operator.add, [torch.exp(-d2 / (2 * (s * sigma) ** 2)) for s in scales])
        return total / len(scales)

    k_xx, k_yy, k_xy = kernel(pairwise_sq_dists(x, x)), kernel(pairwise_sq_dists(y, y)), kernel(pairwise_sq_dists(x, y))
    # Unbiased: leave out the i == j terms of the within-sample sums.
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return term_xx + term_yy - 2 * k_xy.mean()


class KernelMMD(DiMEEstimator):
    """Unbiased Gaussian-kernel MMD^2 (bandwidths: median heuristic x `scales`) against fresh teacher
    embeddings, or against `bank_batch` random rows of a stored teacher embedding `bank` [M, d]."""

    bank: torch.Tensor | None  # a buffer when given

    def __init__(self, bank: torch.Tensor | np.ndarray | None = None, scales: Sequence[float] = DEFAULT_MMD_SCALES,
                 bank_batch: int | None = DEFAULT_BANK_BATCH, seed: int = 0):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f'MMD scales must be positive, got {scales}')
        self.bank_batch = bank_batch
        self.needs_teacher = bank is None
        if bank is not None:
            bank = torch.as_tensor(bank).float()
            if bank.ndim != 2 or bank.shape[0] < 2:
                raise ValueError(f'the teacher embedding bank must be [M >= 2, d], got {tuple(bank.shape)}')
            self.register_buffer('bank', bank)
        else:
            self.bank = None
        self._generator = torch.Generator().manual_seed(seed)  # which bank rows; CPU so it works on any device

    def sample_bank(self) -> torch.Tensor:
        bank = self.bank
        if bank is None:
            raise ValueError('this MMD estimator has no teacher embedding bank; pass teacher embeddings instead')
        m = bank.shape[0]
        if self.bank_batch is None or self.bank_batch >= m:
            return bank
        rows = torch.randperm(m, generator=self._generator)[:self.bank_batch]
        return bank[rows.to(bank.device)]

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        if teacher is None:
            if self.bank is None:
                raise ValueError('KernelMMD without a bank needs teacher embeddings')
            teacher = self.sample_bank()
        return mmd2_unbiased(student.float(), teacher.detach().float(), self.scales)


DIME_ESTIMATORS: Registry[DiMEEstimator] = Registry('DiME estimator')


@DIME_ESTIMATORS.register('moments', needs_bank=False, min_images=1,
                          summary='the release\'s first/second-moment L1 (the default)')
def moments_estimator(entry: EmbeddingStats | None, scales: Sequence[float] = DEFAULT_MMD_SCALES,
                      bank_batch: int | None = DEFAULT_BANK_BATCH) -> DiMEEstimator:
    """MomentsDiME against the stored mu1/mu2, or against each step's teacher embeddings without statistics.
    The kernel options do not apply to it."""
    return MomentsDiME(entry.mu1, entry.mu2) if entry is not None else MomentsDiME()


@DIME_ESTIMATORS.register('mmd', needs_bank=True, min_images=4,
                          summary='Gaussian-kernel MMD^2, the paper\'s wording taken literally')
def mmd_estimator(entry: EmbeddingStats | None, scales: Sequence[float] = DEFAULT_MMD_SCALES,
                  bank_batch: int | None = DEFAULT_BANK_BATCH) -> DiMEEstimator:
    """KernelMMD against the stored embedding bank (if the statistics kept one), else each step's teacher
    embeddings. The unbiased estimate needs several images on each side, hence `min_images=4` (--dime-batch)."""
    return KernelMMD(entry.bank if entry is not None else None, scales=scales, bank_batch=bank_batch)


def dime_estimator_help() -> str:
    """`--dime-estimator`'s help: each registered estimator with its summary."""
    return '; '.join(f'{name}: {DIME_ESTIMATORS.info(name)["summary"]}' for name in DIME_ESTIMATORS.names()) + '.'


def parse_dime_spec(spec: str) -> list[tuple[str, float]]:
    """'clip:RN50=15,dino-resnet50=20' -> [('clip:RN50', 15.0), ('dino-resnet50', 20.0)]; a missing weight is 1."""
    terms: list[tuple[str, float]] = []
    for part in (spec or '').split(','):
        part = part.strip()
        if not part:
            continue
        name, sep, weight_text = part.rpartition('=') if '=' in part else (part, '', '')
        name = name.strip()
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                raise GanPruneError(f'bad DiME weight {weight_text!r} in {part!r}; write SPEC=WEIGHT, '
                                    f'e.g. clip:RN50=15') from None
            if not math.isfinite(weight) or weight < 0:
                raise GanPruneError(f'DiME weight must be a finite number >= 0, got {weight_text} for {name}')
        if not name:
            raise GanPruneError(f'missing embedder name in DiME spec part {part!r}')
        if name in (n for n, _ in terms):
            raise GanPruneError(f'embedder {name} appears twice in the DiME spec {spec!r}')
        terms.append((name, weight))
    if not terms:
        raise GanPruneError(f'empty DiME spec {spec!r}; e.g. clip:RN50=15,dino-resnet50=20 or effnet-lite0=1')
    return terms


def check_embedder_specs(spec: str) -> None:
    """Check a DiME / --embed spec without building anything: the syntax, known embedder families, and the file
    of a torchscript:FILE (weights of the other families are looked for when they are built)."""
    from gan_prune.distill.embedders import EMBEDDERS, split_spec
    from gan_prune.weights import resolve_weights
    for name, _weight in parse_dime_spec(spec):
        family, arg = split_spec(name)
        EMBEDDERS.get(family)  # one line naming the known families when it is not one
        if family == 'torchscript' and arg and resolve_weights(arg) is None:
            raise GanPruneError(f'no TorchScript embedder file {arg} (bare names are also searched in the weights '
                                f'folders, see gan-prune env); check the path')


def resolve_weight_files(names: Sequence[str], weight_files: Sequence[str] | Mapping[str, str] | None
                         ) -> dict[str, str]:
    """Map each embedder name to its weights file. Accepts a dict, or a list of 'SPEC=FILE' / 'FILE' entries
    (a bare FILE is allowed when only one embedder needs one)."""
    if not weight_files:
        return {}
    if isinstance(weight_files, Mapping):
        mapping = dict(weight_files)
    else:
        mapping, bare = {}, []
        for entry in weight_files:
            name, sep, path = entry.partition('=')
            if sep and name.strip() in names:
                mapping[name.strip()] = path.strip()
            else:
                bare.append(entry)
        if bare:
            needing = [n for n in names if n not in mapping and not n.startswith(('effnet-lite0', 'torchscript'))]
            if len(bare) > 1 or len(needing) != 1:
                raise GanPruneError('cannot tell which embedder each weights file is for; write SPEC=FILE, '
                                    'e.g. --embed-weights clip:RN50=RN50.pt --embed-weights dino-resnet50=dino.pth')
            mapping[needing[0]] = bare[0]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise GanPruneError(f'weights given for {unknown[0]}, which is not among the embedders {list(names)}')
    return mapping


class DiMELoss(nn.Module):
    """Weighted sum of DiME terms, one per embedder. forward(student_img, teacher_img=None) -> scalar.

    `teacher_img` is needed only when some estimator has no stored statistics (`needs_teacher_images`);
    it is embedded without gradient.
    """

    def __init__(self, terms: Sequence[tuple[Embedder, DiMEEstimator, float]], chunk: int | None = None):
        super().__init__()
        if not terms:
            raise ValueError('DiMELoss needs at least one term')
        if chunk is not None and int(chunk) < 1:
            raise GanPruneError(f'--dime-batch must be at least 1, got {chunk}')
        # Images per estimate: the release estimates the moments on each GPU's 8 images of a round, so a larger
        # batch on one device is split into groups of `chunk` and the group values are averaged.
        self.chunk = int(chunk) if chunk else None
        self.embedders = nn.ModuleList([t[0] for t in terms])
        self.estimators = nn.ModuleList([t[1] for t in terms])
        self.weights = [float(t[2]) for t in terms]
        self.names = [t[0].name for t in terms]

    @property
    def needs_teacher_images(self) -> bool:
        return any(e.needs_teacher for e in self.estimators)

    def term_values(self, student_img: torch.Tensor, teacher_img: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
        """Unweighted value of each term, keyed by embedder name: with `chunk`, the batch is split into
        ceil(N / chunk) groups of (nearly) equal size, `chunk` images each when it divides N, and the estimates
        of the groups are averaged, weighted by group size."""
        n = student_img.shape[0]
        if not self.chunk or self.chunk >= n:
            return self._term_values(student_img, teacher_img)
        total: dict[str, torch.Tensor] = {}
        bounds = torch.tensor_split(torch.arange(n), math.ceil(n / self.chunk))
        for rows in bounds:
            part = slice(int(rows[0]), int(rows[-1]) + 1)
            group = self._term_values(student_img[part], None if teacher_img is None else teacher_img[part])
            share = len(rows) / n
            for name, value in group.items():
                total[name] = total[name] + share * value if name in total else share * value
        return total

    def _term_values(self, student_img: torch.Tensor, teacher_img: torch.Tensor | None) -> dict[str, torch.Tensor]:
        values = {}
        for name, embedder, estimator in zip(self.names, self.embedders, self.estimators):
            teacher_emb = None
            if estimator.needs_teacher:
                if teacher_img is None:
                    raise ValueError(f'DiME term {name} has no teacher statistics: pass teacher images')
                with torch.no_grad():
                    teacher_emb = embedder(teacher_img.detach())
            values[name] = estimator(embedder(student_img), teacher_emb)
        return values

    def forward(self, student_img: torch.Tensor, teacher_img: torch.Tensor | None = None) -> torch.Tensor:
        values = self.term_values(student_img, teacher_img)
        return functools.reduce(operator.add, [w * values[n] for n, w in zip(self.names, self.weights)])

    @classmethod
    def build(cls, spec: str, estimator: str = DISTILL['dime_estimator'], stats=None,
              weight_files: Sequence[str] | Mapping[str, str] | None = None, normalize: bool = False,
              mmd_scales: Sequence[float] = DEFAULT_MMD_SCALES, bank_batch: int | None = DEFAULT_BANK_BATCH,
              trust: bool = False, chunk: int | None = None) -> 'DiMELoss':
        """Build from a spec string. `stats`: a TeacherStats or the path of a teacher-stats .npz; with
        'moments' its mu1/mu2 are used, with 'mmd' its embedding bank (if any). Without stats the loss needs
        teacher images every step. `trust` lets TorchScript embedder files run (--trust-pickle). `chunk`: images
        per estimate (--dime-batch; None: the whole batch of a call)."""
        make_estimator = DIME_ESTIMATORS.get(estimator)  # an unknown name: one line listing the known ones
        if isinstance(stats, (str, bytes)) or hasattr(stats, '__fspath__'):
            from gan_prune.distill.teacher_stats import load_teacher_stats
            stats = load_teacher_stats(stats)
        parsed = parse_dime_spec(spec)
        files = resolve_weight_files([n for n, _ in parsed], weight_files)
        if stats is not None and stats.normalize != normalize:
            raise GanPruneError(f'teacher statistics were computed with normalize={stats.normalize} but the loss uses '
                                f'normalize={normalize}; recompute them or match the setting')
        terms = []
        for name, weight in parsed:
            embedder = build_embedder(name, weights=files.get(name), normalize=normalize, trust=trust)
            entry = stats.get(embedder.name) if stats is not None else None
            if stats is not None and entry is None:
                raise GanPruneError(f'teacher statistics have no entry for {embedder.name} (they hold '
                                    f'{", ".join(stats.names)}); run gan-prune teacher-stats with --embed {spec}')
            if entry is not None and entry.dim != embedder.dim:
                raise GanPruneError(f'teacher statistics for {embedder.name} are {entry.dim}-d but the embedder gives '
                                    f'{embedder.dim}-d; recompute them with the same weights')
            terms.append((embedder, make_estimator(entry, scales=mmd_scales, bank_batch=bank_batch), weight))
        return cls(terms, chunk=chunk)
