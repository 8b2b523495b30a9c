"""The distillation training loop behind `gan-prune distill`: `distill(**options)`.

The loop lives in parts: options (gan_prune.distill.options), starting the processes (launch), the collective
operations (collective), the objective built from the KD-term registry (objective), the phases of one iteration
(phases), the trainer (trainer) and the resume checkpoint (checkpoint). This module keeps the names callers use in
one place.
"""
from __future__ import annotations

from gan_prune.core.device import resolve_device
from gan_prune.core.fingerprint import module_fingerprint as module_checksum
from gan_prune.distill.checkpoint import RESUME_FORMAT
from gan_prune.distill.collective import Dist
from gan_prune.distill.launch import _prepare_run_dir, distill, world_from_env
from gan_prune.distill.options import (FILE_SPEC_FAMILIES, PATH_OPTIONS, RESUME_OVERRIDABLE, SPEC_OPTIONS_WITH_FILES,
                                       _absolute_paths, default_desc, fetch_weights, input_files, resolve_options)
from gan_prune.distill.objective import TEACHER_STATS_FILE, build_objective
from gan_prune.distill.phases import Phase
from gan_prune.distill.trainer import (METRICS_FILE, NONFINITE_GRAD_REPLACEMENT, Networks, Trainer, batch_layout,
                                       ema_beta, fresh_discriminator, lazy_adam, sanitize_grads, update_ema)

_input_files = input_files  # the earlier private name

__all__ = ['FILE_SPEC_FAMILIES', 'METRICS_FILE', 'NONFINITE_GRAD_REPLACEMENT', 'PATH_OPTIONS', 'RESUME_FORMAT',
           'RESUME_OVERRIDABLE', 'SPEC_OPTIONS_WITH_FILES', 'TEACHER_STATS_FILE', 'Dist', 'Networks', 'Phase',
           'Trainer', '_absolute_paths', '_prepare_run_dir', 'batch_layout', 'build_objective', 'default_desc',
           'distill', 'ema_beta', 'fetch_weights', 'fresh_discriminator', 'input_files', 'lazy_adam', 'module_checksum',
           'resolve_device', 'resolve_options', 'sanitize_grads', 'update_ema', 'world_from_env']
