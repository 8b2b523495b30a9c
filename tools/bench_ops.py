"""Benchmark the torch_utils ops on CPU against a straightforward implementation of the same definitions.

The straightforward variant below follows the definitions literally (zero insertion, explicit padding, one
2-D depthwise convolution per filter, NCHW throughout, out-of-place bias/activation/gain/clamp). Both run
the same StyleGAN2-ADA generator, interleaved, and the medians are compared; outputs must agree.

    python tools/bench_ops.py                      # paper256 generator, batch 4, 2 threads
    python tools/bench_ops.py --write              # also update docs/benchmarks.md (section ops-2threads-wall)
    python tools/bench_ops.py --threads 1 --clock cpu --write   # steadier on a busy machine
"""
from __future__ import annotations

import os
import statistics
import time

import click
import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.ops import bias_act, replaced_reference_ops


# ------------------------------------------------------------------------------------------------------------------
# Straightforward implementations of the definitions (the baseline).

def parse_scaling(scaling) -> tuple[int, int]:
    """int or [x, y] -> (x, y)."""
    return (int(scaling), int(scaling)) if isinstance(scaling, (int, np.integer)) else (int(scaling[0]), int(scaling[1]))


def parse_padding(padding) -> tuple[int, int, int, int]:
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, (int, np.integer)):
        padding = [padding, padding]
    if len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    x0, x1, y0, y1 = (int(p) for p in padding)
    return x0, x1, y0, y1


def filter_size(f) -> tuple[int, int]:
    """(width, height) of a FIR filter; a 1-D filter runs along both axes; None is 1x1."""
    return (1, 1) if f is None else (int(f.shape[-1]), int(f.shape[0]))


def plain_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    N, C, H, W = x.shape
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape(N, C, H * upy, W * upx)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat([C, 1, 1, 1]), groups=C)
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat([C, 1, 1, 1]), groups=C)
        x = F.conv2d(x, f[None, None, :, None].repeat([C, 1, 1, 1]), groups=C)
    return x[:, :, ::downy, ::downx]


def plain_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    def conv(x, w, stride=1, padding=0, transpose=False, flip=True):
        if not flip:
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)

    out_ch, Ig, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:
        px0, px1, py0, py1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = plain_upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return conv(x, w, flip=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = conv(x, w, flip=flip_weight)
        return plain_upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = plain_upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return conv(x, w, stride=down, flip=flip_weight)
    if up > 1:
        out_per_group = out_ch // groups
        w = w.transpose(0, 1) if groups == 1 else \
            w.reshape(groups, out_per_group, Ig, kh, kw).transpose(1, 2).reshape(groups * Ig, out_per_group, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        cx, cy = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, padding=[cy, cx], transpose=True, flip=not flip_weight)
        x = plain_upfirdn2d(x, f, padding=[px0 + cx, px1 + cx, py0 + cy, py1 + cy], gain=up ** 2,
                            flip_filter=flip_filter)
        if down > 1:
            x = plain_upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, padding=[py0, px0], flip=flip_weight)
    x = plain_upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return conv(x, w, flip=flip_weight)


def plain_bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    spec = bias_act.activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def straightforward_ops():
    """Run the straightforward implementations in place of the ops' reference paths for the duration of a block."""
    return replaced_reference_ops(upfirdn2d=plain_upfirdn2d, conv2d_resample=plain_conv2d_resample,
                                  bias_act=plain_bias_act)


# ------------------------------------------------------------------------------------------------------------------
# Measurements.

def build_generator(resolution: int) -> torch.nn.Module:
    """The paper256 configuration (channel_base 16384, 8 mapping layers, conv_clamp 256) at `resolution`."""
    from training.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
    return G.eval().requires_grad_(False)


def time_call(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


@click.command()
@click.option('--resolution', type=int, default=256, show_default=True, help='Generator output resolution.')
@click.option('--batch', type=int, default=4, show_default=True, help='Images per generator call.')
@click.option('--threads', type=int, default=2, show_default=True, help='torch.set_num_threads value.')
@click.option('--repeats', type=int, default=5, show_default=True, help='Timed calls per variant (interleaved).')
@click.option('--clock', type=click.Choice(['wall', 'cpu']), default='wall', show_default=True,
              help="'cpu' counts this process's CPU time: steadier on a busy machine.")
@click.option('--write', is_flag=True, help='Write the results to docs/benchmarks.md (one section per threads/clock).')
def main(resolution: int, batch: int, threads: int, repeats: int, clock: str, write: bool) -> None:
    """Time a generator forward with the straightforward and the shipped ops; print medians per image."""
    torch.set_num_threads(threads)
    G = build_generator(resolution)
    z = torch.from_numpy(np.random.RandomState(0).randn(batch, G.z_dim)).float()
    c = torch.zeros([batch, G.c_dim])

    def run():
        with torch.no_grad():
            return G(z, c, noise_mode='const', force_fp32=True)

    with straightforward_ops():
        img_plain = run()  # warm-up, and the reference for the agreement check
    img_fast = run()
    diff = float((img_plain - img_fast).abs().max())
    scale = float(img_plain.abs().max())

    timer = time.perf_counter if clock == 'wall' else time.process_time
    plain_times, fast_times = [], []
    for _ in range(repeats):
        with straightforward_ops():
            plain_times.append(time_call(run, timer) / batch)
        fast_times.append(time_call(run, timer) / batch)
    plain, fast = statistics.median(plain_times), statistics.median(fast_times)

    from gan_prune.core import bench
    command = f'python tools/bench_ops.py --resolution {resolution} --batch {batch} --threads {threads} ' \
              f'--repeats {repeats} --clock {clock}'
    markdown = '\n'.join([
        f'## torch_utils ops: generator forward on CPU ({resolution} px, paper256 config, fp32, batch {batch})',
        '',
        f'| implementation | median s/image ({clock} clock) | best | all runs (s/image) |',
        '|---|---|---|---|',
        f'| straightforward definitions | {plain:.3f} | {min(plain_times):.3f} | '
        f'{", ".join(f"{t:.3f}" for t in plain_times)} |',
        f'| torch_utils.ops (shipped) | {fast:.3f} | {min(fast_times):.3f} | '
        f'{", ".join(f"{t:.3f}" for t in fast_times)} |',
        '',
        f'Speed-up {plain / fast:.2f}x (median), {min(plain_times) / min(fast_times):.2f}x (best); outputs agree to '
        f'max|diff| {diff:.2e} (max|img| {scale:.2f}). Load average at the end: {os.getloadavg()[0]:.1f}.',
        f'Machine: {bench.machine_line()}. Command: `{command}`.',
    ])
    print(markdown)
    if write:
        report = bench.repo_file(__file__, 'docs', 'benchmarks.md')
        bench.write_section(f'ops-{threads}threads-{clock}', markdown, report)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
