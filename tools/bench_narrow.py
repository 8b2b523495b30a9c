"""Compiled narrow-layer kernels vs the reference layer, layer by layer; writes section "narrow" of docs/benchmarks.md.

Each row times one modulated 3x3 synthesis layer (with its noise, bias, leaky ReLU and clamp) in float32
inference at batch 4 on one thread, once through the kernel op of the cpu-kernels backend
(gan_prune::modulated_lrelu) and once through the reference SynthesisLayer (oneDNN convolutions, non-fused
modulation as the eager and compile backends run it on the CPU). The two are interleaved; the table
reports the median process CPU time of each. The shapes are the layers of the paper256 teacher and of its
students at the paper's channel ratios; the crossover sets narrow_conv.MAX_CHANNELS.

Usage: python tools/bench_narrow.py [--repeats 9] [--no-write]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from gan_prune.core import bench

BENCH_MD = bench.repo_file(__file__, 'docs', 'benchmarks.md')

# (in channels, out channels, output resolution, up): 3x3 layers, then upsampling layers.
SHAPES = [
    (13, 13, 256, 1), (26, 26, 128, 1), (52, 52, 64, 1), (20, 20, 256, 1), (39, 39, 256, 1), (77, 77, 64, 1),
    (103, 103, 32, 1), (64, 64, 256, 1), (128, 128, 128, 1), (154, 154, 64, 1), (256, 256, 64, 1),
    (512, 512, 32, 1),
    (26, 13, 256, 2), (52, 26, 128, 2), (103, 52, 64, 2), (39, 20, 256, 2), (103, 103, 32, 2), (128, 64, 256, 2),
    (256, 128, 128, 2), (308, 154, 64, 2), (512, 256, 64, 2), (512, 512, 32, 2),
]
BATCH = 4


@torch.no_grad()
def time_layer(in_ch: int, out_ch: int, resolution: int, up: int, repeats: int) -> tuple[float, float]:
    """(median ms through the kernel op, median ms through the reference layer) for one layer shape."""
    from gan_prune.runtime.cpu_kernels import modulated_lrelu
    from training import networks
    torch.manual_seed(0)
    layer = networks.SynthesisLayer(in_ch, out_ch, w_dim=512, resolution=resolution, up=up, conv_clamp=256).eval()
    layer.noise_strength.data.fill_(0.1)
    x = torch.randn([BATCH, in_ch, resolution // up, resolution // up])
    w = torch.randn([BATCH, 512])
    f = layer.resample_filter if up == 2 else None

    def through_kernels():
        # The op takes any width (wide layers are timed too, to show the crossover).
        modulated_lrelu(x, layer.weight, layer.affine(w), layer.bias, layer.noise_const, 0.1, layer.act_gain,
                        0.2, 256.0, up, f)

    def through_reference():
        layer(x, w, noise_mode='const', fused_modconv=False)

    times = {True: [], False: []}
    for _ in range(repeats + 1):
        for use_kernels, run in ((True, through_kernels), (False, through_reference)):
            start = time.process_time()
            run()
            times[use_kernels].append(time.process_time() - start)
    return statistics.median(times[True][1:]) * 1e3, statistics.median(times[False][1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=9, help='timed calls per layer and path (median reported)')
    bench.add_report_option(parser)
    args = parser.parse_args()

    from torch_utils.ops import narrow_conv
    if narrow_conv.kernels() is None:
        raise SystemExit('the narrow-layer kernels are not available here (see the log above)')
    torch.set_num_threads(1)
    rows = []
    for in_ch, out_ch, resolution, up in SHAPES:
        kernel_ms, onednn_ms = time_layer(in_ch, out_ch, resolution, up, args.repeats)
        kind = '3x3' if up == 1 else 'upsampling'
        print(f'{kind} {in_ch}->{out_ch} @{resolution}: kernels {kernel_ms:.2f} ms, reference {onednn_ms:.2f} ms, '
              f'ratio {kernel_ms / onednn_ms:.2f}', flush=True)
        rows.append(f'| {kind} | {in_ch} -> {out_ch} | {resolution} | {kernel_ms:.2f} | {onednn_ms:.2f} | '
                    f'{kernel_ms / onednn_ms:.2f} | {"kernels" if out_ch <= narrow_conv.MAX_CHANNELS else "reference"} |')
    md = ['## Narrow-layer kernels vs the reference layer (one synthesis layer, batch 4, fp32, 1 thread)', '',
          f'Measured {datetime.date.today().isoformat()} on: {bench.machine_line()}. Load average: '
          f'{bench.load_average()}.',
          f'Command: `python tools/bench_narrow.py` (median process CPU time of {args.repeats} interleaved calls '
          'per path; the whole layer: convolution, noise, bias, leaky ReLU, clamp).', '',
          '| layer | channels | output px | kernels ms | reference ms | kernels / reference | cpu-kernels uses |',
          '|---|---|---|---|---|---|---|', *rows, '',
          f'In the cpu-kernels backend, layers with at most {narrow_conv.MAX_CHANNELS} output channels use the '
          'kernels (`torch_utils.ops.narrow_conv.MAX_CHANNELS`), the teacher as well as the students; the other '
          'backends never do.']
    if args.no_write:
        print('\n'.join(md))
    else:
        bench.write_section('narrow', '\n'.join(md), BENCH_MD)
        print(f'wrote section "narrow" of {BENCH_MD}')


if __name__ == '__main__':
    main()
