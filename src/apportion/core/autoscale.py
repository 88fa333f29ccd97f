"""Autoscaling policy for one node pool (nodes of one provider and template).

``evaluate`` looks at the pool and answers one decision with its reason:

1. Size bounds first: below ``min_size`` scale up, above ``max_size`` drain
   idle nodes; cooldowns do not apply, the bounds are the operator's rules.
2. Scale up, by the largest of: template nodes needed to hold the pending
   demand that fits nowhere now (first-fit decreasing bin packing); nodes to
   bring the window's mean utilization back to ``target`` when every sample of
   the window is above ``scale_up_above``; nodes to bring the forecast peak to
   ``target`` when it is above ``scale_up_above``. Capped by ``max_size`` and
   the hourly budget; not within ``cooldown_up_s`` of the last scale-up, as
   the nodes then asked for may still be starting.
3. Scale down only when every sample of the window is below
   ``scale_down_below``, nothing is pending, and ``cooldown_down_s`` has
   passed since the last scale-up and the last scale-down. Only idle nodes
   (no running tasks) are named, empty ones first, then the most expensive,
   then the newest; and only as many as keep the window's peak utilization
   (and the forecast peak) at or under ``target`` on the nodes left.

Hysteresis: a scale-down leaves utilization at most ``target`` (< the up
threshold), so it cannot by itself cause a scale-up; a scale-up blocks
scale-downs for ``cooldown_down_s``; and every utilization rule needs the
whole window, not one sample. A named node is drained, never terminated
while it runs work: ``ready_to_terminate`` says which draining nodes are empty.

Decisions are actions only for a pool in ``auto`` mode; otherwise they are
advice (``advice_only``). Pure: ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from apportion.core.errors import InvalidInput
from apportion.core.resources import Vector, fits, format_human_vector

Action = Literal["scale_up", "scale_down", "none"]
Mode = Literal["auto", "advice"]


@dataclass(frozen=True, slots=True)
class NodeTemplate:
    """What one new node of the pool offers and costs."""

    name: str
    resources: Vector
    cost_per_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    template: NodeTemplate
    min_size: int = 0
    max_size: int = 10
    target: float = 0.70
    scale_up_above: float = 0.80
    scale_down_below: float = 0.30
    window_s: float = 300.0
    cooldown_up_s: float = 300.0
    cooldown_down_s: float = 600.0
    mode: Mode = "advice"
    max_cost_per_hour: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_size <= self.max_size:
            raise InvalidInput("pool: need 0 <= min_size <= max_size", field="min_size")
        if not 0 < self.scale_down_below < self.target < self.scale_up_above <= 1:
            raise InvalidInput(
                "pool: need 0 < scale_down_below < target < scale_up_above <= 1, "
                "or the pool would flap between up and down",
                field="target",
            )
        if min(self.window_s, self.cooldown_up_s, self.cooldown_down_s) < 0:
            raise InvalidInput("pool: windows and cooldowns are >= 0 seconds", field="window_s")
        if self.mode not in ("auto", "advice"):
            raise InvalidInput("pool: mode is 'auto' or 'advice'", field="mode")
        if not any(q > 0 for q in self.template.resources.values()):
            raise InvalidInput("pool: the node template offers no resources", field="template")


@dataclass(frozen=True, slots=True)
class PoolNode:
    name: str
    resources: Vector
    allocated: Vector
    running_tasks: int
    cost_per_hour: float = 0.0
    draining: bool = False
    created_at: float = 0.0

    @property
    def idle(self) -> bool:
        return self.running_tasks == 0

    @property
    def empty(self) -> bool:
        return self.running_tasks == 0 and not any(q > 0 for q in self.allocated.values())


class UtilizationSample(NamedTuple):
    """Pool utilization at ``t``: the dominant share, allocated / capacity of
    the most used resource (see ``pool_utilization``)."""

    t: float
    utilization: float


@dataclass(frozen=True, slots=True)
class PoolState:
    nodes: Sequence[PoolNode]
    samples: Sequence[UtilizationSample] = ()
    pending: Sequence[Vector] = ()
    """Resource vectors of pending tasks that fit on no node of the pool now."""
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    forecast_peak: float | None = None
    """Forecast peak utilization of the pool's current (non-draining) capacity
    over the look-ahead, e.g. the highest hi80 of allocated / capacity."""
    forecast_within_s: float | None = None
    """The look-ahead that ``forecast_peak`` covers, for the reason's words."""


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    action: Action
    count: int
    template: str | None
    nodes_to_drain: tuple[str, ...]
    reason: str
    advice_only: bool
    cost_per_hour_delta: float = 0.0


def pool_utilization(nodes: Sequence[PoolNode]) -> float:
    """Dominant share over the non-draining nodes: allocated / capacity of the
    resource that is most used, since that one blocks the next task."""
    total: dict[str, int] = {}
    used: dict[str, int] = {}
    for node in nodes:
        if node.draining:
            continue
        for name, qty in node.resources.items():
            total[name] = total.get(name, 0) + qty
            used[name] = used.get(name, 0) + node.allocated.get(name, 0)
    return max((used[r] / total[r] for r in total if total[r] > 0), default=0.0)


def ready_to_terminate(nodes: Sequence[PoolNode]) -> tuple[str, ...]:
    """Draining nodes with nothing left on them: the only ones a scale-down
    may terminate."""
    return tuple(n.name for n in nodes if n.draining and n.empty)


def evaluate(policy: PoolPolicy, state: PoolState, now: float) -> ScalingDecision:
    decision = _decide(policy, state, now)
    return replace(decision, advice_only=policy.mode != "auto")


def _decide(policy: PoolPolicy, state: PoolState, now: float) -> ScalingDecision:
    live = [n for n in state.nodes if not n.draining]
    size = len(live)
    if size < policy.min_size:
        return _up(policy, policy.min_size - size,
                   f"pool has {size} node(s), below the minimum {policy.min_size}")
    if size > policy.max_size:
        return _trim(policy, live, size - policy.max_size)
    window = _window(state.samples, now, policy.window_s)
    wanted, why = _up_demand(policy, state, window, size)
    if wanted > 0:
        return _gated_up(policy, state, live, wanted, why, now)
    down = _down(policy, state, window, live, now)
    if down is not None:
        return down
    return _none(_quiet_reason(policy, window, state))


# -- scale up -------------------------------------------------------------------


def _up_demand(
    policy: PoolPolicy, state: PoolState, window: list[float] | None, size: int
) -> tuple[int, list[str]]:
    """Nodes wanted and why, the largest of the three triggers."""
    reasons: list[str] = []
    counts = [0]
    if state.pending:
        packed, never = pack(state.pending, policy.template.resources)
        if packed:
            counts.append(packed)
            reasons.append(f"{len(state.pending) - never} pending task(s) fit on no node; "
                           f"they pack onto {packed} {policy.template.name} node(s)")
        if never:
            reasons.append(f"{never} pending task(s) are larger than a "
                           f"{policy.template.name} node and cannot be helped by scaling")
    if window is not None and size > 0 and min(window) > policy.scale_up_above:
        mean = sum(window) / len(window)
        counts.append(_nodes_for(size, mean, policy.target))
        reasons.append(f"utilization {mean:.0%} over the last {policy.window_s:g} s, above "
                       f"{policy.scale_up_above:.0%} throughout; target {policy.target:.0%}")
    peak = state.forecast_peak
    if peak is not None and size > 0 and peak > policy.scale_up_above:
        counts.append(_nodes_for(size, peak, policy.target))
        within = state.forecast_within_s
        when = "" if within is None else f" within the next {_duration(within)}"
        reasons.append(f"forecast peak utilization {peak:.0%}{when} is above "
                       f"{policy.scale_up_above:.0%}; scaling ahead of it to target "
                       f"{policy.target:.0%}")
    return max(counts), reasons


def _duration(seconds: float) -> str:
    """``2 h``, ``90 min``, ``45 s``: a look-ahead as a person says it."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _nodes_for(size: int, utilization: float, target: float) -> int:
    """Extra nodes so that the same load on more nodes sits at ``target``."""
    return max(1, math.ceil(size * utilization / target - 1e-9) - size)


def pack(demands: Sequence[Vector], capacity: Vector) -> tuple[int, int]:
    """First-fit decreasing: how many ``capacity``-sized bins hold the
    demands, and how many demands fit in no bin at all."""
    def share(d: Vector) -> float:
        return max((q / capacity[r] for r, q in d.items() if capacity.get(r)), default=0.0)

    placeable = [d for d in demands if fits(d, capacity)]
    bins: list[dict[str, int]] = []
    for demand in sorted(placeable, key=share, reverse=True):
        for free in bins:
            if fits(demand, free):
                for r, q in demand.items():
                    free[r] -= q
                break
        else:
            bins.append({r: capacity.get(r, 0) - demand.get(r, 0) for r in capacity})
    return len(bins), len(demands) - len(placeable)


def _gated_up(
    policy: PoolPolicy,
    state: PoolState,
    live: list[PoolNode],
    wanted: int,
    why: list[str],
    now: float,
) -> ScalingDecision:
    reason = "; ".join(why)
    last = state.last_scale_up_at
    if last is not None and now - last < policy.cooldown_up_s:
        until = last + policy.cooldown_up_s
        return _none(f"{reason}; but the last scale-up was {now - last:g} s ago, "
                     f"cooling down until {until:g} (new nodes may still be starting)")
    count, capped = _cap_up(policy, live, wanted)
    if count <= 0:
        return _none(f"{reason}; but {capped}")
    if capped:
        reason += f"; {wanted} wanted, {count} allowed ({capped})"
    return _up(policy, count, reason)


def _cap_up(policy: PoolPolicy, live: list[PoolNode], wanted: int) -> tuple[int, str]:
    count, why = wanted, ""
    room = policy.max_size - len(live)
    if count > room:
        count, why = room, f"the pool is limited to {policy.max_size} nodes"
    price = policy.template.cost_per_hour
    if policy.max_cost_per_hour is not None and price > 0:
        spent = sum(n.cost_per_hour for n in live)
        affordable = max(0, math.floor((policy.max_cost_per_hour - spent) / price + 1e-9))
        if count > affordable:
            count = affordable
            why = f"the budget is {policy.max_cost_per_hour:g}/h and the pool costs {spent:g}/h"
    return count, why


def _up(policy: PoolPolicy, count: int, reason: str) -> ScalingDecision:
    t = policy.template
    return ScalingDecision(
        "scale_up", count, t.name, (), f"add {count} {t.name} node(s) "
        f"({format_human_vector(t.resources)}): {reason}", False, count * t.cost_per_hour,
    )


# -- scale down -----------------------------------------------------------------


def _down(
    policy: PoolPolicy,
    state: PoolState,
    window: list[float] | None,
    live: list[PoolNode],
    now: float,
) -> ScalingDecision | None:
    # Pending tasks a template node could hold need this pool; larger ones do not.
    waiting = any(fits(d, policy.template.resources) for d in state.pending)
    if window is None or max(window) >= policy.scale_down_below or waiting:
        return None
    size = len(live)
    blocked = _down_blocked(policy, state, now)
    if blocked:
        return _none(f"utilization below {policy.scale_down_below:.0%} for "
                     f"{policy.window_s:g} s, but {blocked}")
    peak = max(max(window), state.forecast_peak or 0.0)
    # Keep enough nodes that the peak load would sit at or under target on them.
    keep = max(policy.min_size, math.ceil(size * peak / policy.target - 1e-9), 1 if peak else 0)
    candidates = _drain_order([n for n in live if n.idle])[: max(0, size - keep)]
    if not candidates:
        return _none(f"utilization below {policy.scale_down_below:.0%}, but no idle node "
                     f"can go without leaving the rest above {policy.target:.0%} or the pool "
                     f"below {policy.min_size} node(s)")
    names = tuple(n.name for n in candidates)
    saved = sum(n.cost_per_hour for n in candidates)
    return ScalingDecision(
        "scale_down", len(names), None, names,
        f"drain {len(names)} idle node(s) ({', '.join(names)}): utilization peaked at "
        f"{max(window):.0%} over the last {policy.window_s:g} s, below "
        f"{policy.scale_down_below:.0%} throughout; {size - len(names)} node(s) stay",
        False, -saved,
    )


def _down_blocked(policy: PoolPolicy, state: PoolState, now: float) -> str:
    for what, last in (("scale-up", state.last_scale_up_at),
                       ("scale-down", state.last_scale_down_at)):
        if last is not None and now - last < policy.cooldown_down_s:
            return (f"the last {what} was {now - last:g} s ago; scale-downs wait "
                    f"{policy.cooldown_down_s:g} s")
    return ""


def _drain_order(nodes: list[PoolNode]) -> list[PoolNode]:
    """Empty nodes first (nothing to wait for), then the most expensive (the
    biggest saving), then the newest (older nodes have proven healthy)."""
    return sorted(nodes, key=lambda n: (not n.empty, -n.cost_per_hour, -n.created_at, n.name))


def _trim(policy: PoolPolicy, live: list[PoolNode], excess: int) -> ScalingDecision:
    names = tuple(n.name for n in _drain_order([n for n in live if n.idle])[:excess])
    if not names:
        return _none(f"pool has {len(live)} nodes, above the maximum "
                     f"{policy.max_size}, but every node runs work; none is drained")
    saved = sum(n.cost_per_hour for n in live if n.name in names)
    return ScalingDecision(
        "scale_down", len(names), None, names,
        f"drain {len(names)} idle node(s) ({', '.join(names)}): pool has {len(live)} nodes, "
        f"above the maximum {policy.max_size}", False, -saved,
    )


# -- neither --------------------------------------------------------------------


def _window(
    samples: Sequence[UtilizationSample], now: float, window_s: float
) -> list[float] | None:
    """Utilization over [now - window_s, now] as a step function: the last
    sample at or before the window's start, then every sample inside. None
    when the samples do not reach back to the start (too little to judge)."""
    start = now - window_s
    ordered = sorted((s for s in samples if s.t <= now), key=lambda s: s.t)
    before = [s for s in ordered if s.t <= start]
    if not before:
        return None
    return [before[-1].utilization] + [s.utilization for s in ordered if s.t > start]


def _quiet_reason(policy: PoolPolicy, window: list[float] | None, state: PoolState) -> str:
    if window is None:
        return f"utilization samples do not yet cover the last {policy.window_s:g} s"
    low, high = min(window), max(window)
    if state.pending:
        return (f"{len(state.pending)} pending task(s) are larger than a "
                f"{policy.template.name} node; scaling this pool cannot help them")
    return (f"utilization {low:.0%}-{high:.0%} over the last {policy.window_s:g} s; scale up "
            f"only above {policy.scale_up_above:.0%} and down only below "
            f"{policy.scale_down_below:.0%} throughout")


def _none(reason: str) -> ScalingDecision:
    return ScalingDecision("none", 0, None, (), reason, False)
