"""Fuzz the safe network loader with mutated network pickles; run by tests/io/test_fuzz_loader.py, or by hand:

    python tests/io/fuzz_loader.py --examples 100000 --workdir /tmp/fuzz --report /tmp/fuzz/report.json

Each input is a valid network pickle with random mutations (byte flips, truncations, insertions, deletions,
opcode-aligned splices). Every load must end in a loaded network or one GanPruneError line, and nothing may
execute: os.system, subprocess, exec/eval and friends are replaced by recorders for the whole run. Each input
is written to WORKDIR/current.pkl before it is loaded, so if the process dies (a crash the loader could not
turn into an error) the input that killed it is left there. The report (JSON) counts the outcomes.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import time
import traceback
from pathlib import Path

EXEC_LIKE = {
    os: ['system', 'popen', 'execv', 'execve', 'execvp', 'execvpe', 'execl', 'execle', 'execlp', 'spawnv', 'spawnve',
         'spawnl', 'posix_spawn', 'posix_spawnp', 'fork', 'kill', 'remove', 'unlink', 'rmdir'],
    subprocess: ['Popen', 'run', 'call', 'check_call', 'check_output', 'getoutput', 'getstatusoutput'],
    builtins: ['exec', 'eval', 'breakpoint', 'input'],  # not compile: tracebacks parse source lines
}


# Imports a load may trigger (a module's code runs through exec): the toolkit's own packages and its
# dependencies. Any other module imported during a load is a failure.
IMPORTABLE = ('gan_prune', 'torch', 'numpy', 'training', 'dnnlib', 'torch_utils', 'legacy', 'sympy', 'mpmath',
              'scipy', 'typing_extensions', 'filelock', 'jinja2', 'markupsafe', 'networkx', 'fsspec', 'optree')
SIDE_EFFECT_STDLIB = {'antigravity', 'this', 'webbrowser', 'turtle', 'tkinter', 'idlelib', 'pydoc', 'code', 'pdb'}


def import_allowed(module_name: str) -> bool:
    top = module_name.split('.')[0]
    if top in SIDE_EFFECT_STDLIB:
        return False
    return top in IMPORTABLE or top in getattr(sys, 'stdlib_module_names', ()) or top.startswith('_')


@contextlib.contextmanager
def recording(calls: list):
    """While active, every exec-like function records its call in `calls` and refuses it. exec called by the
    import system (a module's own code) goes through, and is recorded only if the module is not importable."""
    originals = []
    importing: list[str] = []
    for module, names in EXEC_LIKE.items():
        for name in names:
            if not hasattr(module, name):
                continue
            label = f'{module.__name__}.{name}'
            original = getattr(module, name)

            def recorder(*args, _label=label, _original=original, **kwargs):
                if importing:  # the code of an allowed module being imported (namedtuple uses eval, ...)
                    return _original(*args, **kwargs)
                caller = sys._getframe(1).f_globals.get('__name__', '')
                if _label == 'builtins.exec' and caller.startswith('importlib') and len(args) > 1 \
                        and isinstance(args[1], dict):
                    imported = str(args[1].get('__name__'))
                    if not import_allowed(imported):
                        calls.append(f'import of {imported}')
                        raise PermissionError(f'import of {imported} during a fuzz load')
                    importing.append(imported)
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        importing.pop()
                calls.append(f'{_label}{args[:2]!r}'[:200])
                raise PermissionError(f'{_label} called during a fuzz load')
            originals.append((module, name, original))
            setattr(module, name, recorder)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def small_network_pickles(workdir: Path) -> dict[str, bytes]:
    """Valid seeds: a tiny snapshot in the saved format (protocol 4), the same re-pickled with protocol 2 and 0,
    and the golden TensorFlow-format pickle when present."""
    import gan_prune
    import dnnlib
    import torch
    from training import networks

    torch.manual_seed(0)
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3,
                           mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_base': 16, 'channel_max': 4})
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=16, channel_max=4)
    path = workdir / 'seed.pkl'
    gan_prune.save_network_pkl(dict(G=G, D=D, G_ema=G, training_set_kwargs=dnnlib.EasyDict(resolution=8)), path)
    saved = path.read_bytes()
    reloaded = pickle.loads(saved)  # our own file: the trusting loader is fine here
    seeds = {'snapshot_p4': saved, 'snapshot_p2': pickle.dumps(reloaded, protocol=2),
             'snapshot_p0': pickle.dumps(reloaded, protocol=0)}
    golden = Path(__file__).resolve().parents[1] / 'golden' / 'tf_legacy_res32.pkl'
    if golden.is_file():
        seeds['tf_legacy'] = golden.read_bytes()
    return seeds


def opcode_starts(data: bytes) -> list[int]:
    try:
        return [pos for _, _, pos in pickletools.genops(io.BytesIO(data))]
    except Exception:  # pylint: disable=broad-except
        return [0]


def mutate(data: bytes, starts: list[int], draw) -> bytes:
    """Apply 1-4 random mutations; `draw(kind, *args)` is the source of randomness (hypothesis or random)."""
    buf = bytearray(data)
    for _ in range(draw('int', 1, 4)):
        kind = draw('choice', ['flip', 'byte', 'truncate', 'insert', 'delete', 'splice', 'splice', 'dup_opcode'])
        n = len(buf)
        if n == 0:
            break
        at = draw('int', 0, n - 1)
        if kind == 'flip':
            buf[at] ^= 1 << draw('int', 0, 7)
        elif kind == 'byte':
            buf[at] = draw('int', 0, 255)
        elif kind == 'truncate':
            del buf[at:]
        elif kind == 'insert':
            buf[at:at] = draw('bytes', 1, 16)
        elif kind == 'delete':
            del buf[at:at + draw('int', 1, 64)]
        else:
            # Opcode-aligned: copy a run of whole opcodes to another opcode boundary (or repeat one in place).
            a = draw('int', 0, len(starts) - 1)
            b = min(a + (1 if kind == 'dup_opcode' else draw('int', 1, 12)), len(starts) - 1)
            start, end = starts[a], starts[b] if b > a else starts[a] + 1
            segment = bytes(data[start:end])
            target = starts[a] if kind == 'dup_opcode' else starts[draw('int', 0, len(starts) - 1)]
            target = min(target, len(buf))
            buf[target:target] = segment * (draw('int', 1, 50) if kind == 'dup_opcode' else 1)
    return bytes(buf)


def load_one(path: Path) -> tuple[str, str]:
    """('loaded'|'refused', detail) for an acceptable outcome, ('failed', traceback) otherwise."""
    import gan_prune
    from gan_prune.errors import GanPruneError
    try:
        data = gan_prune.load_network_pkl(path)
    except GanPruneError as e:
        message = str(e)
        if not message or '\n' in message or '\r' in message or '\x1b' in message:
            return 'failed', f'error is not one clean line: {message!r}'
        return 'refused', message
    except BaseException:  # pylint: disable=broad-except
        return 'failed', traceback.format_exc(limit=8)
    if not isinstance(data, dict):
        return 'failed', f'returned a {type(data).__name__}'
    return 'loaded', ''


def run(examples: int, workdir: Path, seed: int | None, use_hypothesis: bool = True,
        progress: Path | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = small_network_pickles(workdir)
    starts = {name: opcode_starts(data) for name, data in seeds.items()}
    calls: list[str] = []
    current = workdir / 'current.pkl'
    import gan_prune.generator.slim  # noqa: F401  (looked up for unknown class names)
    for name, data in seeds.items():  # every seed loads (and this imports everything a load needs, up front)
        current.write_bytes(data)
        outcome, detail = load_one(current)
        assert outcome == 'loaded', f'seed {name} does not load: {detail}'

    counts: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    failures: list[dict] = []
    names = sorted(seeds)
    started = time.time()

    def check(draw) -> None:
        name = names[draw('int', 0, len(names) - 1)]
        data = mutate(seeds[name], starts[name], draw)
        current.write_bytes(data)
        before = len(calls)
        with recording(calls):
            outcome, detail = load_one(current)
        if len(calls) > before:
            outcome, detail = 'failed', f'executed: {calls[before:]} ({outcome}: {detail})'
        counts[outcome] += 1
        if outcome == 'refused':
            reasons[_reason(detail)] += 1
        if outcome == 'failed':
            kept = workdir / f'failure-{len(failures)}.pkl'
            kept.write_bytes(data)
            failures.append({'seed': name, 'input': str(kept), 'detail': detail[-2000:]})
        done = sum(counts.values())
        if progress is not None and done % 1000 == 0:
            progress.write_text(json.dumps({'examples': done, 'counts': dict(counts), 'exec_calls': calls,
                                            'failure_count': len(failures), 'seconds': round(time.time() - started),
                                            'top_refusals': reasons.most_common(12)}, indent=1))

    if use_hypothesis:
        _run_with_hypothesis(check, examples, seed)
    else:
        import random
        rng = random.Random(seed)
        drawer = _random_drawer(rng)
        for _ in range(examples):
            check(drawer)
    current.unlink(missing_ok=True)
    return {'examples': sum(counts.values()), 'counts': dict(counts), 'exec_calls': calls,
            'failures': failures[:20], 'failure_count': len(failures), 'seconds': round(time.time() - started, 1),
            'top_refusals': reasons.most_common(12)}


def _reason(message: str) -> str:
    # The refusal's kind without file names and numbers, to summarise a campaign.
    text = message.split(': ', 1)[-1]
    return ''.join('#' if c.isdigit() else c for c in text)[:90]


def _random_drawer(rng):
    def draw(kind, *args):
        if kind == 'int':
            return rng.randint(args[0], args[1])
        if kind == 'choice':
            return rng.choice(args[0])
        return bytes(rng.randrange(256) for _ in range(rng.randint(args[0], args[1])))
    return draw


def _run_with_hypothesis(check, examples: int, seed: int | None) -> None:
    from hypothesis import HealthCheck, given, seed as fixed_seed, settings, strategies as st

    def drawer(data):
        def draw(kind, *args):
            if kind == 'int':
                return data.draw(st.integers(args[0], args[1]))
            if kind == 'choice':
                return data.draw(st.sampled_from(args[0]))
            return data.draw(st.binary(min_size=args[0], max_size=args[1]))
        return draw

    @settings(max_examples=examples, database=None, deadline=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), phases=['generate'])
    @given(st.data())
    def fuzz(data):
        check(drawer(data))

    if seed is not None:
        fuzz = fixed_seed(seed)(fuzz)
    fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--examples', type=int, default=300, help='number of mutated inputs (default 300)')
    parser.add_argument('--workdir', type=Path, required=True, help='where inputs and failures are written')
    parser.add_argument('--report', type=Path, required=True, help='JSON report of the outcomes')
    parser.add_argument('--seed', type=int, default=None, help='random seed (default: fixed, reproducible)')
    parser.add_argument('--plain-random', action='store_true',
                        help='draw mutations with random.Random instead of hypothesis (faster for long campaigns)')
    args = parser.parse_args()
    report = run(args.examples, args.workdir, args.seed, use_hypothesis=not args.plain_random, progress=args.report)
    args.report.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ('examples', 'counts', 'failure_count', 'seconds')}))
    sys.exit(1 if report['failure_count'] or report['exec_calls'] else 0)


if __name__ == '__main__':
    main()
