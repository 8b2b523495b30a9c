"""The run directory of `gan-prune distill`, laid out like StyleGAN2-ADA's.

    <outdir>/<5-digit id>-<desc>/
        training_options.json          every option of the run (resume reads it back)
        log.txt                        everything the run printed
        stats.jsonl                    one JSON object per tick: {"Loss/G/adv": {"num", "mean", "std"}, ..., "timestamp"}
        reals.png, teacher.png         real (or data-free) images and teacher samples, for comparison
        fakes<kimg>.png                G_ema samples at every snapshot (fixed latents)
        network-snapshot-<kimg>.pkl    G, G_ema, D (= D^S) in NVIDIA's snapshot format, plus D_teacher
        resume.pt                      exact training state (weights, optimisers, EMA, counters, RNG)
        run.lock                       held (flock) by the process that trains in the directory

<kimg> is the whole kimg in six digits (000120), followed by the images past it when a snapshot falls between
whole kimg (000012.768), so short ticks never give two snapshots one name.

Every file except the append-only log.txt and stats.jsonl is written atomically (temp file in the same folder,
then os.replace), so an interrupted run never leaves a half-written snapshot or checkpoint. training_options.json
names the inputs by absolute path and records their fingerprints; a resume that finds a different input stops.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from typing import IO, Any, Callable, Iterable, TextIO  # noqa: F401  (Callable: the row filters of the stats files)

import numpy as np
import torch

from gan_prune.core.images import image_grid, to_hwc_uint8, write_png
from gan_prune.errors import GanPruneError
from gan_prune import fileio
from gan_prune.fileio import atomic_write

OPTIONS_FILE = 'training_options.json'
LOG_FILE = 'log.txt'
STATS_FILE = 'stats.jsonl'
RESUME_FILE = 'resume.pt'
LOCK_FILE = 'run.lock'
FINGERPRINTS_KEY = 'input_fingerprints'
SNAPSHOT_RE = re.compile(r'^network-snapshot-(\d+)(?:\.(\d{3}))?\.pkl$')
# Files a run writes into its directory (temp files of atomic writes included): an input must not be one of them.
RUN_FILE_RE = re.compile(r'^\.?(training_options\.json|log\.txt|stats\.jsonl|resume\.pt|run\.lock|metrics\.jsonl|'
                         r'teacher_stats\.npz(\.partial\.npz)?|reals\.png|teacher\.png|fakes[\w.]*\.png|'
                         r'network-snapshot-[\d.]+\.pkl)(\..*\.tmp)?$')


# ------------------------------------------------------------------------------------------------------------
# Atomic files

def write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + '\n'), binary=False)


# ------------------------------------------------------------------------------------------------------------
# Run directory

def create_run_dir(outdir: str, desc: str) -> str:
    """Make `<outdir>/<next 5-digit id>-<desc>` and return its path (ids continue after existing runs)."""
    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    desc = re.sub(r'[^A-Za-z0-9_.+=-]+', '_', desc).strip('_') or 'run'
    while True:
        ids = [int(m.group(1)) for m in (re.match(r'^(\d+)', name) for name in os.listdir(outdir)) if m]
        run_dir = os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')
        try:
            os.makedirs(run_dir)  # exist_ok=False: two runs starting at once get different ids
            return run_dir
        except FileExistsError:
            continue


def write_training_options(run_dir: str, options: dict) -> None:
    write_json(os.path.join(run_dir, OPTIONS_FILE), options)


def read_training_options(run_dir: str) -> dict:
    path = os.path.join(run_dir, OPTIONS_FILE)
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise GanPruneError(f'{run_dir} is not a distill run directory (no {OPTIONS_FILE}); '
                            f'give the folder that a previous `gan-prune distill` run created') from None
    except ValueError as e:
        raise GanPruneError(f'{path} is not valid JSON ({e}); restore it or start a new run') from e


# ------------------------------------------------------------------------------------------------------------
# One process trains in a run directory at a time

def lock_run_dir(run_dir: str) -> fileio.ExclusiveLock:
    """Lock `run_dir` for this process (run.lock, flock): a second run or --resume of it is refused with one line
    naming the holder. The lock lasts until release() or the end of the process, crash included."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        lock = fileio.lock_exclusive(path, fileio.process_description())
    except fileio.LockHeld as e:
        raise GanPruneError(f'run directory {run_dir} is in use by {e.holder or "another process"}; wait for that '
                            f'run to end (or stop it), then resume') from None
    except OSError as e:
        raise GanPruneError(f'cannot lock {path} ({e.strerror or type(e).__name__}); check that the run directory '
                            f'is writable') from None
    if not lock.supported:
        print(f'warning: {run_dir} is on a file system without file locks: make sure no other process trains in '
              f'it at the same time', file=sys.stderr)
    return lock


# ------------------------------------------------------------------------------------------------------------
# Inputs of a run: fingerprinted at the start, checked on every resume

FINGERPRINTED_INPUTS = {'teacher': '--teacher', 'student': '--student', 'data': '--data'}
MISSING = 'missing'


def fingerprint_input(source: str) -> str:
    """'sha256:<hex>' of a file, 'folder:<hex> (N files)' of a folder (names, sizes, mtimes), the name itself
    for builtin:NAME, or 'missing'. An http(s) URL is fingerprinted by its downloaded (cached) file."""
    source = str(source)
    if source.startswith('builtin:'):
        return source
    if source.startswith(('http://', 'https://')):
        from gan_prune.io.download import download
        path = download(source, progress=False)
    else:
        local = fileio.local_path(source)
        if local is None:
            return MISSING
        path = local
    if os.path.isdir(path):
        return 'folder:' + fileio.folder_fingerprint(path)
    if os.path.isfile(path):
        return 'sha256:' + fileio.sha256_file(path)
    return MISSING


def input_fingerprints(opts: dict) -> dict:
    """{option: {'path', 'fingerprint'}} for the teacher, student and data of `opts` (those given)."""
    return {key: {'path': opts[key], 'fingerprint': fingerprint_input(opts[key])}
            for key in FINGERPRINTED_INPUTS if opts.get(key)}


def check_input_fingerprints(run_dir: str, saved: dict, current: dict) -> None:
    """Refuse (one line: which input, why, how to go on) when an input differs from the one the run started with."""
    well_formed = isinstance(saved, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get('fingerprint'), str) and isinstance(entry.get('path'), str)
        for entry in saved.values())
    if not well_formed:
        raise GanPruneError(f'{os.path.join(run_dir, OPTIONS_FILE)} holds a malformed {FINGERPRINTS_KEY}; restore '
                            f'the file from a backup or start a new run')
    for key, flag in FINGERPRINTED_INPUTS.items():
        old, new = saved.get(key), current.get(key)
        if new is None:
            if old is None:
                continue
            shown = old['path']
            reason = f'the run was started with {flag} {old["path"]}, now there is none'
        elif old is None:
            shown = new['path']
            reason = f'the run was started without {flag}'
        elif old['fingerprint'] == new['fingerprint']:
            continue
        elif new['fingerprint'] == MISSING:
            shown, reason = new['path'], 'the file is missing'
        elif os.path.abspath(str(old['path'])) != os.path.abspath(str(new['path'])):
            shown, reason = new['path'], f'it differs from {old["path"]}, which the run was started with'
        else:
            shown, reason = new['path'], 'its contents changed since the run started'
        latest = latest_snapshot(run_dir)
        fresh = (f'start a new run from the last snapshot (--resume {latest}, not bit-exact)' if latest
                 else 'start a new run')
        raise GanPruneError(f'cannot resume {run_dir}: {flag} {shown} is not the input the run was trained on '
                            f'({reason}); put the original back, give {flag} PATH of an unchanged copy, or {fresh}')


def refuse_inputs_written_by_run(run_dir: str, inputs: dict | list[tuple[str, str]]) -> None:
    """Refuse inputs ({label: source}) that are files the run writes into `run_dir` (a snapshot, resume.pt, a grid,
    the log, ...), by path, symlink or hard link."""
    for label, source in (inputs.items() if isinstance(inputs, dict) else inputs):
        path = fileio.local_path(source)
        if path is None or not os.path.exists(path):
            continue
        for name in os.listdir(run_dir):
            if RUN_FILE_RE.match(name) and fileio.same_file(os.path.join(run_dir, name), path):
                raise GanPruneError(f'{label} {source} is {os.path.join(run_dir, name)}, a file the run writes: '
                                    f'training would replace it; copy it out of the run directory and give that copy')


# ------------------------------------------------------------------------------------------------------------
# log.txt

class LogTee:
    """Copy everything printed to stdout into log.txt (appending, so a resumed run continues the log).

    The progress bar goes to stderr and is not copied: log.txt stays readable.
    """

    def __init__(self, path: str):
        self.path = path
        self._file: IO[str] | None = None
        self._stdout: TextIO = sys.stdout

    def __enter__(self) -> 'LogTee':
        self._file = open(self.path, 'a', encoding='utf-8')
        self._stdout = sys.stdout
        sys.stdout = self
        return self

    def write(self, text: str) -> int:
        self._stdout.write(text)
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
        return len(text)

    def flush(self) -> None:
        self._stdout.flush()
        if self._file is not None:
            self._file.flush()

    def isatty(self) -> bool:
        return False

    def __exit__(self, *exc) -> None:
        if sys.stdout is self:
            sys.stdout = self._stdout
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------------------------------------------------
# stats.jsonl

def summarize(values: Iterable[float]) -> dict:
    """{'num', 'mean', 'std'} of a list of numbers, the per-key format of StyleGAN2-ADA's stats.jsonl."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.size == 0:
        return {'num': 0, 'mean': float('nan'), 'std': float('nan')}
    return {'num': int(arr.size), 'mean': float(arr.mean()), 'std': float(arr.std())}


def append_stats(run_dir: str, row: dict) -> None:
    """Append one row (keys -> summarize() dicts, plus 'timestamp') as a single line."""
    row = dict(row)
    row.setdefault('timestamp', time.time())
    # One write of a whole line: a crash leaves at most a torn last line, which readers skip.
    fileio.append_line(os.path.join(run_dir, STATS_FILE), json.dumps(row, sort_keys=True))


def read_stats(path: str) -> list[dict]:
    """All complete rows of a stats.jsonl (a torn last line from a crash is ignored)."""
    if os.path.isdir(path):
        path = os.path.join(path, STATS_FILE)
    rows: list[dict] = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def truncate_stats(run_dir: str, max_nimg: int) -> None:
    """Drop rows written after the resume checkpoint (they will be written again by the resumed run)."""
    _truncate_rows(os.path.join(run_dir, STATS_FILE), lambda row: row.get('Progress/nimg', {}).get('mean', 0) <= max_nimg)


def truncate_metrics(path: str, max_nimg: int) -> None:
    """The same for a run's metrics.jsonl, whose rows carry 'kimg'."""
    _truncate_rows(path, lambda row: round(float(row.get('kimg', 0)) * 1000) <= max_nimg)


def _truncate_rows(path: str, keep_row: Callable[[dict], bool]) -> None:
    if not os.path.exists(path):
        return
    keep = [row for row in read_stats(path) if keep_row(row)]
    atomic_write(path, lambda f: f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in keep)), binary=False)


# ------------------------------------------------------------------------------------------------------------
# Images

def parse_grid(grid: str | tuple | list) -> tuple[int, int]:
    """'8x4' or (8, 4) -> (columns, rows)."""
    if isinstance(grid, str):
        m = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', grid)
        if not m:
            raise GanPruneError(f'grid {grid!r} is not COLUMNSxROWS; use e.g. 8x4')
        grid = (int(m.group(1)), int(m.group(2)))
    gw, gh = (int(v) for v in grid)
    if gw < 1 or gh < 1:
        raise GanPruneError(f'grid {gw}x{gh} must have at least one column and row')
    return gw, gh


def save_image_grid(images: torch.Tensor | np.ndarray, path: str, grid: tuple[int, int]) -> None:
    """Tile images [N, C, H, W] (float in [-1, 1], or uint8) into a gw x gh PNG, written atomically."""
    tiles = image_grid(to_hwc_uint8(images), cols=grid[0], rows=grid[1])
    write_png(tiles if tiles.shape[-1] == 1 else tiles[:, :, :3], path)


# ------------------------------------------------------------------------------------------------------------
# Snapshots and the resume checkpoint

def kimg_tag(cur_nimg: int) -> str:
    """'000120' at a whole kimg (StyleGAN2-ADA's names), '000012.768' between whole kimg (short ticks)."""
    whole, rest = divmod(int(cur_nimg), 1000)
    return f'{whole:06d}' + (f'.{rest:03d}' if rest else '')


def snapshot_name(cur_nimg: int) -> str:
    return f'network-snapshot-{kimg_tag(cur_nimg)}.pkl'


def snapshot_nimg(name: str) -> int | None:
    """Images shown at a snapshot, from its file name (either form); None for other names."""
    m = SNAPSHOT_RE.match(os.path.basename(name))
    return int(m.group(1)) * 1000 + int(m.group(2) or 0) if m else None


def export_module(module: torch.nn.Module) -> torch.nn.Module:
    """The copy a snapshot stores: eval mode, no grad, on the CPU (what StyleGAN2-ADA's loop stores)."""
    return copy.deepcopy(module).eval().requires_grad_(False).cpu()


def save_snapshot(run_dir: str, cur_nimg: int, modules: dict, extra: dict | None = None) -> str:
    """Write network-snapshot-<kimg>.pkl with exported copies of `modules` (G, G_ema, D, ...) plus `extra`."""
    import gan_prune
    data = {name: export_module(m) if isinstance(m, torch.nn.Module) else m for name, m in modules.items()}
    data.update(extra or {})
    data.setdefault('augment_pipe', None)
    data.setdefault('training_set_kwargs', None)
    path = os.path.join(run_dir, snapshot_name(cur_nimg))
    gan_prune.save_network_pkl(data, path)
    return path


def list_snapshots(run_dir: str) -> list[str]:
    """Snapshot paths of a run, oldest first (by images shown, whichever name form)."""
    names = sorted((nimg, name) for name in os.listdir(run_dir) if (nimg := snapshot_nimg(name)) is not None)
    return [os.path.join(run_dir, name) for _, name in names]


def latest_snapshot(run_dir: str) -> str | None:
    snapshots = list_snapshots(run_dir)
    return snapshots[-1] if snapshots else None


def save_resume(run_dir: str, state: dict) -> str:
    """Write resume.pt atomically; `state` holds tensors, numbers, strings, lists and dicts only."""
    path = os.path.join(run_dir, RESUME_FILE)
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_resume(run_dir: str) -> dict:
    """Read resume.pt (tensors and plain data only: loaded with weights_only=True)."""
    path = os.path.join(run_dir, RESUME_FILE)
    if not os.path.isfile(path):
        raise GanPruneError(f'{run_dir} has no {RESUME_FILE}: the run stopped before its first snapshot; '
                            f'start it again')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
        raise GanPruneError(f'cannot read {path} ({type(e).__name__}: {e}); '
                            f'resume from an intact run directory') from e


# ------------------------------------------------------------------------------------------------------------
# RNG state (plain data, so resume.pt loads with weights_only=True)

def get_rng_state(device: torch.device | None = None) -> dict:
    import random
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):
        raise TypeError('numpy returned its random state as a dict; expected the legacy tuple')
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'python': _python_state_to_plain(random.getstate()),
    }
    if device is not None and device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    import random
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(_plain_to_python_state(state['python']))
    if device is not None and device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _plain_to_python_state(state: list) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(v) for v in internal.tolist()), gauss)
