"""Mask providers: which pixels of a generated image count as "content of interest" (COI) for channel scoring.

A provider is called with NCHW float images in [-1, 1] and returns an [N, 1, H, W] float32 mask in [0, 1] at the
image size. Providers:
- `none`: every pixel (non-face data; the `gradient-unmasked` criterion);
- `face-parser`: BiSeNet face parsing, COI = every class except background (0) and cloth (16);
- `user`: the user's own model, a TorchScript file or a torch file holding {'name': 'package.module.Class',
  'state_dict': {...}, 'kwargs': {...}}; its output is squeezed to one channel and clamped to [0, 1].
  Both run code, so they need trust=True (--trust-pickle) unless the TorchScript file is a published one the
  toolkit knows (gan_prune.features.torchscript) or the class is one of its own (gan_prune.io.trusted).
The named providers are in the MASKS registry (facts: `content`, whether it marks content of interest, and a
`summary`); `build_mask(spec, parser_weights, trust=trust)` maps the CLI's --mask value (a name, 'auto' or a
model file) to a provider.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from gan_prune.errors import GanPruneError
from gan_prune.registry import Registry


class MaskProvider:
    """Interface: images in [-1, 1] (NCHW) -> [N, 1, H, W] float32 mask in [0, 1]."""

    name = 'mask'

    def to(self, device: torch.device | str) -> 'MaskProvider':
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OnesMask(MaskProvider):
    """All pixels are content of interest."""

    name = 'none'

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones([images.shape[0], 1, *images.shape[2:]], dtype=torch.float32, device=images.device)


class FaceParserMask(MaskProvider):
    """BiSeNet face parsing at 512 px; COI = class not in `excluded_classes` (background and cloth)."""

    name = 'face-parser'

    def __init__(self, parser: torch.nn.Module, excluded_classes: tuple[int, ...] = (0, 16), input_size: int = 512):
        from gan_prune.features import bisenet
        self.parser = parser.eval().requires_grad_(False)
        self.excluded_classes = tuple(int(c) for c in excluded_classes)
        self.input_size = int(input_size)
        self._mean = torch.tensor(bisenet.IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(bisenet.IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_weights(cls, path: str) -> 'FaceParserMask':
        from gan_prune.features.bisenet import load_bisenet
        return cls(load_bisenet(path))

    def to(self, device: torch.device | str) -> 'FaceParserMask':
        self.parser = self.parser.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        x = images.float()
        if c == 1:
            x = x.repeat(1, 3, 1, 1)  # the parser wants RGB
        elif c != 3:
            raise GanPruneError(f'the face parser needs RGB images, got {c} channels; use --mask none')
        x = (x.clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode='bilinear', align_corners=False)
        device = next(self.parser.parameters()).device
        x = ((x - self._mean.to(x.device)) / self._std.to(x.device)).to(device)
        labels = self.parser.parse(x).argmax(dim=1, keepdim=True)
        coi = torch.ones_like(labels, dtype=torch.bool)
        for cls_idx in self.excluded_classes:
            coi &= labels != cls_idx
        # Nearest keeps the mask binary when resizing back to the image size.
        return F.interpolate(coi.float(), size=(h, w), mode='nearest').to(images.device)


class UserMask(MaskProvider):
    """The user's segmentation model: images in [-1, 1] -> mask; output squeezed to 1 channel, clamped to [0, 1]."""

    name = 'user'

    def __init__(self, model: torch.nn.Module, source: str = ''):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.source = source

    @classmethod
    def from_file(cls, path: str, trust: bool = False, option: str = '--mask') -> 'UserMask':
        """Load a mask model file. Without `trust` only data is read: a TorchScript file must be one the toolkit
        knows by checksum, and a constructor file must name one of the toolkit's own model classes."""
        from gan_prune.features import torchscript
        from gan_prune.io import trusted
        if not os.path.isfile(path):
            raise GanPruneError(f'{option} {path}: no such file; use {option} none, {option} face-parser '
                                f'--parser-weights FILE, or the path of your own mask model')
        if torchscript.is_torchscript_archive(path):
            return cls(torchscript.load_torchscript(path, trust, option), path)
        try:
            blob = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise GanPruneError(f'{option} {path}: neither a TorchScript module nor a torch file '
                                f'({type(e).__name__}); save your model with torch.jit.save') from e
        if not (isinstance(blob, dict) and isinstance(blob.get('name'), str) and isinstance(blob.get('state_dict'), dict)):
            raise GanPruneError(f"{option} {path}: a torch file must hold {{'name': 'package.module.Class', "
                                f"'state_dict': ...}} (optionally 'kwargs'); or save a TorchScript module")
        model = trusted.construct_model(blob['name'], blob.get('kwargs'), trust, f'{option} {path}')
        try:
            model.load_state_dict(blob['state_dict'])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else 'shape mismatch'
            raise GanPruneError(f'{option} {path}: state dict does not fit {trusted.shown(blob["name"])}: '
                                f'{first}') from e
        return cls(model, path)

    def to(self, device: torch.device | str) -> 'UserMask':
        self.model = self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        out = self.model(images.float())
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out):
            raise GanPruneError(f'mask model {self.source} returned {type(out).__name__}, expected a tensor')
        if out.ndim == 3:
            out = out[:, None]
        if out.ndim != 4 or out.shape[0] != n or out.shape[1] != 1:
            raise GanPruneError(f'mask model {self.source} returned shape {tuple(out.shape)}; '
                                f'expected [N, 1, H, W] (or [N, H, W]) with values in [0, 1]')
        if tuple(out.shape[2:]) != (h, w):
            out = F.interpolate(out.float(), size=(h, w), mode='bilinear', align_corners=False)
        return out.float().clamp(0, 1).to(images.device)


MASKS: Registry[MaskProvider] = Registry('mask')

# Where the face parser's weights come from, for messages.
PARSER_WEIGHTS_FILE = '79999_iter.pth'
PARSER_WEIGHTS_SOURCE = ('the BiSeNet face parser of the face-parsing.PyTorch project '
                         '(github.com/zllrunning/face-parsing.PyTorch, download link in its README)')


@MASKS.register('none', content=False, summary='every pixel (all-ones mask; non-face data)')
def _ones_mask(parser_weights: str | None = None, trust: bool = False, option: str = '--mask') -> MaskProvider:
    return OnesMask()


@MASKS.register('face-parser', content=True, summary=f'BiSeNet face parsing, needs --parser-weights '
                                                      f'{PARSER_WEIGHTS_FILE}')
def _face_parser_mask(parser_weights: str | None = None, trust: bool = False,
                      option: str = '--mask') -> MaskProvider:
    if not parser_weights:
        raise GanPruneError(f'{option} face-parser needs --parser-weights {PARSER_WEIGHTS_FILE} '
                            f'({PARSER_WEIGHTS_SOURCE})')
    from gan_prune.weights import resolve_weights
    return FaceParserMask.from_weights(resolve_weights(parser_weights) or parser_weights)


@MASKS.register('demo-faces', content=True, summary='the segmenter shipped for the bundled cartoon-face teacher')
def _demo_faces_mask(parser_weights: str | None = None, trust: bool = False,
                     option: str = '--mask') -> MaskProvider:
    from gan_prune.assets import FACE_MASK
    return UserMask.from_file(FACE_MASK, option=option)


def resolve_mask_spec(spec: str | None, parser_weights: str | None = None) -> str:
    """The mask an --mask value stands for: 'auto' is face-parser when parser weights are given (or
    79999_iter.pth is found in the weights folders, gan_prune.weights), otherwise 'auto' stays unresolved."""
    spec = (spec or 'auto').strip()
    if spec != 'auto':
        return spec
    return 'face-parser' if parser_weights or _found_parser_weights() else 'auto'


def _found_parser_weights() -> str | None:
    from gan_prune.weights import resolve_weights
    return resolve_weights(PARSER_WEIGHTS_FILE)


def missing_mask_message(what: str, option: str = '--mask') -> str:
    """One line for a content mask that is needed but not given: the file, where to get it, the flags."""
    return (f'{what} needs a content mask: pass --parser-weights {PARSER_WEIGHTS_FILE} ({PARSER_WEIGHTS_SOURCE}), '
            f'or {option} FILE for your own segmentation model, or {option} none to score every pixel unmasked')


def build_mask(spec: str | None, parser_weights: str | None = None, trust: bool = False,
               option: str = '--mask') -> MaskProvider:
    """Provider for a --mask value: a MASKS name ('none', 'face-parser', 'demo-faces'), 'auto' or a model file.

    'auto' is the face parser when weights are given or found (gan_prune.weights search folders); without them
    it is an error naming the file, its source and the flags, never a silent all-ones mask. `trust` lets a model
    file run code (see UserMask.from_file); `option` names the command-line option in messages.
    """
    resolved = resolve_mask_spec(spec, parser_weights)
    if resolved == 'auto':
        raise GanPruneError(missing_mask_message(f'{option} auto', option))
    if resolved in MASKS:
        weights = parser_weights or (_found_parser_weights() if resolved == 'face-parser' else None)
        return MASKS.build(resolved, parser_weights=weights, trust=trust, option=option)
    return UserMask.from_file(resolved, trust=trust, option=option)
