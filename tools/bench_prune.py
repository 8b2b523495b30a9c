"""Benchmark pruning and the pruned generators on this machine; writes section "prune" of docs/benchmarks.md.

Measures
1. `gan-prune prune` on the paper256-shaped built-in generator (400 samples by default): wall time and peak
   resident memory of the pruning process (run as a child process, so the peak is its own);
2. CPU latency of G(z, c) for the teacher and the students at the paper's channel ratios (batch 4, fp32,
   const noise, no grad; median of repeated runs after a warm-up), next to the MAC ratio;
3. where the time goes in the r = 0.8 student and the teacher: per synthesis block, and the top torch ops.

Usage: python tools/bench_prune.py [--samples 400] [--repeats 9] [--skip-prune] [--no-write]
"""
from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmd  # noqa: E402  (tools/ is not a package)

PAPER_RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95)
BATCH = 4
ROUNDS = 3  # latency calls are spread over this many rounds that each visit every network


def run_prune(samples: int, batch: int) -> dict:
    """Run the CLI in a child process; wall time and the child's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'paper256-pruned.pkl')
        args = ['prune', '--pkl', 'builtin:paper256', '--rate', '0.9573', '--mask', 'none', '--samples', str(samples),
                '--batch', str(batch), '--seed', '0', '--device', 'cpu', '--out', out]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, '-m', 'gan_prune', *args], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f'prune failed:\n{proc.stderr[-3000:]}')
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return dict(command='gan-prune ' + ' '.join(a if a != out else 'OUT.pkl' for a in args), seconds=seconds,
                cpu_seconds=cpu, peak_gib=after.ru_maxrss / 2 ** 20,  # Linux: KiB, max over children
                report=proc.stdout.strip())


def students(G) -> dict:
    """{ratio: student} cut from G at each paper ratio (which channels are kept does not change the speed)."""
    from gan_prune.prune.solver import ratio_channels
    from gan_prune.prune.surgery import feature_maps, slice_generator
    out = {}
    for ratio in PAPER_RATIOS:
        channels = ratio_channels(feature_maps(G), ratio)
        out[ratio] = slice_generator(G, {k: torch.arange(v) for k, v in channels.items()})
    return out


@torch.no_grad()
def latency(G, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of one G(z, c) call at batch 4, fp32, after a warm-up.

    With one thread the CPU time is what the call costs no matter how busy the (shared) machine is.
    """
    wall, cpu = timed_calls(G, repeats)
    return statistics.median(wall), statistics.median(cpu)


@torch.no_grad()
def timed_calls(G, repeats: int) -> tuple[list, list]:
    """(wall seconds, process CPU seconds) of `repeats` G(z, c) calls at batch 4, fp32, after one warm-up call."""
    from gan_prune.metrics.latency import generator_latency
    runs = generator_latency(G, batch=BATCH, repeats=repeats, warmup=1)
    return [t / 1000 for t in runs['wall_ms']], [t / 1000 for t in runs['cpu_ms']]


def latencies(teacher, nets: dict, repeats: int, threads: int, rounds: int = ROUNDS) -> dict:
    """{'teacher' or ratio: (median wall, median cpu)} measured with `threads` intra-op threads.

    The calls are spread over `rounds` rounds that each visit every network, so that a slow spell of the
    (shared) machine lands on teacher and students alike instead of on whichever was measured during it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    networks = {'teacher': teacher, **nets}
    counts = {key: max(3, repeats // 2) if key == 'teacher' else repeats for key in networks}
    samples = {key: ([], []) for key in networks}
    try:
        for r in range(rounds):
            for key, G in networks.items():
                share = counts[key] // rounds + (1 if r < counts[key] % rounds else 0)
                if share:
                    wall, cpu = timed_calls(G, share)
                    samples[key][0].extend(wall)
                    samples[key][1].extend(cpu)
    finally:
        torch.set_num_threads(previous)
    out = {key: (statistics.median(wall), statistics.median(cpu)) for key, (wall, cpu) in samples.items()}
    for ratio in nets:
        print(f'{threads} thread(s), ratio {ratio}: wall {out[ratio][0] * 1e3:.1f} ms, cpu '
              f'{out[ratio][1] * 1e3:.1f} ms, speed-up {out["teacher"][0] / out[ratio][0]:.1f}x wall, '
              f'{out["teacher"][1] / out[ratio][1]:.1f}x cpu', flush=True)
    return out


def latencies_without_kernels(teacher, student, repeats: int) -> Optional[tuple[float, float]]:
    """(teacher, student) 1-thread CPU seconds with the compiled narrow-layer kernels switched off."""
    from torch_utils.ops import narrow_conv
    if narrow_conv.kernels() is None:
        return None
    with narrow_conv.enabled(False):
        return latency(teacher, max(3, repeats // 2))[1], latency(student, repeats)[1]


@torch.no_grad()
def block_times(G, repeats: int = 3) -> dict:
    """Median process CPU seconds spent in each synthesis block (and the mapping network) per call.

    Timed by wrapping the blocks' forward methods and the direct block path of training.networks, not with
    forward hooks: a hook makes a block run as a module (see synthesis_blocks_forward), so hooks would time
    a different path than the one G takes.
    """
    from training import networks
    totals = {}
    blocks = {getattr(G.synthesis, f'b{r}'): f'b{r}' for r in G.synthesis.block_resolutions}

    def timed(fn, name_of):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            result = fn(*args, **kwargs)
            totals.setdefault(name_of(*args), []).append(time.process_time() - start)
            return result
        return wrapper

    originals = [(G.mapping, 'forward', G.mapping.__dict__.get('forward'))]
    G.mapping.forward = timed(G.mapping.forward, lambda *a: 'mapping')
    for block, name in blocks.items():
        originals.append((block, 'forward', block.__dict__.get('forward')))
        block.forward = timed(block.forward, lambda *a, _name=name: _name)
    direct = getattr(networks, '_narrow_block_forward', None)
    if direct is not None:
        networks._narrow_block_forward = timed(direct, lambda block, *a: blocks[block])
    try:
        latency(G, repeats)
    finally:
        for module, attr, value in originals:
            if value is None:
                module.__dict__.pop(attr, None)
            else:
                setattr(module, attr, value)
        if direct is not None:
            networks._narrow_block_forward = direct
    return {name: statistics.median(v[1:]) for name, v in totals.items()}  # drop the warm-up call


@torch.no_grad()
def top_ops(G, limit: int = 8) -> list[tuple[str, float]]:
    """Torch ops by self CPU time (fraction of the total) for one call."""
    from torch.profiler import ProfilerActivity, profile
    z = torch.randn([BATCH, G.z_dim])
    c = torch.zeros([BATCH, G.c_dim])
    G(z, c, noise_mode='const', force_fp32=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        G(z, c, noise_mode='const', force_fp32=True)
    events = [e for e in prof.key_averages() if e.key.startswith('aten::')]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:limit]]


def earlier_prune_section() -> list[str]:
    """The pruning subsection of the current docs/benchmarks.md (kept when this run skips pruning)."""
    try:
        text = open(benchmd.BENCH_MD, encoding='utf-8').read()
    except OSError:
        return []
    start = text.find('### Pruning paper256')
    end = text.find('### ', start + 4)
    section_end = text.find('<!-- /bench:prune -->', start)
    if start < 0 or section_end < 0:
        return []
    end = section_end if end < 0 else min(end, section_end)
    return text[start:end].rstrip().splitlines() + ['']


def load_average() -> str:
    try:
        return ', '.join(f'{x:.1f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples', type=int, default=400, help='images scored by the timed prune run')
    parser.add_argument('--batch', type=int, default=8, help='scoring batch of the timed prune run')
    parser.add_argument('--repeats', type=int, default=9,
                        help=f'timed calls per student, over {ROUNDS} interleaved rounds (median reported)')
    parser.add_argument('--skip-prune', action='store_true', help='only measure latency')
    parser.add_argument('--no-write', action='store_true', help='print instead of writing docs/benchmarks.md')
    args = parser.parse_args()

    from gan_prune.demo.builtin import load_builtin
    from gan_prune.nets.cost import generator_cost
    from torch_utils.ops import narrow_conv

    load_before = load_average()
    prune_run = None if args.skip_prune else run_prune(args.samples, args.batch)
    load_after_prune = load_average()
    teacher = load_builtin('paper256')['G_ema']
    nets = students(teacher)
    t_macs = generator_cost(teacher).total_macs
    threads = torch.get_num_threads()
    multi = latencies(teacher, nets, args.repeats, threads)
    single = latencies(teacher, nets, args.repeats, 1) if threads > 1 else multi
    rows = []
    for ratio, S in nets.items():
        s_macs = generator_cost(S).total_macs
        rows.append((ratio, [S.synthesis.channels[f'b{r}.out'] for r in S.synthesis.block_resolutions],
                     1 - s_macs / t_macs, t_macs / s_macs, multi[ratio][0], multi['teacher'][0] / multi[ratio][0],
                     single[ratio][1], single['teacher'][1] / single[ratio][1]))
    torch.set_num_threads(1)
    pytorch_path = latencies_without_kernels(teacher, nets[0.8], args.repeats)
    t_blocks, s_blocks = block_times(teacher), block_times(nets[0.8])
    s_ops, t_ops = top_ops(nets[0.8]), top_ops(teacher)
    torch.set_num_threads(threads)
    load_after = load_average()

    md = [f'Measured {datetime.date.today().isoformat()} on: {benchmd.machine_line()}.',
          f'Load average (1, 5, 15 min) before / after: {load_before} / {load_after} (the machine is shared; '
          f'higher load inflates times).', '']
    cmd = ('python tools/bench_prune.py' + (f' --samples {args.samples}' if args.samples != 400 else '')
           + (' --skip-prune   (the pruning table below is kept from the last full run)' if args.skip_prune else ''))
    md.append(f'Command: `{cmd}`')
    md.append('')
    if prune_run is not None:
        md += ['### Pruning paper256 (random weights, shapes of an FFHQ-256 checkpoint)', '',
               f'`{prune_run["command"]}`', '',
               f'Measured {datetime.date.today().isoformat()}; load average before / after: {load_before} / '
               f'{load_after_prune}.', '',
               '| wall time | CPU time (all threads) | peak memory (RSS) |', '|---|---|---|',
               f'| {prune_run["seconds"]:.0f} s ({prune_run["seconds"] / 60:.1f} min) | '
               f'{prune_run["cpu_seconds"]:.0f} s ({prune_run["cpu_seconds"] / 60:.1f} min) | '
               f'{prune_run["peak_gib"]:.2f} GiB |', '',
               'On an idle 2-core machine the wall time approaches half the CPU time.', '']
    else:
        md += earlier_prune_section()
    md += [f'### CPU latency, teacher vs student (G(z, c), batch {BATCH}, fp32, const noise, no grad; median of '
           f'{args.repeats} runs, teacher {max(3, args.repeats // 2)}, over {ROUNDS} rounds that each visit every '
           f'network)', '',
           f'Wall time with {threads} threads, and process CPU time with 1 thread (what a call costs regardless of '
           f'other load on this shared machine). Teacher: {multi["teacher"][0] * 1e3:.0f} ms wall, '
           f'{single["teacher"][1] * 1e3:.0f} ms CPU (1 thread) per batch; {t_macs / 1e9:.2f} GMACs per image '
           f'(conv + toRGB). Under load from other jobs the 2-thread wall times swing by 2-3x between runs (a '
           f'thread that waits for a descheduled partner stalls every small op); the 1-thread CPU column repeats '
           f'within a few percent and is the one to compare. Layers with at most {narrow_conv.MAX_CHANNELS} '
           f'output channels run through the compiled narrow-layer kernels, in both networks (section "narrow").',
           '',
           '| ratio r | channels b4..b256 | rate | MAC ratio | student wall ms | speed-up (wall) | '
           'student CPU ms, 1 thread | speed-up (CPU, 1 thread) |',
           '|---|---|---|---|---|---|---|---|']
    for ratio, chans, rate, mac_ratio, s_wall, wall_up, s_cpu, cpu_up in rows:
        md.append(f'| {ratio} | {", ".join(map(str, chans))} | {rate:.2%} | {mac_ratio:.1f}x | '
                  f'{s_wall * 1e3:.1f} | {wall_up:.1f}x | {s_cpu * 1e3:.1f} | {cpu_up:.1f}x |')
    if pytorch_path is not None:
        md += ['', f'Without the kernels (`TORCH_UTILS_CPU_KERNELS=0`, oneDNN throughout): teacher '
               f'{pytorch_path[0] * 1e3:.0f} ms, r = 0.8 student {pytorch_path[1] * 1e3:.1f} ms CPU (1 thread), '
               f'{pytorch_path[0] / pytorch_path[1]:.1f}x.']
    md += ['', '### Where the time goes (r = 0.8 student vs teacher, 1 thread, CPU ms per call)', '',
           '| part | teacher | student | ratio |', '|---|---|---|---|']
    for name in list(t_blocks):
        t, s = t_blocks[name], s_blocks.get(name, float('nan'))
        md.append(f'| {name} | {t * 1e3:.1f} | {s * 1e3:.1f} | {t / s:.1f}x |')
    md += ['', 'Top torch ops by self CPU time (share of all aten time in one call; the compiled kernels are not '
           'torch ops and are not counted here):', '',
           '| student r = 0.8 | share | teacher | share |', '|---|---|---|---|']
    for (sk, sv), (tk, tv) in zip(s_ops, t_ops):
        md.append(f'| {sk} | {sv:.0%} | {tk} | {tv:.0%} |')
    text = '\n'.join(md)
    if args.no_write:
        print(text)
    else:
        benchmd.write_section('prune', text)
        print(text)
        print(f'\nwrote section "prune" of {benchmd.BENCH_MD}')


if __name__ == '__main__':
    main()
