"""KD methods as presets: which KD terms (gan_prune.distill.terms) a `--kd` name runs, and which options it sets.

Resolution order of an option: gan_prune.defaults.DISTILL (the released method), then the preset, then what the
user gave explicitly (a command-line option, or a keyword of `distill()`). training_options.json records the
result.

    nickel-dime  the method as released: DiME (clip:RN50 x15, dino-resnet50 x20, moments per 8 images) and NICKEL
                 (x10) on top of the adversarial game against D^S (random init) and D^T; R1 gamma 1, lr 0.0025
    cagan        CAGAN's set-up (Liu et al. 2021): 3 x masked L1 + 3 x LPIPS-VGG (LPIPS's learned linear weights)
                 on images masked with the teacher image's content mask, R1 gamma 10, lr 0.002, D^S initialised
                 from D^T, no D^T game, independent noise inputs for teacher and student
    none         plain adversarial fine-tuning: D^S initialised from D^T, no D^T game, no KD term
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gan_prune.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    terms: tuple[str, ...]
    # Options the preset sets over DISTILL's defaults. The options of a term only this preset uses (cagan_l1,
    # cagan_perceptual, cagan_net, cagan_mask: CAGAN's 3, 3, lpips-vgg, face-parser) have their value in DISTILL.
    sets: dict[str, Any] = field(default_factory=dict)


KD_PRESETS: Registry[Preset] = Registry('KD method')

PRESET_TABLE = (
    Preset('nickel-dime', 'the method: DiME + NICKEL, G^S against D^S and D^T', ('dime', 'nickel')),
    Preset('cagan', "CAGAN's KD: masked L1 + LPIPS-VGG, D^S from D^T, no D^T", ('cagan',),
           dict(gamma=10.0, lr=0.002, ds_init='teacher', teacher_d=False, kd_noise='independent')),
    Preset('none', 'adversarial fine-tuning only: D^S from D^T, no D^T', (), dict(ds_init='teacher', teacher_d=False)),
)

for _preset in PRESET_TABLE:
    KD_PRESETS.register(_preset.name, terms=_preset.terms)(lambda p=_preset: p)

# Options a preset may set; the summary printed at the start lists their resolved values.
PRESET_OPTIONS = ('dime', 'dime_batch', 'nickel_weight', 'cagan_l1', 'cagan_perceptual', 'cagan_net', 'cagan_mask',
                  'gamma', 'lr', 'ds_init', 'teacher_d', 'kd_noise')


def get_preset(name: str) -> Preset:
    return KD_PRESETS.build(name)


def apply_preset(defaults: dict, explicit: dict) -> dict:
    """DISTILL-style `defaults` updated with the preset named by explicit['kd'] (or the default kd), then with
    the `explicit` options."""
    preset = get_preset(str(explicit.get('kd', defaults['kd'])))
    opts = dict(defaults)
    opts.update(preset.sets)
    opts.update(explicit)
    return opts


def preset_summary(opts: dict, explicit: dict) -> str:
    """One line: what --kd ran with, each relevant value marked by where it came from."""
    preset = get_preset(str(opts['kd']))
    relevant = [k for k in PRESET_OPTIONS if _used_by(k, preset)]
    parts = []
    for key in relevant:
        origin = 'given' if key in explicit else ('preset' if key in preset.sets else 'default')
        parts.append(f'{key}={opts[key]!r} ({origin})')
    terms = ', '.join(preset.terms) or 'no KD term'
    return f'--kd {preset.name} ({preset.summary}; terms: {terms}): ' + ', '.join(parts)


def _used_by(key: str, preset: Preset) -> bool:
    by_term = {'dime': 'dime', 'dime_batch': 'dime', 'nickel_weight': 'nickel', 'cagan_l1': 'cagan',
               'cagan_perceptual': 'cagan', 'cagan_net': 'cagan', 'cagan_mask': 'cagan', 'kd_noise': 'cagan'}
    term = by_term.get(key)
    return term is None or term in preset.terms
