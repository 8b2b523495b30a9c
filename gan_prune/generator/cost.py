"""Parameters and multiply-accumulates (MACs) of StyleGAN2-ADA generators and discriminators.

Counting convention (method.md section 3; the one CAGAN's FLOPs calculator uses and the paper's rates follow):
- MACs are per generated image.
- A synthesis 3x3 convolution costs H*W*C_out*C_in*k*k with H, W the resolution it is *counted at*: the
  up-sampling conv0 of a block is counted at its INPUT resolution (half the block resolution), conv1 at the block
  resolution. ToRGB (1x1) is counted at the block resolution; a resnet block's 1x1 skip at its input resolution.
- convention 'conv' (the default): synthesis convolutions + toRGB (+ resnet skips). This reproduces the paper's
  compression rates (74.96 % for r = 0.5 on paper256).
- convention 'total': additionally the style affine layers (w_dim*C_in each) and the mapping network
  (in*out per fully connected layer, label embedding included).
Parameters are always the real tensor sizes (weights, biases, styles, const, noise strengths).

For discriminators every convolution is counted at its output resolution (a down-sampling 3x3 conv at half the
block resolution), plus the epilogue's conv, fc and output layers, and the label mapping when conditional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

CONVENTIONS = ('conv', 'total')
CONVENTION_TEXT = {
    'conv': 'MACs per image of synthesis convs (up-sampling conv0 at its input resolution) + toRGB',
    'total': 'MACs per image of synthesis convs + toRGB + style affines + mapping network',
}


@dataclass
class BlockCost:
    """One row of a cost table: a synthesis block, the mapping network, or a discriminator block."""
    name: str
    resolution: int | None
    in_channels: int
    out_channels: int
    params: int
    conv_macs: int           # convolutions + toRGB/fromRGB (+ skips, + D epilogue layers)
    affine_macs: int = 0     # style affines (generator) - counted only by the 'total' convention
    mapping_macs: int = 0    # mapping network (generator or D label mapping)

    def macs(self, convention: str = 'conv') -> int:
        if convention == 'conv':
            return self.conv_macs
        return self.conv_macs + self.affine_macs + self.mapping_macs


@dataclass
class CostReport:
    """Per-block costs of a network plus totals under one counting convention."""
    convention: str
    blocks: list[BlockCost] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(b.params for b in self.blocks)

    @property
    def total_macs(self) -> int:
        return sum(b.macs(self.convention) for b in self.blocks)

    def as_dict(self) -> dict:
        return {
            'convention': self.convention,
            'convention_text': CONVENTION_TEXT[self.convention],
            'blocks': [dict(name=b.name, resolution=b.resolution, in_channels=b.in_channels,
                            out_channels=b.out_channels, params=b.params, macs=b.macs(self.convention))
                       for b in self.blocks],
            'total_params': self.total_params,
            'total_macs': self.total_macs,
        }


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f'unknown MAC counting convention {convention!r}; choose one of {CONVENTIONS}')


def _numel(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())


def _conv_macs(weight: torch.Tensor, resolution: int) -> int:
    out_ch, in_ch, kh, kw = weight.shape
    return resolution * resolution * out_ch * in_ch * kh * kw


def _fc_macs(fc: torch.nn.Module | None) -> int:
    return 0 if fc is None else int(fc.weight.numel())


def _mapping_macs(mapping: torch.nn.Module) -> int:
    return sum(_fc_macs(m) for name, m in mapping.named_children() if name == 'embed' or name.startswith('fc'))


def generator_cost(G: torch.nn.Module, convention: str = 'conv') -> CostReport:
    """Cost table of a generator (standard or slim) from its real layer shapes."""
    _check_convention(convention)
    report = CostReport(convention)
    synthesis = G.synthesis
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f'b{res}')
        conv_macs = affine_macs = 0
        for name in ('conv0', 'conv1'):
            layer = getattr(block, name, None)
            if layer is None:
                continue
            up = int(getattr(layer, 'up', 1))
            conv_macs += _conv_macs(layer.weight, res // up)  # up-sampling conv counted at its input resolution
            affine_macs += _fc_macs(layer.affine)
        torgb = getattr(block, 'torgb', None)
        if torgb is not None:
            conv_macs += _conv_macs(torgb.weight, res)
            affine_macs += _fc_macs(torgb.affine)
        skip = getattr(block, 'skip', None)
        if skip is not None:
            conv_macs += _conv_macs(skip.weight, res // 2)
        out_channels = int(block.conv1.weight.shape[0])
        in_channels = int(block.conv0.weight.shape[1]) if getattr(block, 'conv0', None) is not None else 0
        report.blocks.append(BlockCost(f'b{res}', res, in_channels, out_channels, _numel(block),
                                       conv_macs, affine_macs))
    mapping = G.mapping
    report.blocks.append(BlockCost('mapping', None, int(getattr(mapping, 'z_dim', 0)) + int(getattr(mapping, 'c_dim', 0)),
                                   int(mapping.w_dim), _numel(mapping), 0, 0, _mapping_macs(mapping)))
    return report


def discriminator_cost(D: torch.nn.Module) -> CostReport:
    """Cost table of a discriminator (convolutions at their output resolution, epilogue and label mapping)."""
    report = CostReport('conv')
    for res in D.block_resolutions:
        block = getattr(D, f'b{res}')
        macs = 0
        fromrgb = getattr(block, 'fromrgb', None)
        if fromrgb is not None:
            macs += _conv_macs(fromrgb.weight, res)
        macs += _conv_macs(block.conv0.weight, res)
        macs += _conv_macs(block.conv1.weight, res // 2)
        skip = getattr(block, 'skip', None)
        if skip is not None:
            macs += _conv_macs(skip.weight, res // 2)
        report.blocks.append(BlockCost(f'b{res}', res, int(block.conv0.weight.shape[1]),
                                       int(block.conv1.weight.shape[0]), _numel(block), macs))
    epi = D.b4
    macs = _conv_macs(epi.conv.weight, 4) + _fc_macs(epi.fc) + _fc_macs(epi.out)
    fromrgb = getattr(epi, 'fromrgb', None)
    if fromrgb is not None:
        macs += _conv_macs(fromrgb.weight, 4)
    report.blocks.append(BlockCost('b4', 4, int(epi.conv.weight.shape[0]), int(epi.out.weight.shape[0]),
                                   _numel(epi), macs))
    mapping = getattr(D, 'mapping', None)
    if mapping is not None:
        report.blocks.append(BlockCost('mapping', None, int(mapping.c_dim), int(mapping.w_dim), _numel(mapping),
                                       _mapping_macs(mapping)))
    return report


def synthesis_macs_for_channels(channels: dict[int, int], img_resolution: int, img_channels: int = 3,
                                architecture: str = 'skip', w_dim: int = 512, z_dim: int = 512, c_dim: int = 0,
                                mapping_layers: int = 8, convention: str = 'conv') -> int:
    """MACs of a generator whose feature maps at resolution r have channels[r] channels (analytic, no network).

    Same convention as generator_cost(); used by the rate solver to evaluate channel configurations quickly.
    """
    _check_convention(convention)
    log2 = int(math.log2(img_resolution))
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    macs = affine = 0
    for res in resolutions:
        c_out = channels[res]
        if res == 4:
            macs += res * res * c_out * c_out * 9
            affine += w_dim * c_out
        else:
            c_in = channels[res // 2]
            macs += (res // 2) ** 2 * c_out * c_in * 9 + res * res * c_out * c_out * 9
            affine += w_dim * c_in + w_dim * c_out
            if architecture == 'resnet':
                macs += (res // 2) ** 2 * c_out * c_in
        if architecture == 'skip' or res == img_resolution:
            macs += res * res * img_channels * c_out
            affine += w_dim * c_out
    if convention == 'conv':
        return macs
    embed = w_dim if c_dim > 0 else 0
    mapping = (c_dim * embed) + (z_dim + embed) * w_dim + (mapping_layers - 1) * w_dim * w_dim
    return macs + affine + mapping


def format_count(n: int) -> str:
    """Human-readable count: 14.90 G, 24.77 M, 1.2 k."""
    for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.2f} {unit}'
    return str(n)
