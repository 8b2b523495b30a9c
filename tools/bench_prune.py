"""Benchmark pruning and the pruned generators on this machine; writes section "prune" of docs/benchmarks.md.

Measures
1. `gan-prune prune` on the paper256-shaped built-in generator (400 samples by default): wall time and peak
   resident memory of the pruning process (run as a child process, so the peak is its own);
2. CPU latency of the teacher and the students at the paper's channel ratios through each inference backend
   (--backend; ms per image, 1 thread and all threads, batch 1 and 4, fp32, const noise, no grad; median of
   repeated runs after a warm-up), next to the MAC ratio and the model file sizes;
3. where the time goes in the r = 0.8 student and the teacher on the eager backend: per synthesis block, and
   the top torch ops.

'onnxruntime' and 'openvino' export the float32 reference path here with torch.onnx.export(dynamo=True) (batch
dynamic; one file per network, which both run) and run it with ONNX Runtime's CPU provider and with the openvino
backend (OpenVINO's CPU plugin, fp32); the other backends come from gan_prune.runtime.backends. Each of them
counts as a standard backend in the comparison with cpu-kernels.

Usage: python tools/bench_prune.py [--backend eager,compile,onnxruntime,openvino,cpu-kernels] [--ratios 0.5,0.8]
       [--samples 400] [--repeats 5] [--skip-prune] [--no-write]
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
import torch

from gan_prune.core import bench

BENCH_MD = bench.repo_file(__file__, 'docs', 'benchmarks.md')

PAPER_RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95)
BATCH = 4  # the larger of the two batch sizes timed (and the batch of the eager profile)
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


def students(G, ratios=PAPER_RATIOS) -> dict:
    """{ratio: student} cut from G at each ratio (which channels are kept does not change the speed)."""
    from gan_prune.prune.solver import ratio_channels
    from gan_prune.prune.surgery import feature_maps, slice_generator
    out = {}
    for ratio in ratios:
        channels = ratio_channels(feature_maps(G), ratio)
        out[ratio] = slice_generator(G, {k: torch.arange(v) for k, v in channels.items()})
    return out


class Reference(torch.nn.Module):
    """G's float32 reference path as a function of z alone (const noise, truncation 1): what is exported."""

    def __init__(self, G: torch.nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z):
        return self.G(z, None, noise_mode='const', force_fp32=True, fused_modconv=False)


def export_reference(G: torch.nn.Module, path: str) -> None:
    """Export Reference(G) with the dynamo exporter (batch dynamic) to `path`, unless an earlier runner did."""
    if os.path.exists(path):
        return
    z = torch.randn([4, G.z_dim])
    batch = torch.export.Dim('batch', min=1, max=64)
    torch.onnx.export(Reference(G.eval()).eval(), (z,), path, dynamo=True, input_names=['z'], output_names=['img'],
                      dynamic_shapes={'z': {0: batch}}, external_data=False, verbose=False)


class ExportedRunner:
    """The float32 reference path of G exported to ONNX (once per network: the runners share the file), run by
    the registered backend `backend` that reads ONNX files, as `gan-prune generate --backend` runs it. Called like
    a backend; the runtime's intra-op threads follow torch.get_num_threads() at call time (one backend instance
    per thread count)."""

    backend = ''  # the registered backend that runs the file
    label = ''  # the runtime's name in the parity note

    def __init__(self, G: torch.nn.Module, path: str) -> None:
        self.check_installed()
        if G.c_dim:
            raise SystemExit(f'the {self.label} runner of this benchmark takes unconditional generators only')
        self.path, self.sessions = path, {}
        z = torch.randn([4, G.z_dim])
        export_reference(G, path)
        with torch.no_grad():
            expected = Reference(G)(z)
        self.max_error = float((self(z, None) - expected).abs().max())  # reported with the timings

    def check_installed(self) -> None:
        """Fail before the export when the runtime is an optional package that is not installed."""

    def __call__(self, z: torch.Tensor, c=None, noise_mode: str = 'const') -> torch.Tensor:
        from gan_prune.runtime.backends import BACKENDS
        threads = torch.get_num_threads()
        if threads not in self.sessions:
            self.sessions[threads] = BACKENDS.build(self.backend, self.path, threads=threads)
        return self.sessions[threads](z, None, noise_mode='const')


class OnnxRuntimeRunner(ExportedRunner):
    """ONNX Runtime's CPU provider (intra-op threads = torch's)."""

    backend, label = 'onnxruntime', 'ONNX Runtime'


class OpenVinoRunner(ExportedRunner):
    """OpenVINO's CPU plugin (fp32, INFERENCE_NUM_THREADS = torch's threads)."""

    backend, label = 'openvino', 'OpenVINO'

    def check_installed(self) -> None:
        from gan_prune.runtime.exported import import_openvino
        import_openvino()


EXPORTED_RUNNERS = {'onnxruntime': OnnxRuntimeRunner, 'openvino': OpenVinoRunner}


def build_runner(backend: str, G: torch.nn.Module, tmp: str, name: str):
    """A callable run(z, c, noise_mode='const') -> img for `backend`, and a note (accuracy, fallback) or ''."""
    if backend in EXPORTED_RUNNERS:
        runner = EXPORTED_RUNNERS[backend](G, os.path.join(tmp, f'{name}.onnx'))
        return runner, f'max |{runner.label} - eager| {runner.max_error:.1e}'
    from gan_prune.runtime.backends import BACKENDS
    return BACKENDS.build(backend, G, device='cpu'), ''


@torch.no_grad()
def timed_calls(run, z_dim: int, repeats: int, batch: int) -> tuple[list, list]:
    """(wall seconds, process CPU seconds) of `repeats` run(z, c) calls on `batch` images, after one warm-up."""
    from gan_prune.runtime.latency import time_calls
    runs = time_calls(run, z_dim, 0, batch=batch, repeats=repeats, warmup=1)
    return [t / 1000 for t in runs['wall_ms']], [t / 1000 for t in runs['cpu_ms']]


def latencies(runners: dict, z_dim: int, repeats: int, threads: int, batch: int, rounds: int = ROUNDS) -> dict:
    """{'teacher' or ratio: (median wall, median cpu) seconds per image} with `threads` intra-op threads.

    The calls are spread over `rounds` rounds that each visit every network, so that a slow spell of the
    (shared) machine lands on teacher and students alike instead of on whichever was measured during it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    counts = {key: max(3, repeats // 2) if key == 'teacher' else repeats for key in runners}
    samples = {key: ([], []) for key in runners}
    try:
        for r in range(rounds):
            for key, run in runners.items():
                share = counts[key] // rounds + (1 if r < counts[key] % rounds else 0)
                if share:
                    wall, cpu = timed_calls(run, z_dim, share, batch)
                    samples[key][0].extend(wall)
                    samples[key][1].extend(cpu)
    finally:
        torch.set_num_threads(previous)
    return {key: (statistics.median(wall) / batch, statistics.median(cpu) / batch)
            for key, (wall, cpu) in samples.items()}


def weight_mib(G: torch.nn.Module) -> float:
    """float32 bytes of the parameters and buffers, in MiB (what a pickle or an ONNX file mostly holds)."""
    tensors = list(G.parameters()) + list(G.buffers())
    return sum(t.numel() for t in tensors) * 4 / 2 ** 20


@torch.no_grad()
def block_times(G, repeats: int = 3) -> dict:
    """Median process CPU seconds spent in each synthesis block (and the mapping network) per eager call."""
    totals: dict[str, list[float]] = {}
    blocks = {getattr(G.synthesis, f'b{r}'): f'b{r}' for r in G.synthesis.block_resolutions}
    modules = {G.mapping: 'mapping', **blocks}
    started: dict[str, float] = {}

    def start(name):
        def hook(module, args):
            started[name] = time.process_time()
        return hook

    def stop(name):
        def hook(module, args, output):
            totals.setdefault(name, []).append(time.process_time() - started.pop(name))
        return hook

    handles = []
    for module, name in modules.items():
        handles.append(module.register_forward_pre_hook(start(name)))
        handles.append(module.register_forward_hook(stop(name)))
    try:
        from gan_prune.runtime.latency import generator_latency
        generator_latency(G, batch=BATCH, repeats=repeats, warmup=1)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(v[1:]) for name, v in totals.items()}  # drop the warm-up call


@torch.no_grad()
def top_ops(G, limit: int = 8) -> list[tuple[str, float]]:
    """Torch ops by self CPU time (fraction of the total) for one eager call."""
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
        text = open(BENCH_MD, encoding='utf-8').read()
    except OSError:
        return []
    start = text.find('### Pruning paper256')
    end = text.find('### ', start + 4)
    section_end = text.find('<!-- /bench:prune -->', start)
    if start < 0 or section_end < 0:
        return []
    end = section_end if end < 0 else min(end, section_end)
    return text[start:end].rstrip().splitlines() + ['']


load_average = bench.load_average


def decision_lines(results: dict) -> list:
    """cpu-kernels against the best standard backend at r = 0.8, per setting (1 thread: CPU time)."""
    lines = []
    if 'cpu-kernels' not in results or len(results) < 2:
        return lines
    for setting, kernels in results['cpu-kernels'].items():
        if 0.8 not in kernels:
            continue
        column = 1 if setting[0] == 1 else 0
        standard = {b: r[setting][0.8][column] for b, r in results.items() if b != 'cpu-kernels'}
        best = min(standard, key=standard.get)
        lines.append(f'- r = 0.8, {setting[0]} thread(s), batch {setting[1]}: cpu-kernels '
                     f'{standard[best] / kernels[0.8][column]:.2f}x faster than the best standard backend here '
                     f'({best}); teacher / student on cpu-kernels '
                     f'{kernels["teacher"][column] / kernels[0.8][column]:.1f}x.')
    return [''] + lines if lines else lines


def backend_section(teacher, nets: dict, backends: list, repeats: int, thread_counts: list) -> tuple[list, dict]:
    """The backend table (markdown lines) and {backend: {(threads, batch): {key: (wall, cpu)}}}."""
    z_dim = int(teacher.z_dim)
    results, notes, onnx_mib = {}, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            runners = {}
            for key, G in {'teacher': teacher, **nets}.items():
                runners[key], note = build_runner(backend, G, tmp, str(key))
                if note:
                    notes.append(f'{backend}, {key}: {note}')
                if backend in EXPORTED_RUNNERS:
                    onnx_mib[key] = os.path.getsize(os.path.join(tmp, f'{key}.onnx')) / 2 ** 20
            results[backend] = {}
            for threads in thread_counts:
                for batch in (1, BATCH):
                    out = latencies(runners, z_dim, repeats, threads, batch)
                    results[backend][(threads, batch)] = out
                    print(f'{backend}, {threads} thread(s), batch {batch}: ' + ', '.join(
                        f'{k} {v[0] * 1e3:.1f}' for k, v in out.items()) + ' ms/image (wall)', flush=True)
            for key, run in runners.items():
                if getattr(run, 'fallback_reason', None):
                    notes.append(f'{backend}, {key}: {run.fallback_reason}')
    keys = ['teacher', *nets]
    md = ['| backend | threads | batch | ' + ' | '.join(f'r = {k}' if k != 'teacher' else 'teacher' for k in keys)
          + ' | speed-up r = 0.8 |', '|---|---|---|' + '---|' * (len(keys) + 1)]
    for backend, by_setting in results.items():
        for (threads, batch), out in by_setting.items():
            column = 1 if threads == 1 else 0  # 1 thread: CPU time (steady under load); all threads: wall time
            cells = [f'{out[k][column] * 1e3:.1f}' for k in keys]
            up = f'{out["teacher"][column] / out[0.8][column]:.1f}x' if 0.8 in out else 'n/a'
            md.append(f'| {backend} | {threads} | {batch} | ' + ' | '.join(cells) + f' | {up} |')
    md += decision_lines(results)
    md += ['', 'Model sizes (float32 weights and buffers; ONNX file where exported), MiB:', '',
           '| | ' + ' | '.join(str(k) for k in keys) + ' |', '|---|' + '---|' * len(keys),
           '| weights | ' + ' | '.join(f'{weight_mib(G):.1f}' for G in [teacher, *nets.values()]) + ' |']
    if onnx_mib:
        md.append('| ONNX file | ' + ' | '.join(f'{onnx_mib[k]:.1f}' for k in keys) + ' |')
    if notes:
        md += [''] + [f'- {note}' for note in notes]
    return md, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backend', default='eager,onnxruntime,cpu-kernels',
                        help='comma-separated inference backends to time: eager, compile, onnxruntime, openvino, '
                             'cpu-kernels (default: %(default)s; compile takes minutes per network and input shape; '
                             'openvino needs pip install openvino)')
    parser.add_argument('--ratios', default=','.join(map(str, PAPER_RATIOS)),
                        help='comma-separated channel ratios r of the students to time (default: %(default)s)')
    parser.add_argument('--threads', default='1,all',
                        help='comma-separated intra-op thread counts to time, "all" = torch\'s default '
                             '(default: %(default)s)')
    parser.add_argument('--samples', type=int, default=400, help='images scored by the timed prune run (default 400)')
    parser.add_argument('--batch', type=int, default=8, help='scoring batch of the timed prune run (default 8)')
    parser.add_argument('--repeats', type=int, default=5,
                        help=f'timed calls per student and setting, over {ROUNDS} interleaved rounds (median '
                             f'reported; the teacher gets half, at least 3; default 5)')
    parser.add_argument('--skip-prune', action='store_true', help='only measure latency (default: also prune)')
    bench.add_report_option(parser)
    args = parser.parse_args()

    from gan_prune.io.pickles import load_builtin
    from gan_prune.generator.cost import generator_cost
    from gan_prune.runtime.backends import BACKENDS

    backends = [b.strip() for b in args.backend.split(',') if b.strip()]
    for backend in backends:
        BACKENDS.get(backend)  # one line for an unknown name, before anything runs
        if backend == 'openvino':
            from gan_prune.errors import GanPruneError
            from gan_prune.runtime.exported import import_openvino
            try:
                import_openvino()
            except GanPruneError as error:
                raise SystemExit(str(error)) from None
    ratios = [float(r) for r in args.ratios.split(',') if r.strip()]
    load_before = load_average()
    prune_run = None if args.skip_prune else run_prune(args.samples, args.batch)
    load_after_prune = load_average()
    teacher = load_builtin('paper256')['G_ema'].eval().requires_grad_(False)
    nets = {r: S.eval().requires_grad_(False) for r, S in students(teacher, ratios).items()}
    t_macs = generator_cost(teacher).total_macs
    all_threads = torch.get_num_threads()
    thread_counts = sorted({all_threads if t.strip() == 'all' else int(t) for t in args.threads.split(',')})
    backend_md, _ = backend_section(teacher, nets, backends, args.repeats, thread_counts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_blocks, s_blocks = (block_times(teacher), block_times(nets[0.8])) if 0.8 in nets else ({}, {})
    s_ops, t_ops = (top_ops(nets[0.8]), top_ops(teacher)) if 0.8 in nets else ([], [])
    torch.set_num_threads(threads)
    load_after = load_average()

    md = [f'Measured {datetime.date.today().isoformat()} on: {bench.machine_line()}.',
          f'Load average (1, 5, 15 min) before / after: {load_before} / {load_after} (the machine is shared; '
          f'higher load inflates times).', '']
    cmd = ('python tools/bench_prune.py' + f' --backend {args.backend}' + f' --repeats {args.repeats}'
           + (f' --threads {args.threads}' if args.threads != '1,all' else '')
           + (f' --ratios {args.ratios}' if ratios != list(PAPER_RATIOS) else '')
           + (f' --samples {args.samples}' if args.samples != 400 else '')
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
    md += ['### CPU latency by backend (ms per image; fp32, const noise, no grad)', '',
           f'Median of {args.repeats} calls per student and setting ({max(3, args.repeats // 2)} for the teacher), '
           f'over {ROUNDS} rounds that each visit every network. 1 thread: process CPU time (steady under load '
           f'from other jobs); all threads: wall time, which swings by 2-3x on this shared machine. Channels per '
           f'block and MAC ratios: ' + '; '.join(
               f'r = {r}: {", ".join(str(S.synthesis.channels[f"b{res}.out"]) for res in S.synthesis.block_resolutions)}'
               f' ({t_macs / generator_cost(S).total_macs:.1f}x fewer MACs)' for r, S in nets.items()) + '.', '']
    md += backend_md
    if t_blocks:
        md += ['', '### Where the time goes on the eager backend (r = 0.8 student vs teacher, 1 thread, CPU ms '
               'per call of batch 4)', '', '| part | teacher | student | ratio |', '|---|---|---|---|']
        for name in list(t_blocks):
            t, s = t_blocks[name], s_blocks.get(name, float('nan'))
            md.append(f'| {name} | {t * 1e3:.1f} | {s * 1e3:.1f} | {t / s:.1f}x |')
        md += ['', 'Top torch ops by self CPU time (share of all aten time in one eager call):', '',
               '| student r = 0.8 | share | teacher | share |', '|---|---|---|---|']
        for (sk, sv), (tk, tv) in zip(s_ops, t_ops):
            md.append(f'| {sk} | {sv:.0%} | {tk} | {tv:.0%} |')
    text = '\n'.join(md)
    if args.no_write:
        print(text)
    else:
        bench.write_section('prune', text, BENCH_MD)
        print(text)
        print(f'\nwrote section "prune" of {BENCH_MD}')


if __name__ == '__main__':
    main()
