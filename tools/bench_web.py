"""Browser milliseconds per image of exported students of the paper256-shaped built-in generator.

For each rate r: cut the student (channels kept as the paper's ratio r gives; which channels does not change
the speed), `export --format web` it (fp32 weights, and fp16 storage for the size column), serve the folder on
localhost, open it in headless Chromium (WebAssembly, one thread: a plain http server is not cross-origin
isolated) and read the page's own measurement: the median ms per image of `--images` renders after the first.

Usage: GAN_PRUNE_ORT_WEB=.../package python tools/bench_web.py [--rates 0.8,0.9] [--images 9] [--rounds 3]
Prints one Markdown table row per rate (paste into docs/benchmarks.md, section "web").
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

import torch


def student(G, rate: float):
    from gan_prune.prune.solver import ratio_channels
    from gan_prune.prune.surgery import feature_maps, slice_generator
    channels = ratio_channels(feature_maps(G), rate)
    return slice_generator(G, {k: torch.arange(v) for k, v in channels.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rates', default='0.8,0.9', help='comma list of pruning rates (default 0.8,0.9)')
    parser.add_argument('--images', type=int, default=9, help='images per page load (default 9)')
    parser.add_argument('--rounds', type=int, default=3, help='page loads per rate; the median is kept (default 3)')
    args = parser.parse_args()
    from gan_prune.demo.builtin import load_builtin
    from gan_prune.runtime.export import export_web
    from gan_prune.runtime.webassets import find_chromium, find_ort_web, render_in_browser, serve_folder
    chromium, ort_web = find_chromium(), find_ort_web()
    if chromium is None:
        sys.exit('Chromium not found (apt-get install -y chromium)')
    G = load_builtin('paper256')['G_ema']
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; chromium {chromium}; '
          f'load average before: {", ".join(f"{v:.1f}" for v in os.getloadavg())}')
    print('| rate | ms per image (median) | all rounds | model fp32 | model --fp16 |')
    print('|---|---|---|---|---|')
    for rate in [float(r) for r in args.rates.split(',')]:
        S = student(G, rate)
        with tempfile.TemporaryDirectory() as tmp:
            fp32, fp16 = os.path.join(tmp, 'fp32'), os.path.join(tmp, 'fp16')
            export_web(S, fp32, truncation_psi=0.7, ort_web=ort_web)
            export_web(S, fp16, truncation_psi=0.7, fp16_weights=True, ort_web=ort_web)
            sizes = [os.path.getsize(os.path.join(folder, 'model.onnx')) / 2 ** 20 for folder in (fp32, fp16)]
            runs = []
            with serve_folder(fp32) as server:
                for _ in range(args.rounds):
                    result = render_in_browser(f'{server.url}?seed=0&count={args.images}&backend=wasm', chromium)
                    if result.get('error'):
                        sys.exit(f'page error: {result["error"]}')
                    runs.append(result['msPerImage'])
        print(f'| {rate} | {statistics.median(runs):.0f} | {", ".join(f"{r:.0f}" for r in runs)} | '
              f'{sizes[0]:.1f} MiB | {sizes[1]:.1f} MiB |', flush=True)
    print(f'load average after: {", ".join(f"{v:.1f}" for v in os.getloadavg())}')


if __name__ == '__main__':
    main()
