"""`gan-prune info`: what is inside a network pickle, and what it costs per block."""
from __future__ import annotations

import json
import os
from typing import Any

import click

from gan_prune.errors import GanPruneError
from gan_prune.generator import cost


def sniff_format(src: str) -> str:
    """Name the on-disk format of `src` from the globals its pickle stream references (nothing is loaded)."""
    from gan_prune.io.unpickler import referenced_globals
    if src.startswith('builtin:'):
        return 'built-in (built by gan_prune)'
    if '://' in src and not src.startswith('file://'):
        return 'network pickle (downloaded)'
    path = src[len('file://'):] if src.startswith('file://') else src
    try:
        with open(path, 'rb') as f:
            modules = {module for module, _ in referenced_globals(f)}
    except Exception:  # pylint: disable=broad-except
        return 'unknown'
    if 'dnnlib.tflib.network' in modules:
        return 'TensorFlow StyleGAN2(-ADA) pickle (converted on load)'
    if 'torch_utils.persistence' in modules:
        return 'PyTorch StyleGAN2-ADA snapshot'
    return 'pickle'


def network_summary(data: dict, src: str, convention: str = 'conv') -> dict:
    """Everything `info` shows, as plain data (the --json output)."""
    G = data.get('G_ema', data.get('G'))
    D = data.get('D')
    if G is None:
        raise GanPruneError(f'{src} holds no generator (no G_ema or G entry); is it a StyleGAN2-ADA network pickle?')
    syn = G.synthesis
    blocks = [getattr(syn, f'b{r}') for r in syn.block_resolutions]
    summary: dict[str, Any] = dict(
        source=src,
        format=sniff_format(src),
        generator=dict(
            class_name=type(G).__name__,
            img_resolution=int(G.img_resolution), img_channels=int(G.img_channels),
            z_dim=int(G.z_dim), w_dim=int(G.w_dim), c_dim=int(G.c_dim), num_ws=int(G.num_ws),
            mapping_layers=int(getattr(G.mapping, 'num_layers', 0)),
            architecture=str(getattr(blocks[-1], 'architecture', '?')),
            fp16_blocks=[f'b{b.resolution}' for b in blocks if getattr(b, 'use_fp16', False)],
            conv_clamp=getattr(getattr(blocks[-1], 'conv1', None), 'conv_clamp', None),
            cost=cost.generator_cost(G, convention).as_dict(),
        ),
    )
    if D is not None:
        d_blocks = [getattr(D, f'b{r}') for r in D.block_resolutions]
        summary['discriminator'] = dict(
            class_name=type(D).__name__,
            architecture=str(getattr(d_blocks[0], 'architecture', '?')) if d_blocks else '?',
            fp16_blocks=[f'b{b.resolution}' for b in d_blocks if getattr(b, 'use_fp16', False)],
            mbstd_group_size=getattr(getattr(D.b4, 'mbstd', None), 'group_size', None),
            cost=cost.discriminator_cost(D).as_dict(),
        )
    extras = sorted(k for k in data if k not in ('G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'))
    summary['augment_pipe'] = data.get('augment_pipe') is not None
    summary['training_set_kwargs'] = _plain(data.get('training_set_kwargs'))
    summary['extra_keys'] = extras
    from gan_prune.generator.finite import nonfinite_networks
    summary['nonfinite_weights'] = nonfinite_networks(data)  # {network: {tensor: count}}; empty when all finite
    if isinstance(data.get('pruning'), dict):
        pr = data['pruning']
        summary['pruning'] = {k: _plain(pr[k]) for k in ('criterion', 'rate', 'ratio', 'rate_convention', 'source_sha256')
                              if k in pr}
    return summary


def _plain(obj):
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj)


def _table(rows: list[dict], convention_text: str) -> list[str]:
    lines = [f'  {"block":<8} {"res":>5} {"in":>6} {"out":>6} {"params":>14} {"MACs":>18}']
    for r in rows:
        res = '' if r['resolution'] is None else str(r['resolution'])
        lines.append(f'  {r["name"]:<8} {res:>5} {r["in_channels"]:>6} {r["out_channels"]:>6} '
                     f'{r["params"]:>14,} {r["macs"]:>18,}')
    return lines


def format_summary(s: dict) -> str:
    g = s['generator']
    out = [f'source:     {s["source"]}',
           f'format:     {s["format"]}',
           f'generator:  {g["class_name"]}  {g["img_resolution"]}x{g["img_resolution"]}x{g["img_channels"]}, '
           f'z_dim {g["z_dim"]}, w_dim {g["w_dim"]}, c_dim {g["c_dim"]}, num_ws {g["num_ws"]}, '
           f'mapping layers {g["mapping_layers"]}',
           f'            architecture {g["architecture"]}, fp16 blocks: {", ".join(g["fp16_blocks"]) or "none"}, '
           f'conv_clamp {g["conv_clamp"]}']
    if 'discriminator' in s:
        d = s['discriminator']
        out.append(f'discrim.:   {d["class_name"]}  architecture {d["architecture"]}, fp16 blocks: '
                   f'{", ".join(d["fp16_blocks"]) or "none"}, mbstd group {d["mbstd_group_size"]}')
    if 'pruning' in s:
        out.append('pruning:    ' + ', '.join(f'{k} {v}' for k, v in s['pruning'].items()))
    if s['extra_keys']:
        out.append(f'extra keys: {", ".join(s["extra_keys"])}')
    gc = g['cost']
    out += ['', f'Generator (G_ema); MACs = {gc["convention_text"]}']
    out += _table(gc['blocks'], gc['convention_text'])
    out.append(f'  {"total":<8} {"":>5} {"":>6} {"":>6} {gc["total_params"]:>14,} {gc["total_macs"]:>18,}'
               f'   ({cost.format_count(gc["total_params"])} params, {cost.format_count(gc["total_macs"])}MACs)')
    if 'discriminator' in s:
        dc = s['discriminator']['cost']
        out += ['', 'Discriminator; MACs per image, each conv at its output resolution, plus epilogue and label mapping']
        out += _table(dc['blocks'], '')
        out.append(f'  {"total":<8} {"":>5} {"":>6} {"":>6} {dc["total_params"]:>14,} {dc["total_macs"]:>18,}'
                   f'   ({cost.format_count(dc["total_params"])} params, {cost.format_count(dc["total_macs"])}MACs)')
    return '\n'.join(out)


def _show_exported(src: str, as_json: bool) -> bool:
    """Describe a model written by `gan-prune export` (.onnx or TorchScript); False when src is not one."""
    from gan_prune.runtime.exported import describe_exported, exported_kind, format_exported
    if exported_kind(src) is None:
        return False
    summary = describe_exported(src)
    click.echo(json.dumps(summary, indent=2) if as_json else format_exported(summary))
    return True


@click.command('info')
@click.option('--pkl', 'src', required=True, metavar='SRC',
              help='Network pickle: a path, an http(s) URL, or builtin:NAME (tiny32, paper256); or a model from '
                   'gan-prune export (.onnx, TorchScript): its inputs, outputs, size and opset.')
@click.option('--convention', type=click.Choice(cost.CONVENTIONS), default='conv', show_default=True,
              help="MAC counting: 'conv' = synthesis convs + toRGB (the paper's rates); 'total' adds style affines "
                   'and the mapping network.')
@click.option('--json', 'as_json', is_flag=True, help='Print the summary as JSON instead of tables.')
@click.option('--trust-pickle', is_flag=True,
              help='Allow code embedded in the pickle to run (only for custom architectures from a source you trust). '
                   'A TorchScript export (.pt) is a program too; info reads only the facts stored in it, as data, '
                   'runs none of it and needs no flag.')
def command(src: str, convention: str, as_json: bool, trust_pickle: bool) -> None:
    """Show format, dimensions, architecture and a per-block parameter/MAC table of a network pickle."""
    from gan_prune import load_network_pkl
    if not src.startswith('builtin:') and '://' not in src and not os.path.exists(src):
        raise GanPruneError(f'no such file: {src}')
    if _show_exported(src, as_json):
        return
    data = load_network_pkl(src, trust=trust_pickle)
    summary = network_summary(data, src, convention)
    from gan_prune.generator.finite import describe
    for key, found in summary['nonfinite_weights'].items():  # on stderr: --json output stays valid JSON
        click.echo(f'warning: {describe(key, found)}; its images and metrics will be NaN (a diverged or '
                   f'damaged network?)', err=True)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
