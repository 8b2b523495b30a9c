"""Small networks the toolkit builds itself, addressable as `builtin:NAME` wherever a pickle is expected.

`teacher` is the bundled trained teacher (gan_prune/assets/teacher.pkl: 32 px cartoon faces, trained by
tools/train_teacher.py), loaded with the safe loader like any other pickle. The others are randomly
initialised from a fixed seed (identical on every machine), so examples and tests run with no download and no
weights file. `paper256` has the exact shapes of an FFHQ-256 StyleGAN2-ADA checkpoint (cfg paper256, fp32), for
cost tables and speed measurements.
"""
from __future__ import annotations

import copy
import os

import torch

from gan_prune.assets import ASSETS_DIR
from gan_prune.errors import GanPruneError

# name -> (description, Generator kwargs, Discriminator kwargs)
BUILTINS = {
    'tiny32': (
        'random 32 px generator, 64-d latents, channels 64..16 (examples and tests)',
        dict(z_dim=64, w_dim=64, c_dim=0, img_resolution=32, img_channels=3,
             mapping_kwargs=dict(num_layers=2),
             synthesis_kwargs=dict(channel_base=1024, channel_max=64, num_fp16_res=0, conv_clamp=None)),
        dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64,
             epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    'paper256': (
        'random generator with the shapes of stylegan2-ada cfg paper256 (FFHQ 256 px), fp32',
        dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
             mapping_kwargs=dict(num_layers=8),
             synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=None)),
        dict(c_dim=0, img_resolution=256, img_channels=3, channel_base=16384, channel_max=512,
             epilogue_kwargs=dict(mbstd_group_size=8)),
    ),
}

# name -> (description, file in gan_prune/assets)
SHIPPED = {
    'teacher': ('the bundled teacher: 32 px cartoon faces, 64 channels (gan-prune demo)', 'teacher.pkl'),
}

SEED = 0


def builtin_names() -> list[str]:
    return sorted(list(BUILTINS) + list(SHIPPED))


def shipped_path(name: str) -> str:
    return os.path.join(ASSETS_DIR, SHIPPED[name][1])


def build_random(name: str) -> dict:
    """The snapshot dict (G, D, G_ema, training_set_kwargs, augment_pipe) of the seeded random network `name`.
    The shipped networks are files: gan_prune.io.pickles.load_builtin reads those."""
    if name not in BUILTINS:
        raise GanPruneError(f'unknown built-in network {name!r}; choose one of: '
                            + ', '.join(f'builtin:{n}' for n in builtin_names()))
    from training import networks
    _, g_kwargs, d_kwargs = BUILTINS[name]
    g_kwargs, d_kwargs = easydicts(g_kwargs), easydicts(d_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        G = networks.Generator(**g_kwargs).eval().requires_grad_(False)
        D = networks.Discriminator(**d_kwargs).eval().requires_grad_(False)
    return dict(G=G, D=D, G_ema=copy.deepcopy(G), training_set_kwargs=None, augment_pipe=None)


def easydicts(kwargs: dict) -> dict:
    """Network kwargs as EasyDicts, nested dicts too: real snapshots store them that way (train.py builds them so)."""
    import dnnlib
    return dnnlib.EasyDict({k: dnnlib.EasyDict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})
