"""Compression rate -> channel configuration.

The compression rate of a student is `1 - MACs(student) / MACs(teacher)` under a counting convention of
gan_prune.generator.cost ('conv': synthesis convolutions + toRGB, the paper's; 'total': + style affines + mapping).

A uniform channel ratio r removes int(C * r) channels of every feature map with C channels, leaving
ceil((1 - r) * C) (method.md section 2). The rate is a non-decreasing step function of r, whose steps sit at
r = 1 - k / C; every step is a distinct uniform configuration. A target rate resolves to the configuration whose
rate is nearest to it (a tie goes to the cheaper student). That is what makes the paper's rounded rates build the
paper's students on paper256: 0.7496, 0.9073, 0.9892 and 0.9969 give the r = 0.5, 0.7, 0.9 and 0.95 channel
tables (their exact rates are 74.960 %, 90.715 %, 98.920 % and 99.697 %: neither "smallest ratio that reaches
the rate" nor "a configuration that rounds to it" gives all four), and 0.9573, which no configuration
reproduces, resolves to 104/52/26/13 channels (95.85 %). The achieved rate is always reported next to the target.
Blocks given in `overrides` ({resolution: channels}) keep those counts and the ratio is solved for the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gan_prune.errors import GanPruneError
from gan_prune.generator.cost import CONVENTIONS, synthesis_macs_for_channels

# How far beyond the most compressed configuration a target may lie and still snap to it (float noise only).
_RATE_SLACK = 1e-12


@dataclass
class NetShape:
    """What the rate solver needs to know about a teacher generator (no tensors)."""
    channels: dict[str, int]           # feature map -> channels ('b4.const', 'b{r}.mid', 'b{r}.out')
    img_resolution: int
    img_channels: int = 3
    architecture: str = 'skip'
    w_dim: int = 512
    z_dim: int = 512
    c_dim: int = 0
    mapping_layers: int = 8

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def macs(self, channels: dict[str, int], convention: str = 'conv') -> int:
        """MACs per image of a generator of this shape with `channels` (the cost model's convention)."""
        per_res = block_channels(channels, self.block_resolutions)
        return synthesis_macs_for_channels(per_res, self.img_resolution, self.img_channels, self.architecture,
                                           self.w_dim, self.z_dim, self.c_dim, self.mapping_layers, convention)


def block_channels(channels: dict[str, int], resolutions: list[int]) -> dict[int, int]:
    """Per-resolution channel counts for the analytic cost model (both feature maps of a block must agree)."""
    out = {}
    for res in resolutions:
        first = channels['b4.const' if res == 4 else f'b{res}.mid']
        second = channels[f'b{res}.out']
        if first != second:
            raise GanPruneError(f'block b{res} has {first} and {second} channels in its two feature maps; the rate '
                                f'solver needs one count per block (pass --channels for every block)')
        out[res] = int(second)
    return out


def net_shape(G) -> NetShape:
    """NetShape of a loaded generator (standard or slim)."""
    from gan_prune.prune.surgery import feature_maps
    last = getattr(G.synthesis, f'b{G.img_resolution}')
    return NetShape(channels=feature_maps(G), img_resolution=int(G.img_resolution),
                    img_channels=int(G.img_channels), architecture=str(last.architecture), w_dim=int(G.w_dim),
                    z_dim=int(G.z_dim), c_dim=int(G.c_dim), mapping_layers=int(G.mapping.num_layers))


def standard_shape(img_resolution: int, channel_base: int = 32768, channel_max: int = 512, **kwargs) -> NetShape:
    """NetShape of a standard generator built with channel_base/channel_max (e.g. paper256: 16384, 512)."""
    channels = {}
    for i in range(2, int(math.log2(img_resolution)) + 1):
        res = 2 ** i
        c = min(channel_base // res, channel_max)
        channels['b4.const' if res == 4 else f'b{res}.mid'] = c
        channels[f'b{res}.out'] = c
    return NetShape(channels=channels, img_resolution=img_resolution, **kwargs)


def removed_channels(c: int, ratio: float) -> int:
    """int(C * r), robust to float noise (0.29 * 100 is 28.999... in binary)."""
    return int(math.floor(c * ratio + 1e-9))


def ratio_channels(base: dict[str, int], ratio: float) -> dict[str, int]:
    """Uniform ratio: each feature map keeps C - int(C * ratio) = ceil((1 - ratio) * C) channels."""
    if not 0 <= ratio < 1:
        raise GanPruneError(f'--ratio {ratio} is outside [0, 1); it is the fraction of channels removed per layer')
    out = {name: c - removed_channels(c, ratio) for name, c in base.items()}
    empty = [name for name, c in out.items() if c < 1]
    if empty:
        raise GanPruneError(f'--ratio {ratio} would leave {empty[0]} with 0 channels; use a smaller ratio')
    return out


@dataclass
class ChannelPlan:
    """The solved channel configuration and the rate it achieves."""
    channels: dict[str, int]
    teacher_channels: dict[str, int]
    ratio: float | None                 # uniform ratio of the blocks not overridden (None: all overridden)
    rate: float                         # achieved compression rate under `convention`
    teacher_macs: int
    student_macs: int
    convention: str
    target_rate: float | None = None
    overrides: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(channels=dict(self.channels), teacher_channels=dict(self.teacher_channels), ratio=self.ratio,
                    rate=self.rate, target_rate=self.target_rate, teacher_macs=self.teacher_macs,
                    student_macs=self.student_macs, convention=self.convention,
                    overrides={int(k): int(v) for k, v in self.overrides.items()})


def parse_channel_overrides(text: str | None) -> dict[int, int]:
    """'64:128,128:64' -> {64: 128, 128: 64}."""
    if not text:
        return {}
    out = {}
    for item in text.replace(' ', '').split(','):
        if not item:
            continue
        res, sep, count = item.partition(':')
        if not sep or not res.isdigit() or not count.isdigit():
            raise GanPruneError(f'--channels: {item!r} is not RES:COUNT (e.g. --channels 128:64,256:32)')
        out[int(res)] = int(count)
    return out


def _apply_overrides(shape: NetShape, overrides: dict[int, int]) -> dict[str, int]:
    fixed = {}
    for res, count in overrides.items():
        if res not in shape.block_resolutions:
            raise GanPruneError(f'--channels: there is no block at resolution {res}; blocks are '
                                f'{", ".join(map(str, shape.block_resolutions))}')
        for name in ('b4.const' if res == 4 else f'b{res}.mid', f'b{res}.out'):
            teacher = shape.channels[name]
            if not 1 <= count <= teacher:
                raise GanPruneError(f'--channels {res}:{count}: block b{res} has {teacher} channels; '
                                    f'choose a count in 1..{teacher}')
            fixed[name] = count
    return fixed


def _plan(shape, channels, ratio, convention, target, overrides) -> ChannelPlan:
    teacher_macs = shape.macs(shape.channels, convention)
    student_macs = shape.macs(channels, convention)
    return ChannelPlan(channels=channels, teacher_channels=dict(shape.channels), ratio=ratio,
                       rate=1 - student_macs / teacher_macs, teacher_macs=teacher_macs, student_macs=student_macs,
                       convention=convention, target_rate=target, overrides=dict(overrides))


def solve_channels(shape: NetShape, rate: float | None = None, ratio: float | None = None,
                   overrides: dict[int, int] | None = None, convention: str = 'conv') -> ChannelPlan:
    """Channels for a target compression `rate`, or for a uniform `ratio`; `overrides` pin whole blocks."""
    if convention not in CONVENTIONS:
        raise GanPruneError(f'--rate-convention {convention!r} is unknown; choose one of {", ".join(CONVENTIONS)}')
    if rate is not None and ratio is not None:
        raise GanPruneError('give either --rate (compression rate, solved for) or --ratio (channel ratio), not both')
    overrides = dict(overrides or {})
    fixed = _apply_overrides(shape, overrides)
    free = {name: c for name, c in shape.channels.items() if name not in fixed}

    if rate is None:
        ratio = 0.0 if ratio is None else float(ratio)
        channels = dict(shape.channels, **ratio_channels(free, ratio), **fixed)
        return _plan(shape, channels, ratio if free else None, convention, None, overrides)

    rate = float(rate)
    if not 0 <= rate < 1:
        raise GanPruneError(f'--rate {rate} is outside [0, 1); it is the fraction of MACs removed, e.g. 0.9573')
    if not free:
        plan = _plan(shape, dict(shape.channels, **fixed), None, convention, rate, overrides)
        raise GanPruneError(f'--channels fixes every block (rate {plan.rate:.4%}); drop --rate or free a block')
    # Every ratio where some feature map's kept count changes: r = 1 - k / C (the ones leaving a layer empty
    # are dropped).
    steps = sorted({0.0} | {1 - k / c for c in set(free.values()) for k in range(1, c)})
    plans = [_plan(shape, dict(shape.channels, **ratio_channels(free, r), **fixed), r, convention, rate, overrides)
             for r in steps]
    return nearest_plan(plans, rate)


def nearest_plan(plans: list[ChannelPlan], rate: float) -> ChannelPlan:
    """The plan whose rate is nearest to `rate`; on a tie the higher rate (the cheaper student).

    A target beyond the most compressed configuration (one channel per layer) is an error, not a snap: the user
    asked for more than the network can give.
    """
    most = max(plans, key=lambda p: p.rate)
    if rate > most.rate + _RATE_SLACK:
        raise GanPruneError(f'--rate {rate} cannot be reached: even 1 channel per layer gives {most.rate:.4%} '
                            f'(more would leave a layer with 0 channels); ask for a lower rate')
    return min(plans, key=lambda p: (abs(p.rate - rate), -p.rate))


def format_plan(plan: ChannelPlan, teacher_cost=None, student_cost=None) -> str:
    """The channel table plus parameters and MACs before/after (real costs when the cost reports are given)."""
    from gan_prune.generator.cost import CONVENTION_TEXT, format_count
    lines = []
    header = f'{"block":>8} {"teacher":>8} {"student":>8}'
    if teacher_cost is not None and student_cost is not None:
        header += f' {"params before":>14} {"params after":>13} {"MACs before":>12} {"MACs after":>11}'
    lines.append(header)
    t_rows = {b.name: b for b in teacher_cost.blocks} if teacher_cost is not None else {}
    s_rows = {b.name: b for b in student_cost.blocks} if student_cost is not None else {}
    resolutions = sorted({int(n.split('.')[0][1:]) for n in plan.channels})
    for res in resolutions:
        keys = ['b4.const' if res == 4 else f'b{res}.mid', f'b{res}.out']
        t = '/'.join(sorted({str(plan.teacher_channels[k]) for k in keys}))
        s = '/'.join(sorted({str(plan.channels[k]) for k in keys}))
        row = f'{"b" + str(res):>8} {t:>8} {s:>8}'
        if t_rows and s_rows:
            tb, sb = t_rows[f'b{res}'], s_rows[f'b{res}']
            row += (f' {format_count(tb.params):>14} {format_count(sb.params):>13}'
                    f' {format_count(tb.macs(plan.convention)):>12} {format_count(sb.macs(plan.convention)):>11}')
        lines.append(row)
    if teacher_cost is not None and student_cost is not None:
        tm, sm = t_rows.get('mapping'), s_rows.get('mapping')
        if tm is not None and sm is not None:
            lines.append(f'{"mapping":>8} {"":>8} {"":>8} {format_count(tm.params):>14} {format_count(sm.params):>13}'
                         f' {format_count(tm.macs(plan.convention)):>12} {format_count(sm.macs(plan.convention)):>11}')
        lines.append(f'{"total":>8} {"":>8} {"":>8} {format_count(teacher_cost.total_params):>14}'
                     f' {format_count(student_cost.total_params):>13} {format_count(teacher_cost.total_macs):>12}'
                     f' {format_count(student_cost.total_macs):>11}')
    ratio = 'per-block channels' if plan.ratio is None else f'uniform ratio {plan.ratio:.4f}'
    target = '' if plan.target_rate is None else (f' (target {plan.target_rate:.2%}; the uniform configuration '
                                                  f'nearest to it, {plan.rate - plan.target_rate:+.3%})')
    lines.append(f'{ratio}; compression rate {plan.rate:.2%}{target}: {plan.teacher_macs:,} -> {plan.student_macs:,} '
                 f'MACs per image, {plan.teacher_macs / plan.student_macs:.1f}x fewer')
    lines.append(f'counting convention {plan.convention!r}: {CONVENTION_TEXT[plan.convention]}')
    return '\n'.join(lines)
