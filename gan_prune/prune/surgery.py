"""Network surgery: cut a teacher generator down to kept channels and load the result into a SlimGenerator.

One set of kept indices per feature map (see gan_prune.generator.slim for the names). Every tensor that reads or
writes a feature map is sliced with that feature map's indices:

| tensor                         | dim 0 (outputs)        | dim 1 (inputs)       |
|--------------------------------|------------------------|----------------------|
| b4.const                       | b4.const               |                      |
| b{r}.conv0.weight / .bias      | b{r}.mid               | b{r/2}.out           |
| b{r}.conv0.affine.weight/.bias | b{r/2}.out (styles)    |                      |
| b{r}.conv1.weight / .bias      | b{r}.out               | b{r}.mid (b4: const) |
| b{r}.conv1.affine.weight/.bias | b{r}.mid (styles)      |                      |
| b{r}.torgb.weight              |                        | b{r}.out             |
| b{r}.torgb.affine.weight/.bias | b{r}.out (styles)      |                      |
| b{r}.skip.weight (resnet)      | b{r}.out               | b{r/2}.out           |

Everything else (noise buffers, noise strengths, toRGB biases, resampling filters, the mapping network and
w_avg) is copied unchanged.

The fixed weight gains of toRGB (and resnet skip) layers depend on their fan-in. `torgb_gain` chooses it:
- 'teacher': the teacher's channel counts go into the student's `gain_channels`, so the gains stay the
  teacher's and the kept weights compute what they computed before (function-preserving); the default of these
  functions, which also slice networks for benchmarks and tests;
- 'pruned': the layers are rebuilt with the pruned fan-in, as the authors' release does; toRGB outputs grow by
  sqrt(teacher channels / student channels), about 3x at r = 0.9. `gan-prune prune` uses this by default
  (defaults.PRUNE): fine-tuned students started from it end closer to their teacher (docs/results.md).
"""
from __future__ import annotations

import copy

import torch

from gan_prune.errors import GanPruneError

# The Generator constructor's positional order (used when a teacher was built with positional arguments).
_GENERATOR_ARGS = ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'mapping_kwargs', 'synthesis_kwargs')
# Synthesis kwargs that describe channel counts of a standard network; the slim network takes `channels` instead.
_CHANNEL_KWARGS = ('channel_base', 'channel_max', 'channels', 'gain_channels')
TORGB_GAINS = ('teacher', 'pruned')


def _block(G: torch.nn.Module, res: int) -> torch.nn.Module:
    return getattr(G.synthesis, f'b{res}')


def feature_maps(G: torch.nn.Module) -> dict[str, int]:
    """{feature map name: channel count} of a standard or slim generator, read from its tensors."""
    out = {}
    for res in G.synthesis.block_resolutions:
        block = _block(G, res)
        if res == 4:
            out['b4.const'] = int(block.const.shape[0])
        else:
            out[f'b{res}.mid'] = int(block.conv0.weight.shape[0])
        out[f'b{res}.out'] = int(block.conv1.weight.shape[0])
    return {name: out[name] for name in _ordered_names(G)}


def _ordered_names(G: torch.nn.Module) -> list[str]:
    names = []
    for res in G.synthesis.block_resolutions:
        names += ['b4.const', 'b4.out'] if res == 4 else [f'b{res}.mid', f'b{res}.out']
    return names


def scoring_layers(G: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{feature map: the layer whose weight's input channels score it} (CAGAN: where the feature map is read)."""
    resolutions = list(G.synthesis.block_resolutions)
    layers = {}
    for i, res in enumerate(resolutions):
        block = _block(G, res)
        layers['b4.const' if res == 4 else f'b{res}.mid'] = block.conv1
        layers[f'b{res}.out'] = _block(G, resolutions[i + 1]).conv0 if i + 1 < len(resolutions) else block.torgb
    return {name: layers[name] for name in _ordered_names(G)}


def _slice_table(res: int) -> dict[str, tuple[str | None, str | None]]:
    """Parameter suffix within block b{res} -> (feature map of dim 0, feature map of dim 1)."""
    out, prev = f'b{res}.out', f'b{res // 2}.out'
    mid = 'b4.const' if res == 4 else f'b{res}.mid'
    table = {
        'const': (mid, None),
        'conv1.weight': (out, mid), 'conv1.bias': (out, None),
        'conv1.affine.weight': (mid, None), 'conv1.affine.bias': (mid, None),
        'torgb.weight': (None, out),
        'torgb.affine.weight': (out, None), 'torgb.affine.bias': (out, None),
    }
    if res > 4:
        table.update({
            'conv0.weight': (mid, prev), 'conv0.bias': (mid, None),
            'conv0.affine.weight': (prev, None), 'conv0.affine.bias': (prev, None),
            'skip.weight': (out, prev),
        })
    return table


def generator_kwargs(G: torch.nn.Module) -> dict:
    """The teacher's constructor kwargs as plain dicts (positional init args folded in)."""
    try:
        args, kwargs = tuple(G.init_args), dict(G.init_kwargs)
    except AttributeError as e:
        raise GanPruneError(f'{type(G).__name__} has no init_kwargs; prune needs a generator from a StyleGAN2-ADA '
                            f'network pickle') from e
    for name, value in zip(_GENERATOR_ARGS, args):
        kwargs.setdefault(name, value)
    plain = {}
    for key, value in kwargs.items():
        plain[key] = copy.deepcopy(dict(value)) if isinstance(value, dict) else copy.deepcopy(value)
    for key in ('mapping_kwargs', 'synthesis_kwargs'):
        plain[key] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in plain.get(key, {}).items()}
    return plain


def slim_kwargs(G: torch.nn.Module, channels: dict[str, int], torgb_gain: str = 'teacher') -> dict:
    """init kwargs of the SlimGenerator with `channels` that continues teacher G (any standard or slim G).

    torgb_gain 'teacher' keeps G's gain fan-ins; 'pruned' uses the new channel counts (see the module docstring).
    """
    if torgb_gain not in TORGB_GAINS:
        raise GanPruneError(f'--torgb-gain {torgb_gain!r} is unknown; choose one of {", ".join(TORGB_GAINS)}')
    teacher = generator_kwargs(G)
    names = _ordered_names(G)
    missing = [n for n in names if n not in channels]
    if missing:
        raise ValueError(f'channels: missing feature maps {missing}')
    if torgb_gain == 'pruned':
        gain_channels = dict(channels)
    else:
        gain_channels = teacher.get('gain_channels') or feature_maps(G)
    synthesis_kwargs = {k: v for k, v in teacher['synthesis_kwargs'].items() if k not in _CHANNEL_KWARGS}
    return dict(z_dim=int(G.z_dim), c_dim=int(G.c_dim), w_dim=int(G.w_dim), img_resolution=int(G.img_resolution),
                img_channels=int(G.img_channels),
                channels={n: int(channels[n]) for n in names},
                gain_channels={n: int(gain_channels[n]) for n in names},
                mapping_kwargs=dict(teacher.get('mapping_kwargs', {})),
                synthesis_kwargs=synthesis_kwargs)


def _check_kept(G: torch.nn.Module, kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sizes = feature_maps(G)
    checked = {}
    for name, size in sizes.items():
        if name not in kept:
            raise ValueError(f'kept indices missing for feature map {name}')
        idx = torch.as_tensor(kept[name], dtype=torch.long).flatten()
        if len(idx) < 1 or int(idx.min()) < 0 or int(idx.max()) >= size or len(torch.unique(idx)) != len(idx):
            raise ValueError(f'{name}: kept indices must be unique, within [0, {size}) and at least one')
        checked[name] = idx.sort().values
    return checked


def slice_generator(G: torch.nn.Module, kept: dict[str, torch.Tensor], torgb_gain: str = 'teacher') -> torch.nn.Module:
    """A SlimGenerator holding teacher G's weights restricted to the `kept` channel indices of each feature map,
    with toRGB/skip gains from the teacher's fan-in ('teacher') or the pruned one ('pruned')."""
    from gan_prune.generator.slim import SlimGenerator
    kept = _check_kept(G, kept)
    kwargs = slim_kwargs(G, {name: len(idx) for name, idx in kept.items()}, torgb_gain)
    with torch.random.fork_rng(devices=[]):  # construction draws random init; keep the caller's RNG stream
        student = SlimGenerator(**kwargs)
    teacher_state = {k: v.detach() for k, v in G.state_dict().items()}
    new_state = {}
    for key, ref in student.state_dict().items():
        if key not in teacher_state:
            raise GanPruneError(f'teacher generator has no tensor {key}; it is not a standard StyleGAN2-ADA generator')
        value = teacher_state[key]
        parts = key.split('.')
        if parts[0] == 'synthesis' and parts[1].startswith('b'):
            res = int(parts[1][1:])
            rule = _slice_table(res).get('.'.join(parts[2:]))
            if rule is not None:
                for dim, fm in enumerate(rule):
                    if fm is not None:
                        value = value.index_select(dim, kept[fm].to(value.device))
        if tuple(value.shape) != tuple(ref.shape):
            raise GanPruneError(f'surgery: {key} has shape {tuple(value.shape)} after slicing, the slim network '
                                f'expects {tuple(ref.shape)}')
        new_state[key] = value.to(ref.dtype).clone()
    student.load_state_dict(new_state, strict=True)
    device = next(G.parameters()).device
    return student.to(device).eval().requires_grad_(False)


def identity_kept(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Keep every channel (ratio 0)."""
    return {name: torch.arange(size) for name, size in feature_maps(G).items()}
