"""Options of `gan-prune distill`: defaults, the `kd` preset, the user's options and, when resuming a run
directory, the options saved there (the resume policy: which options may change, and that `trust` never comes
from a run directory); validation, absolute paths, and the weights files the KD terms need."""
from __future__ import annotations

import json
import os
from typing import Any

from gan_prune import fileio
from gan_prune.defaults import DISTILL
from gan_prune.distill import rundir as rd
from gan_prune.errors import GanPruneError

# Options that may change when resuming a run directory; every other option must stay as it was.
RESUME_OVERRIDABLE = ('kimg', 'snap', 'tick', 'metrics', 'metrics_num_gen', 'metrics_detector', 'workers', 'lr',
                      'gamma', 'pl_weight', 'gpus', 'device', 'batch_gpu', 'grid', 'resume', 'trust')



def resume_run_dir(opts: dict) -> str | None:
    """The run directory `opts` resumes, or None for a new run (also a warm start from a snapshot .pkl)."""
    resume = opts.get('resume')
    return resume if resume and os.path.isdir(resume) else None


def warm_start_snapshot(opts: dict) -> str | None:
    """The snapshot .pkl a new run starts from (`resume` naming a file), or None."""
    resume = opts.get('resume')
    return resume if resume and not os.path.isdir(resume) else None


def resolve_options(options: dict) -> dict:
    """DISTILL defaults, then the options the `kd` preset sets (gan_prune.distill.presets), then `options` (only
    what the user gave: an option given here always wins over the preset); for `resume=RUN_DIR`, the run's saved
    options updated with the overridable ones. Raises GanPruneError for unknown or inconsistent options.

    `trust` is never read from a run directory: a resumed run trusts its files (lets them run code) only when
    `options` says so, so a run directory handed over by someone else cannot make us run code."""
    unknown = sorted(set(options) - set(DISTILL))
    if unknown:
        raise GanPruneError(f'unknown distill option {unknown[0]!r}; see gan-prune distill --help')
    options = _absolute_paths(options)
    resume = resume_run_dir(options)
    if resume:
        saved = rd.read_training_options(resume)
        opts = dict(DISTILL)
        opts.update({k: v for k, v in saved.items() if k in DISTILL})
        for key, value in options.items():
            if key in RESUME_OVERRIDABLE or key in rd.FINGERPRINTED_INPUTS:  # a moved input: checked by fingerprint
                opts[key] = value
            elif _jsonable(value) != _jsonable(opts.get(key)):
                raise GanPruneError(f'option {key} cannot change when resuming {resume} (it was {opts.get(key)!r}); '
                                    f'start a new run instead')
        opts['resume'] = os.path.abspath(resume)
        opts['trust'] = bool(options.get('trust', False))
    else:
        from gan_prune.distill.presets import apply_preset
        opts = apply_preset(DISTILL, options)
        opts = _absolute_paths(opts)  # defaults such as outdir too
    opts['embed_weights'] = list(opts.get('embed_weights') or [])
    _validate(opts)
    return opts


# Options naming a local file or folder: stored as absolute paths, so a run resumes from any working directory.
PATH_OPTIONS = ('teacher', 'student', 'data', 'dime_stats', 'parser_weights', 'outdir')


# Spec families whose argument is a file: 'torchscript:FILE' (--dime, --cagan-net), 'vgg16:FILE', 'inception:FILE'.
SPEC_OPTIONS_WITH_FILES = ('dime', 'cagan_net', 'metrics_detector')
FILE_SPEC_FAMILIES = ('torchscript', 'vgg16', 'inception')


def _spec_parts(spec: str) -> list[tuple[str, str, str]]:
    """'torchscript:embed.pt=5,effnet-lite0' -> [('torchscript', 'embed.pt', '=5'), ('effnet-lite0', '', '')]."""
    parts = []
    for part in spec.split(','):
        head, sep, weight = part.rpartition('=') if '=' in part else (part, '', '')
        family, _, arg = head.partition(':')
        parts.append((family, arg, sep + weight))
    return parts


def _spec_files(spec: Any) -> list[str]:
    """The files a spec option names (the arguments of its torchscript:, vgg16: and inception: terms)."""
    if not isinstance(spec, str):
        return []
    return [arg.strip() for family, arg, _ in _spec_parts(spec)
            if family.strip().lower() in FILE_SPEC_FAMILIES and arg.strip()]


def _absolute_spec_files(spec: Any) -> Any:
    """'torchscript:embed.pt=5,effnet-lite0=1' -> 'torchscript:/abs/embed.pt=5,effnet-lite0=1' (existing files only)."""
    if not _spec_files(spec):
        return spec
    parts = []
    for family, arg, weight in _spec_parts(spec):
        path = os.path.expanduser(arg.strip())
        if family.strip().lower() in FILE_SPEC_FAMILIES and arg.strip() and os.path.isfile(path):
            arg = os.path.abspath(path)
        parts.append(f'{family}:{arg}{weight}' if arg else f'{family}{weight}')
    return ','.join(parts)


def _absolute_paths(options: dict) -> dict:
    """`options` with local paths made absolute (URLs, builtin:NAME and names looked up elsewhere unchanged)."""
    def absolute(value: Any, must_exist: bool = False) -> Any:
        if not isinstance(value, str) or not value or '://' in value or fileio.local_path(value) is None:
            return value
        path = os.path.expanduser(value)
        return os.path.abspath(path) if not must_exist or os.path.exists(path) else value

    out = dict(options)
    for key in PATH_OPTIONS:
        if key in out:
            out[key] = absolute(out[key])
    for key in SPEC_OPTIONS_WITH_FILES:
        if key in out:
            out[key] = _absolute_spec_files(out[key])
    for key in ('resume', 'cagan_mask'):  # also a mode name ('none', 'face-parser'): only existing paths
        if key in out:
            out[key] = absolute(out[key], must_exist=True)
    if out.get('embed_weights'):
        entries = []
        for entry in out['embed_weights']:
            spec, sep, path = entry.partition('=')
            entries.append(f'{spec}={absolute(path, must_exist=True)}' if sep else absolute(entry, must_exist=True))
        out['embed_weights'] = entries
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _validate(o: dict) -> None:
    resuming_dir = resume_run_dir(o) is not None
    if not o.get('teacher'):
        raise GanPruneError('no teacher given: pass --teacher PKL (the network the student was pruned from)')
    if not o.get('student'):
        raise GanPruneError('no student given: pass --student PKL (from gan-prune prune)')
    if bool(o.get('data')) == bool(o.get('data_free')):
        raise GanPruneError('give exactly one of --data PATH (the training images) or --data-free (teacher samples '
                            'as real images)')
    if o.get('resume') and not resuming_dir and not os.path.isfile(o['resume']):
        raise GanPruneError(f'--resume {o["resume"]} is neither a run directory nor a snapshot .pkl')
    _validate_kd(o)
    if o['ds_init'] not in ('random', 'teacher'):
        raise GanPruneError(f"--ds-init must be 'random' or 'teacher', got {o['ds_init']!r}")
    for key in ('kimg', 'tick', 'lr', 'ema_kimg'):
        if not (isinstance(o[key], (int, float)) and o[key] > 0):
            raise GanPruneError(f'--{key.replace("_", "-")} must be positive, got {o[key]}')
    for key in ('batch', 'snap', 'gpus', 'pl_batch_shrink', 'nickel_levels', 'metrics_num_gen'):
        if int(o[key]) < 1:
            raise GanPruneError(f'--{key.replace("_", "-")} must be at least 1, got {o[key]}')
    for key in ('gamma', 'pl_weight', 'nickel_weight', 'cagan_l1', 'cagan_perceptual', 'pl_decay', 'workers'):
        if o[key] < 0:
            raise GanPruneError(f'--{key.replace("_", "-")} must be >= 0, got {o[key]}')
    if not 0 <= o['style_mixing'] <= 1:
        raise GanPruneError(f'--style-mixing is a probability in [0, 1], got {o["style_mixing"]}')
    for key in ('g_reg_interval', 'd_reg_interval'):
        if o[key] is not None and int(o[key]) < 1:
            raise GanPruneError(f'--{key.replace("_", "-")} must be at least 1 (or None for no lazy regularisation)')
    rd.parse_grid(o['grid'])
    if o['device'] not in ('auto', 'cpu', 'cuda') and not str(o['device']).startswith('cuda:'):
        raise GanPruneError(f"--device must be auto, cpu or cuda, got {o['device']!r}")
    _validate_specs(o)


def _validate_kd(o: dict) -> None:
    """The KD method and the options of its terms; what a term needs comes from the facts it declares."""
    from gan_prune.distill.presets import get_preset
    from gan_prune.distill.terms import KD_TERMS
    terms = get_preset(str(o['kd'])).terms
    if o['kd_noise'] not in ('shared', 'independent'):
        raise GanPruneError(f"--kd-noise must be 'shared' or 'independent', got {o['kd_noise']!r}")
    _validate_dime(o)
    masked = [t for t in terms if KD_TERMS.info(t).get('uses_mask')]
    if masked and str(o.get('cagan_mask')) == 'face-parser' and not o.get('parser_weights'):
        raise GanPruneError(f'--kd {o["kd"]} masks its KD terms with the teacher image\'s face-parsing mask, which '
                            f'needs --parser-weights 79999_iter.pth (BiSeNet, github.com/zllrunning/face-parsing.'
                            f'PyTorch); or pass --cagan-mask none (every pixel) or --cagan-mask FILE (your own model)')


def _validate_dime(o: dict) -> None:
    """The DiME estimator and its images per estimate; the names and what each needs come from DIME_ESTIMATORS."""
    from gan_prune.distill.dime import DIME_ESTIMATORS
    if not isinstance(o['dime_batch'], int) or o['dime_batch'] < 1:
        raise GanPruneError(f'--dime-batch must be a whole number of images >= 1, got {o["dime_batch"]!r}')
    estimator = o['dime_estimator']
    if estimator not in DIME_ESTIMATORS:
        names = [repr(n) for n in DIME_ESTIMATORS.names()]
        raise GanPruneError(f"--dime-estimator must be {', '.join(names[:-1])} or {names[-1]}, got {estimator!r}")
    least = DIME_ESTIMATORS.info(estimator)['min_images']
    if o['dime_batch'] < least:
        raise GanPruneError(f'--dime-estimator {estimator} needs at least {least} images per estimate; --dime-batch '
                            f'{o["dime_batch"]} is too small')


def _validate_specs(o: dict) -> None:
    """Names used only later (embedders when the losses are built, metrics at the first snapshot), checked now."""
    from gan_prune.distill.dime import check_embedder_specs
    from gan_prune.metrics.compute import parse_metrics
    from gan_prune.metrics.detectors import EFFNET_LITE0, check_detector_spec
    for option, key, check in (('--dime', 'dime', check_embedder_specs), ('--metrics', 'metrics', parse_metrics)):
        value = o.get(key)
        if value and str(value).strip().lower() != 'none':
            try:
                check(value)
            except GanPruneError as e:
                raise GanPruneError(f'{option}: {e}') from e
    try:
        check_detector_spec(str(o.get('metrics_detector') or EFFNET_LITE0))
    except GanPruneError as e:
        raise GanPruneError(f'--metrics-detector: {e}') from e


def fetch_weights(opts: dict, progress: bool = True) -> dict:
    """`opts` with the weights files of the frozen networks its KD terms use: given, found locally, or
    downloaded once from their official sources (gan_prune.distill.official_weights). The resolved paths go
    into the options, so training_options.json records which files the run used."""
    from gan_prune.distill import official_weights as ow
    from gan_prune.distill.dime import parse_dime_spec
    from gan_prune.distill.presets import get_preset
    terms = get_preset(str(opts['kd'])).terms
    opts = dict(opts)
    log = print if progress else (lambda msg: None)
    dime = str(opts.get('dime') or '')
    if 'dime' in terms and dime.strip().lower() not in ('', 'none'):
        names = [n for n, _ in parse_dime_spec(dime)]
        opts['embed_weights'] = ow.resolve_embed_weights(names, opts['embed_weights'], progress=progress, log=log)
    if 'cagan' in terms and opts['cagan_perceptual'] > 0 and str(opts['cagan_net']) == 'lpips-vgg':
        opts['cagan_net'] = f'lpips-vgg:{ow.fetch("vgg16", progress=progress, log=log)}'
    return opts


def input_files(opts: dict) -> list[tuple[str, str]]:
    """(option, path) of every file or folder the run reads."""
    inputs = [(f'--{key.replace("_", "-")}', opts.get(key))
              for key in ('teacher', 'student', 'data', 'dime_stats', 'parser_weights')]
    if opts.get('cagan_mask') not in (None, 'none', 'face-parser'):
        inputs.append(('--cagan-mask', opts['cagan_mask']))
    if warm_start_snapshot(opts) and os.path.isfile(opts['resume']):
        inputs.append(('--resume', opts['resume']))
    for entry in opts.get('embed_weights') or []:
        inputs.append(('--embed-weights', entry.partition('=')[2] or entry))
    for key in SPEC_OPTIONS_WITH_FILES:
        inputs += [(f'--{key.replace("_", "-")}', path) for path in _spec_files(opts.get(key))]
    return [(label, path) for label, path in inputs if path]


def default_desc(opts: dict) -> str:
    data = 'datafree' if opts.get('data_free') else os.path.splitext(os.path.basename(str(opts['data']).rstrip('/')))[0]
    return f'distill-{opts["kd"]}-{data}-batch{opts["batch"]}'
