"""CPU speed of training.networks: G and D, forward and forward+backward, against a straightforward baseline.

The baseline is written here from the generic definitions of the interface spec: the fused modulated
convolution (per-sample weights, demodulation, one grouped convolution), conv2d_resample by its definition
(upfirdn2d as zero insertion + padding + a 2-D depthwise convolution, then a valid convolution, then
upfirdn2d for downsampling), and bias_act as plain ops. It runs on the very same parameters, and the bench
asserts that both give the same outputs and gradients before it reports any timing.

Writes the "networks" section of docs/benchmarks.md (median ms per image, batch 4, fp32).

    python tools/bench_networks.py                 # all configs (about 10 minutes on 2 cores)
    python tools/bench_networks.py --quick         # 32 px only, no file written
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from training import networks

from gan_prune.core import bench

BENCH_MD = bench.repo_file(__file__, 'docs', 'benchmarks.md')

#----------------------------------------------------------------------------
# Baseline ops, straight from the definitions.


def ref_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Zero insertion, zero padding [x0, x1, y0, y1], 2-D depthwise true convolution with f*gain, subsampling."""
    N, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    x = F.pad(x, list(pad))
    kernel = (f * gain).to(x.dtype).flip([0, 1])[None, None].repeat(C, 1, 1, 1)
    x = F.conv2d(x, kernel, groups=C)
    return x[:, :, ::down, ::down]


def ref_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True):
    fh, fw = (f.shape if f is not None else (1, 1))
    p = [padding] * 4
    if up > 1:
        p = [p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fh + up - 1) // 2, p[3] + (fh - up) // 2]
    if down > 1:
        p = [p[0] + (fw - down + 1) // 2, p[1] + (fw - down) // 2, p[2] + (fh - down + 1) // 2, p[3] + (fh - down) // 2]
    x = ref_upfirdn2d(x, f, up=up, pad=p, gain=up * up) if up > 1 else F.pad(x, p)
    if not flip_weight:
        w = w.flip([2, 3])
    x = F.conv2d(x, w, groups=groups)
    if down > 1:
        x = ref_upfirdn2d(x, f, down=down)
    return x


def ref_bias_act(x, b, act='linear', gain=1.0, clamp=None):
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == 'lrelu':
        x = F.leaky_relu(x, 0.2)
    x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def ref_modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, f=None, demodulate=True, flip_weight=True):
    N, in_ch = styles.shape
    out_ch, _, kh, kw = weight.shape
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    x = ref_conv2d_resample(x.reshape(1, N * in_ch, *x.shape[2:]), w.reshape(N * out_ch, in_ch, kh, kw), f=f,
                            up=up, padding=padding, groups=N, flip_weight=flip_weight)
    x = x.reshape(N, out_ch, *x.shape[2:])
    return x + noise if noise is not None else x


def ref_fc(fc, x):
    w = fc.weight * float(fc.weight_gain)
    b = fc.bias * float(fc.bias_gain)
    x = x @ w.t()
    return ref_bias_act(x, b, fc.activation, gain=np.sqrt(2) if fc.activation == 'lrelu' else 1.0)


def ref_conv_layer(layer, x, gain=1.0):
    x = ref_conv2d_resample(x, layer.weight * float(layer.weight_gain), f=layer.resample_filter, up=layer.up,
                            down=layer.down, padding=layer.padding, flip_weight=(layer.up == 1))
    clamp = layer.conv_clamp * gain if layer.conv_clamp is not None else None
    return ref_bias_act(x, layer.bias, layer.activation, gain=float(layer.act_gain) * gain, clamp=clamp)


def ref_synthesis_layer(layer, x, w):
    styles = ref_fc(layer.affine, w)
    noise = layer.noise_const * layer.noise_strength if layer.use_noise else None
    x = ref_modulated_conv2d(x, layer.weight, styles, noise=noise, up=layer.up, padding=layer.padding,
                             f=layer.resample_filter, flip_weight=(layer.up == 1))
    clamp = layer.conv_clamp if layer.conv_clamp is not None else None
    return ref_bias_act(x, layer.bias, layer.activation, gain=float(layer.act_gain), clamp=clamp)


def ref_generator(G, z):
    """Skip-architecture generator, noise_mode='const', no truncation."""
    m = G.mapping
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    for idx in range(m.num_layers):
        x = ref_fc(getattr(m, f'fc{idx}'), x)
    ws = x.unsqueeze(1).repeat(1, G.num_ws, 1)
    x = img = None
    w_idx = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f'b{res}')
        assert block.architecture == 'skip'
        if block.in_channels == 0:
            x = block.const.unsqueeze(0).repeat(z.shape[0], 1, 1, 1)
            x = ref_synthesis_layer(block.conv1, x, ws[:, w_idx])
        else:
            x = ref_synthesis_layer(block.conv0, x, ws[:, w_idx])
            x = ref_synthesis_layer(block.conv1, x, ws[:, w_idx + 1])
        w_idx += block.num_conv
        if img is not None:
            fh, fw = block.resample_filter.shape
            img = ref_upfirdn2d(img, block.resample_filter, up=2, gain=4,
                                pad=[(fw + 1) // 2, (fw - 2) // 2, (fh + 1) // 2, (fh - 2) // 2])
        torgb = block.torgb
        styles = ref_fc(torgb.affine, ws[:, w_idx]) * float(torgb.weight_gain)
        y = ref_bias_act(ref_modulated_conv2d(x, torgb.weight, styles, demodulate=False), torgb.bias)
        img = img + y if img is not None else y
    return img


def ref_discriminator(D, img):
    """Resnet-architecture unconditional discriminator."""
    x = None
    for res in D.block_resolutions:
        block = getattr(D, f'b{res}')
        assert block.architecture == 'resnet'
        if block.in_channels == 0:
            x = ref_conv_layer(block.fromrgb, img)
        y = ref_conv_layer(block.skip, x, gain=np.sqrt(0.5))
        x = ref_conv_layer(block.conv1, ref_conv_layer(block.conv0, x), gain=np.sqrt(0.5))
        x = y + x
    ep = D.b4
    N, C, H, W = x.shape
    G = min(ep.mbstd.group_size, N)
    y = x.reshape(G, -1, 1, C, H, W)
    y = ((y - y.mean(dim=0)).square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, 1, 1, 1)
    x = torch.cat([x, y.repeat(G, 1, H, W)], dim=1)
    x = ref_conv_layer(ep.conv, x)
    x = ref_fc(ep.fc, x.flatten(1))
    return ref_fc(ep.out, x)

#----------------------------------------------------------------------------


def build(res: int):
    """The paper256 configuration (z = w = 512, 8 mapping layers, channel_base 16384, channel_max 512), fp32."""
    torch.manual_seed(res)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=8),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=None))
    D = networks.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=16384, channel_max=512,
                               num_fp16_res=0, conv_clamp=None, epilogue_kwargs=dict(mbstd_group_size=4))
    # Random buffers and biases, so that every term of the computation matters in the comparison.
    with torch.no_grad():
        for net in (G, D):
            for name, t in net.state_dict().items():
                if 'resample_filter' not in name:
                    t.add_(0.1 * torch.randn(t.shape))
    return G.eval(), D.eval()


def median_ms(fns: list, repeats: int, clock: str) -> list:
    """Median time of each function in ms; runs alternate between them so that they see the same load.

    clock 'wall': elapsed time. clock 'cpu': CPU time of this process, which other jobs on a shared machine
    do not inflate (meaningful with one thread, where it equals the time the call needs on an idle core).
    """
    timer = time.perf_counter if clock == 'wall' else time.process_time
    for fn in fns:
        fn()  # warm-up: oneDNN primitive creation, allocator
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = timer()
            fn()
            t.append(timer() - t0)
    return [statistics.median(t) * 1000 for t in times]


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max()) / max(1.0, float(b.detach().abs().max()))


def l2_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check_outputs(G, D, z, img_in, out_tol=1e-5, grad_tol=1e-3):
    """Ours and the baseline agree on outputs and on gradients w.r.t. inputs and parameters.

    Outputs: max|a-b| <= 1e-5 * max(1, max|b|), as for the golden data. Gradients are compared in relative L2
    norm: a pre-activation within rounding of lrelu's kink can take the other branch in either implementation,
    which changes a few gradient entries by O(their size) while the rest agree to rounding.
    """
    params = [G.synthesis.b8.conv0.weight, G.mapping.fc0.weight]
    ours = G(z, None, noise_mode='const', force_fp32=True)
    ref = ref_generator(G, z)
    rel = max_rel_diff(ours, ref)
    assert rel <= out_tol, f'G outputs differ: {rel:.3g}'
    g_ours = torch.autograd.grad(ours.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    for a, b in zip(g_ours, g_ref):
        assert l2_rel_diff(a, b) <= grad_tol, f'G gradients differ: {l2_rel_diff(a, b):.3g}'
    img = img_in.clone().requires_grad_(True)
    ours = D(img, None, force_fp32=True)
    ref = ref_discriminator(D, img)
    assert max_rel_diff(ours, ref) <= out_tol, f'D outputs differ: {max_rel_diff(ours, ref):.3g}'
    (ga,) = torch.autograd.grad(ours.sum(), [img])
    (gb,) = torch.autograd.grad(ref.sum(), [img])
    assert l2_rel_diff(ga, gb) <= grad_tol, f'D gradients differ: {l2_rel_diff(ga, gb):.3g}'
    return rel


def bench_res(res: int, repeats: int, batch: int, threads: int, clock: str, with_generic: bool) -> tuple:
    torch.set_num_threads(threads)
    G, D = build(res)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, 512, generator=g)
    img = torch.randn(batch, 3, res, res, generator=g)
    rel = check_outputs(G, D, z, img)

    def g_fwd(ours=True):
        with torch.no_grad():
            return G(z, None, noise_mode='const', force_fp32=True) if ours else ref_generator(G, z)

    def g_fwd_bwd(ours=True):
        out = G(z, None, noise_mode='const', force_fp32=True) if ours else ref_generator(G, z)
        out.square().mean().backward()

    def d_fwd(ours=True):
        with torch.no_grad():
            return D(img, None, force_fp32=True) if ours else ref_discriminator(D, img)

    def d_fwd_bwd(ours=True):
        x = img.clone().requires_grad_(True)
        out = D(x, None, force_fp32=True) if ours else ref_discriminator(D, x)
        out.sum().backward()

    def g_fwd_generic():
        # The other modulation order of training/networks.py (non-fused: modulated activations, one batched
        # convolution), what the compile backend runs on the CPU, next to the eval default (fused).
        with torch.no_grad():
            return G(z, None, noise_mode='const', force_fp32=True, fused_modconv=False)

    rows = []
    cases = [('G', 'forward', g_fwd), ('G', 'forward+backward', g_fwd_bwd),
             ('D', 'forward', d_fwd), ('D', 'forward+backward', d_fwd_bwd)]
    for net, name, fn in cases:
        fns = [functools.partial(fn, True), functools.partial(fn, False)]
        fns += [g_fwd_generic] if with_generic and fn is g_fwd else []
        ms = [t / batch for t in median_ms(fns, repeats, clock)]
        rows.append(dict(res=res, net=net, name=name, ours=ms[0], base=ms[1], generic=ms[2] if len(ms) > 2 else None))
        extra = f'   device-independent path {ms[2]:8.1f}' if len(ms) > 2 else ''
        print(f'{res:4d} px {threads} thr {clock:4s} {net} {name:17s} ours {ms[0]:8.1f} ms/img   '
              f'baseline {ms[1]:8.1f}{extra}', flush=True)
    return rows, rel


load_average = bench.load_average


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads for the wall-clock runs')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per measurement (median reported)')
    parser.add_argument('--batch', type=int, default=4, help='batch size')
    parser.add_argument('--quick', action='store_true', help='32 px only, 2 repeats, do not write docs/benchmarks.md')
    args = parser.parse_args(argv)
    resolutions = [32] if args.quick else [32, 64, 256]
    repeats = 2 if args.quick else args.repeats

    load_before = load_average()
    runs = [(args.threads, 'wall'), (1, 'cpu')]
    table, rels = {}, {}
    for threads, clock in runs:
        for res in resolutions:
            with_generic = (res == 256 or args.quick)
            rows, rels[res] = bench_res(res, repeats, args.batch, threads, clock, with_generic)
            for row in rows:
                table.setdefault((row['res'], row['net'], row['name']), {})[clock] = row
    if args.quick:
        return

    torch.set_num_threads(args.threads)  # so that the machine line names the wall-clock thread count
    command = 'python tools/bench_networks.py' + ''.join(f' {a}' for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        '## networks: training/networks.py on CPU',
        '',
        f'Machine: {bench.machine_line()}. Measured {time.strftime("%Y-%m-%d")}; load average (1, 5, 15 min) '
        f'before / after: {load_before} / {load_average()} (the machine is shared; load inflates wall times).',
        f'Command: `{command}`: batch {args.batch}, float32, median of {repeats} timed runs after one warm-up, '
        'ours and baseline alternating, reported per image. Wall: elapsed time with '
        f'{args.threads} threads. CPU: process CPU time with 1 thread (not inflated by other jobs).',
        '',
        'Networks: the paper256 family (z = w = 512, 8 mapping layers, channel_base 16384, channel_max 512, '
        'num_fp16_res 0, G skip, D resnet) at 32, 64 and 256 px, random weights. G runs mapping + synthesis with '
        "noise_mode='const', force_fp32=True; backward is of a scalar loss w.r.t. all parameters "
        '(and the image for D).',
        'Baseline: written in the bench from the generic definitions (fused grouped modulated conv, upfirdn2d as '
        'zero insertion + pad + 2-D depthwise conv, bias_act as plain ops); the bench first asserts that its '
        'outputs and gradients match ours (max relative difference of the G images: '
        + ', '.join(f'{r} px {v:.1e}' for r, v in rels.items()) + ').',
        '',
        '| res | net | pass | ours, wall (ms/img) | baseline, wall | speed-up | ours, CPU 1 thread | '
        'baseline, CPU 1 thread | speed-up |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for (res, net, name), by_clock in table.items():
        cells = []
        for clock in ('wall', 'cpu'):
            row = by_clock[clock]
            cells += [f'{row["ours"]:.1f}', f'{row["base"]:.1f}', f'{row["base"] / row["ours"]:.2f}x']
        lines.append(f'| {res} | {net} | {name} | ' + ' | '.join(cells) + ' |')
    generic = table[(256, 'G', 'forward')]
    lines += ['', 'Non-fused modulation (fused_modconv=False: modulated activations and one batched convolution, '
              'what the compile backend runs on the CPU) for the 256 px G forward: '
              f'{generic["wall"]["generic"]:.1f} ms/img wall, {generic["cpu"]["generic"]:.1f} ms/img CPU '
              '(1 thread), against the fused default above.']
    g256 = generic['wall']['ours']
    lines += ['', f'Target (paper256 G forward, batch 4, fp32, 2 threads): at most 350 ms per image; measured '
              f'{g256:.0f} ms wall ({"met" if g256 <= 350 else "not met on this run"}), '
              f'{generic["cpu"]["ours"]:.0f} ms CPU time with one thread.']
    bench.write_section('networks', '\n'.join(lines), BENCH_MD)
    print('wrote the networks section of', BENCH_MD)


if __name__ == '__main__':
    main()
