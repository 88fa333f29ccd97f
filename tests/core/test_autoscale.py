"""Autoscaling policy: scale up for unfit demand and sustained load, scale
down idle nodes only, cooldowns, bounds, budget, advice mode, hysteresis."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from apportion.core.autoscale import (
    NodeTemplate,
    PoolNode,
    PoolPolicy,
    PoolState,
    UtilizationSample,
    evaluate,
    pack,
    pool_utilization,
    ready_to_terminate,
)
from apportion.exceptions import InvalidInput

GiB = 1 << 30
TEMPLATE = NodeTemplate("m16", {"cpu": 16000, "memory": 64 * GiB}, cost_per_hour=0.8)
NOW = 100_000.0


def node(name: str, cpu: int = 0, tasks: int = 0, cost: float = 0.8, **kw: object) -> PoolNode:
    return PoolNode(name, TEMPLATE.resources, {"cpu": cpu}, tasks, cost, **kw)  # type: ignore[arg-type]


def flat(level: float, span: float = 600.0, every: float = 30.0) -> list[UtilizationSample]:
    count = int(span / every)
    return [UtilizationSample(NOW - span + i * every, level) for i in range(count + 1)]


def policy(**kw: object) -> PoolPolicy:
    return PoolPolicy(TEMPLATE, **{"min_size": 1, "max_size": 20, "mode": "auto", **kw})  # type: ignore[arg-type]


# -- scale up -------------------------------------------------------------------


def test_burst_of_unfit_tasks_scales_up_by_the_bin_packed_count() -> None:
    nodes = [node(f"n{i}", 15000, tasks=3) for i in range(3)]
    burst = [{"cpu": 6000, "memory": 8 * GiB}] * 10  # two per 16-core node
    d = evaluate(policy(), PoolState(nodes, flat(0.94), burst), NOW)
    assert (d.action, d.count, d.template, d.nodes_to_drain) == ("scale_up", 5, "m16", ())
    assert d.cost_per_hour_delta == pytest.approx(4.0)
    assert "10 pending task(s) fit on no node; they pack onto 5 m16 node(s)" in d.reason
    assert d.reason.startswith("add 5 m16 node(s) (cpu=16,memory=64Gi): ")
    assert d.advice_only is False


def test_first_fit_decreasing_pairs_large_and_small_tasks() -> None:
    demands = [{"cpu": 6000}] * 3 + [{"cpu": 10000}] * 3 + [{"cpu": 20000}]
    assert pack(demands, TEMPLATE.resources) == (3, 1)  # 10+6 per node; 20 never fits


def test_tasks_larger_than_the_template_do_not_scale_the_pool() -> None:
    d = evaluate(policy(), PoolState([node("n0")], flat(0.5), [{"cpu": 64000}]), NOW)
    assert d.action == "none"
    assert "larger than a m16 node" in d.reason


def test_sustained_high_utilization_scales_to_target() -> None:
    nodes = [node(f"n{i}", 14000, tasks=2) for i in range(4)]
    d = evaluate(policy(), PoolState(nodes, flat(0.875)), NOW)
    # 4 nodes at 87.5 % hold 3.5 nodes of work; at 70 % that needs 5 nodes.
    assert (d.action, d.count) == ("scale_up", 1)
    assert "above 80% throughout" in d.reason


def test_one_sample_below_the_threshold_in_the_window_holds_back() -> None:
    samples = flat(0.9)
    samples[-3] = UtilizationSample(samples[-3].t, 0.75)
    d = evaluate(policy(), PoolState([node("n0", 14000, 1)] * 2, samples), NOW)
    assert d.action == "none"


def test_forecast_peak_scales_up_ahead_of_load() -> None:
    nodes = [node(f"n{i}", 8000, tasks=1) for i in range(5)]
    d = evaluate(policy(), PoolState(nodes, flat(0.5), forecast_peak=0.98), NOW)
    assert (d.action, d.count) == ("scale_up", 2)  # 5 * 0.98 / 0.7 = 7 nodes
    assert "forecast peak utilization 98%" in d.reason


def test_forecast_peak_says_how_far_ahead_and_stays_within_max_size() -> None:
    # Quiet now (50 %, no samples over the window yet), busy within 2 h.
    nodes = [node(f"n{i}", 8000, tasks=1) for i in range(5)]
    state = PoolState(nodes, (), forecast_peak=0.98, forecast_within_s=7200.0)
    d = evaluate(policy(max_size=6), state, NOW)
    assert (d.action, d.count, d.template) == ("scale_up", 1, "m16")
    assert d.reason == (
        "add 1 m16 node(s) (cpu=16,memory=64Gi): forecast peak utilization 98% within "
        "the next 2 h is above 80%; scaling ahead of it to target 70%; 2 wanted, 1 allowed "
        "(the pool is limited to 6 nodes)")
    half = evaluate(policy(), PoolState(nodes, (), forecast_peak=0.9,
                                        forecast_within_s=1800.0), NOW)
    assert "forecast peak utilization 90% within the next 30 min is above 80%" in half.reason


def test_a_forecast_under_the_threshold_or_an_empty_pool_adds_nothing() -> None:
    nodes = [node(f"n{i}", 8000, tasks=1) for i in range(5)]
    calm = evaluate(policy(), PoolState(nodes, (), forecast_peak=0.8), NOW)
    assert calm.action == "none"
    empty = evaluate(policy(min_size=0), PoolState([], (), forecast_peak=2.0), NOW)
    assert empty.action == "none"


def test_scale_up_waits_for_its_cooldown() -> None:
    state = PoolState([node("n0", 16000, 2)], flat(1.0), [{"cpu": 4000}] * 4,
                      last_scale_up_at=NOW - 120)
    d = evaluate(policy(), state, NOW)
    assert d.action == "none" and "cooling down until 100180" in d.reason
    later = evaluate(policy(), state, NOW + 180)
    assert later.action == "scale_up"


def test_max_size_and_budget_cap_the_count() -> None:
    nodes = [node(f"n{i}", 16000, 1) for i in range(3)]
    burst = [{"cpu": 16000}] * 10
    capped = evaluate(policy(max_size=5), PoolState(nodes, flat(1.0), burst), NOW)
    assert capped.count == 2 and "10 wanted, 2 allowed" in capped.reason
    budget = evaluate(policy(max_cost_per_hour=4.0), PoolState(nodes, flat(1.0), burst), NOW)
    assert budget.count == 2  # 3 * 0.8 spent, 1.6 left: two more
    full = evaluate(policy(max_size=3), PoolState(nodes, flat(1.0), burst), NOW)
    assert full.action == "none" and "limited to 3 nodes" in full.reason


def test_below_minimum_scales_up_regardless_of_cooldown() -> None:
    d = evaluate(policy(min_size=3), PoolState([node("n0")], last_scale_up_at=NOW - 1), NOW)
    assert (d.action, d.count) == ("scale_up", 2)


# -- scale down -----------------------------------------------------------------


def test_idle_nodes_are_drained_after_the_cooldown_never_busy_ones() -> None:
    nodes = [
        node("busy-a", 4000, tasks=2),
        node("idle-old", created_at=10.0),
        node("busy-b", 1000, tasks=1),
        node("idle-new", created_at=900.0),
        node("idle-pricey", cost=2.5),
        PoolNode("idle-holding", TEMPLATE.resources, {"cpu": 500}, 0, 0.8),  # a reservation
    ]
    state = PoolState(nodes, flat(0.05), last_scale_up_at=NOW - 700, last_scale_down_at=None)
    d = evaluate(policy(), state, NOW)
    assert d.action == "scale_down" and d.template is None
    # Empty first (most expensive, then newest), the one holding an allocation last.
    assert d.nodes_to_drain == ("idle-pricey", "idle-new", "idle-old", "idle-holding")
    assert d.count == 4 and d.cost_per_hour_delta == pytest.approx(-4.9)
    assert not {"busy-a", "busy-b"} & set(d.nodes_to_drain)


def test_scale_down_keeps_enough_nodes_for_target_and_minimum() -> None:
    nodes = [node(f"n{i}") for i in range(10)]
    d = evaluate(policy(min_size=2), PoolState(nodes, flat(0.25)), NOW)
    # 10 nodes at 25 % is 2.5 nodes of work: 4 nodes keep it at or under 70 %.
    assert d.count == 6
    tight = evaluate(policy(min_size=8), PoolState(nodes, flat(0.25)), NOW)
    assert tight.count == 2


def test_scale_down_waits_after_any_scale_event() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    after_up = evaluate(policy(), PoolState(nodes, flat(0.1), last_scale_up_at=NOW - 500), NOW)
    assert after_up.action == "none" and "last scale-up was 500 s ago" in after_up.reason
    after_down = evaluate(
        policy(), PoolState(nodes, flat(0.1), last_scale_down_at=NOW - 300), NOW
    )
    assert after_down.action == "none" and "last scale-down" in after_down.reason


def test_samples_must_cover_the_whole_window() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    d = evaluate(policy(), PoolState(nodes, flat(0.1, span=240)), NOW)
    assert d.action == "none" and "do not yet cover the last 300 s" in d.reason


def test_small_pending_work_scales_up_even_when_utilization_is_low() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    d = evaluate(policy(), PoolState(nodes, flat(0.1), [{"cpu": 500}]), NOW)
    assert d.action == "scale_up"  # it does not fit anywhere now, so it needs a node


def test_all_busy_means_nothing_to_drain() -> None:
    nodes = [node(f"n{i}", 100, tasks=1) for i in range(4)]
    d = evaluate(policy(), PoolState(nodes, flat(0.01)), NOW)
    assert d.action == "none" and "no idle node" in d.reason


def test_above_maximum_drains_idle_nodes_only() -> None:
    nodes = [node("a", 8000, 1), node("b"), node("c", 9000, 2)]
    d = evaluate(policy(max_size=1), PoolState(nodes, flat(0.5)), NOW)
    assert (d.action, d.nodes_to_drain) == ("scale_down", ("b",))


def test_only_empty_draining_nodes_may_be_terminated() -> None:
    nodes = [node("a", draining=True), node("b", 100, 1, draining=True), node("c")]
    assert ready_to_terminate(nodes) == ("a",)
    # draining nodes do not count as capacity
    assert pool_utilization([node("x", 8000, 1), node("y", 0, draining=True)]) == 0.5


# -- modes, validation ----------------------------------------------------------


def test_advice_mode_flags_every_decision_as_advice() -> None:
    burst = [{"cpu": 8000}] * 2
    d = evaluate(policy(mode="advice"), PoolState([node("n0", 16000, 1)], flat(1.0), burst), NOW)
    assert d.action == "scale_up" and d.advice_only is True
    assert PoolPolicy(TEMPLATE).mode == "advice"  # a new pool only advises


@pytest.mark.parametrize(
    "kw",
    [
        {"scale_down_below": 0.75},
        {"scale_up_above": 0.6},
        {"min_size": 5, "max_size": 2},
        {"window_s": -1},
        {"mode": "yolo"},
    ],
)
def test_policies_that_would_flap_or_make_no_sense_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        PoolPolicy(TEMPLATE, **kw)  # type: ignore[arg-type]


# -- hysteresis: a fluctuating load for two simulated hours ----------------------

UNIT = NodeTemplate("c10", {"cpu": 10000}, 1.0)


def simulate(pool: PoolPolicy, load: Callable[[float], float]) -> list[tuple[float, str, int]]:
    """Every 15 s: sample utilization, evaluate, apply. Work packs onto the
    first nodes, so the later ones go idle; what does not fit is pending."""
    names = [f"n{i}" for i in range(4)]
    made = len(names)
    samples: list[UtilizationSample] = []
    last_up: float | None = None
    last_down: float | None = None
    decisions: list[tuple[float, str, int]] = []
    for step in range(481):
        t = step * 15.0
        work = load(t)
        capacity = len(names) * 10000
        samples = [*samples[-40:], UtilizationSample(t, min(1.0, work / capacity))]
        left, nodes = min(work, capacity), []
        for name in names:
            share = min(left, 10000)
            left -= share
            nodes.append(PoolNode(name, UNIT.resources, {"cpu": int(share)}, int(share > 0), 1.0))
        pending = [{"cpu": 2000}] * math.ceil(max(0.0, work - capacity) / 2000)
        d = evaluate(pool, PoolState(nodes, samples, pending, last_up, last_down), t)
        if d.action == "scale_up":
            names += [f"n{made + i}" for i in range(d.count)]
            made += d.count
            last_up = t
        elif d.action == "scale_down":
            busy = {n.name for n in nodes if n.running_tasks}
            assert not busy & set(d.nodes_to_drain), "a node with running work was named"
            names = [n for n in names if n not in d.nodes_to_drain]
            last_down = t
        if d.action != "none":
            decisions.append((t, d.action, d.count))
    return decisions


def load_with(period_s: float) -> Callable[[float], float]:
    """2 nodes of work +- 1.4, noise sd 0.15: crosses 80 % and 30 % of 4 nodes."""
    noise = np.random.default_rng(42).normal(0, 1500, 481)
    return lambda t: max(0.0, 20000 + 14000 * math.sin(2 * math.pi * t / period_s)
                         + noise[int(t // 15)])


def naive(pool: PoolPolicy) -> PoolPolicy:
    return PoolPolicy(pool.template, min_size=pool.min_size, max_size=pool.max_size, mode="auto",
                      window_s=0, cooldown_up_s=0, cooldown_down_s=0)


def test_load_swinging_faster_than_the_window_causes_no_decision() -> None:
    pool = PoolPolicy(UNIT, min_size=1, max_size=20, mode="auto")
    swing = load_with(period_s=240)
    assert simulate(pool, swing) == []
    assert len(simulate(naive(pool), swing)) == 159  # without window and cooldowns: flapping


def test_slow_swings_are_followed_without_up_down_loops() -> None:
    pool = PoolPolicy(UNIT, min_size=1, max_size=20, mode="auto")
    decisions = simulate(pool, load_with(period_s=1800))
    # Four load cycles in two hours: one drain of 2 per trough, two steps up per crest.
    assert [a for _, a, _ in decisions].count("scale_down") == 4
    assert len(decisions) == 11
    assert len(simulate(naive(pool), load_with(period_s=1800))) == 33
    for (t0, a0, _), (t1, a1, _) in itertools.pairwise(decisions):
        if a0 == "scale_up" and a1 == "scale_down":
            assert t1 - t0 >= pool.cooldown_down_s
        if a0 == a1 == "scale_up":
            assert t1 - t0 >= pool.cooldown_up_s
