"""Preemption on GPU share slots: a plan the cycle makes is a plan it places.

The planner's node-by-node search asks the node filters (``fits_on``); a
task's share slots must sit on one GPU or fill whole GPUs (``pick_slots``),
which the filters did not always see. A plan that evicted and then could not
place stopped the cycle (an assertion) after evicting for nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.gpu_shares import one_gpu
from apportion.core.model import Device, Node
from apportion.core.reasons import Kind
from apportion.core.scheduling import (
    STRATEGIES,
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    devices,
    job,
    preemption,
    schedule_cycle,
)
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.preemption import PreemptionPlan


def slots(gpus: int, split: int, prefix: str = "g") -> tuple[Device, ...]:
    return tuple(
        Device(f"{prefix}{k}/{s}", "A100", None, f"{prefix}u{k}", None,
               {"parent": f"{prefix}{k}", "shares": split})
        for k in range(gpus) for s in range(split)
    )


def repro_state() -> ClusterState:
    """Node ``n``: two GPUs split in two slots each; ``low`` holds one slot."""
    state = ClusterState([Node("n", {"cpu": 8000, "gpu": 4}, devices={"gpu": slots(2, 2)})])
    low = job("low", {"cpu": 1000, "gpu": 1}, preemptible=True, runtime_estimate=5000.0)
    assert len(schedule_cycle(state, [low], 0.0, SchedulerConfig()).placements) == 1
    return state


def test_three_slots_of_gpus_split_in_two_evict_no_one() -> None:
    # The reviewer's reproducer: 3 slots are neither one GPU's nor whole
    # GPUs' worth; no plan places them, so nobody is evicted.
    state = repro_state()
    high = job("high", {"cpu": 1000, "gpu": 3}, priority=5, runtime_estimate=10.0)
    out = schedule_cycle(state, [high], 1.0, SchedulerConfig(preemption=True))
    assert out.preemptions == () and out.placements == ()
    assert out.unplaced["high"].kind is Kind.BUSY
    assert sorted(state.running) == ["low"]
    assert preemption.plan(state, Placer(state, STRATEGIES["priority"].options), high, 1.0) is None


def test_whole_gpus_worth_of_slots_is_placed_by_preemption() -> None:
    # Four slots are both GPUs whole: evicting ``low`` frees them.
    state = repro_state()
    high = job("high", {"cpu": 1000, "gpu": 4}, priority=5, runtime_estimate=10.0)
    out = schedule_cycle(state, [high], 1.0, SchedulerConfig(preemption=True))
    assert [(p.victim, p.by) for p in out.preemptions] == [("low", "high")]
    assert [p.job_id for p in out.placements] == ["high"]
    assert sorted(state.running) == ["high"]


def test_a_plan_that_does_not_place_evicts_no_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should a plan ever disagree with placement, the cycle goes on: the
    # victim runs on and the job waits with placement's reason.
    state = repro_state()
    monkeypatch.setattr(preemption, "plan", lambda *a, **k: PreemptionPlan("high", ("low",),
                                                                           (1, 0, 0, 1.0)))
    high = job("high", {"cpu": 1000, "gpu": 3}, priority=5, runtime_estimate=10.0)
    out = schedule_cycle(state, [high], 1.0, SchedulerConfig(preemption=True))
    assert out.preemptions == () and out.placements == ()
    assert out.unplaced["high"].kind is Kind.BUSY
    assert sorted(state.running) == ["low"]
    assert state.running["low"].tasks[0].devices == {"gpu": ("g0/0",)}


@st.composite
def fleets(draw: st.DrawFn) -> tuple[str, list[Node], list[int], list[tuple[int, int, int]]]:
    resource = draw(st.sampled_from(["gpu", "gpu.shares"]))
    nodes = []
    for i in range(draw(st.integers(1, 3))):
        gpus, split = draw(st.integers(1, 3)), draw(st.integers(2, 4))
        nodes.append(Node(f"n{i}", {"cpu": 8, resource: gpus * split},
                          devices={resource: slots(gpus, split, f"n{i}g")}))
    lows = draw(st.lists(st.integers(1, 4), max_size=6))
    highs = draw(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 2), st.integers(1, 9)),
                          min_size=1, max_size=3))
    return resource, nodes, lows, highs


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_every_preemption_plan_on_share_slots_is_placed(
    fleet: tuple[str, list[Node], list[int], list[tuple[int, int, int]]],
) -> None:
    resource, nodes, lows, highs = fleet
    state = ClusterState(nodes)
    low_jobs = [job(f"low{i}", {"cpu": 1, resource: q}, preemptible=True, priority=i % 2,
                    runtime_estimate=1000.0) for i, q in enumerate(lows)]
    schedule_cycle(state, low_jobs, 0.0, SchedulerConfig())
    high_jobs = [job(f"high{i}", {"cpu": 1, resource: q}, count=n, priority=2 + p,
                     runtime_estimate=10.0) for i, (q, n, p) in enumerate(highs)]
    before = set(state.running)
    out = schedule_cycle(state, high_jobs, 1.0, SchedulerConfig(preemption=True))
    placed = {p.job_id: p for p in out.placements}
    for pre in out.preemptions:
        assert pre.by in placed and pre.victim in placed[pre.by].preempted
        assert pre.victim in before and pre.victim not in state.running
    assert {v for p in out.placements for v in p.preempted} == {
        pre.victim for pre in out.preemptions}
    by_id = {d.id: d for n in nodes for d in n.devices[resource]}
    for p in out.placements:
        for tp in p.tasks:
            assert one_gpu(tp.devices[resource], by_id)
    # Nothing evicted but for a job that started.
    assert before - set(state.running) == {pre.victim for pre in out.preemptions}


@pytest.mark.parametrize("resource", ["gpu", "gpu.shares"])
def test_share_slots_are_known_by_their_devices_not_their_name(resource: str) -> None:
    # Node a's two free slots sit on two GPUs; b has a GPU whole. The
    # filters used to see slots only under ``*.shares``: under ``gpu`` they
    # offered a, whose devices then fell short, and the job waited.
    state = ClusterState([Node("a", {"cpu": 8, resource: 4}, devices={resource: slots(2, 2, "a")}),
                          Node("b", {"cpu": 8, resource: 3}, devices={resource: slots(1, 3, "b")})])
    for i, d in enumerate(("a0/0", "a1/0")):
        state.start(job(f"o{i}", {"cpu": 1, resource: 1}),
                    [TaskPlacement("a", {"cpu": 1, resource: 1}, {resource: (d,)})], 0.0)
    out = schedule_cycle(state, [job("two", {"cpu": 1, resource: 2})], 1.0, SchedulerConfig())
    assert [(p.tasks[0].node, p.tasks[0].devices) for p in out.placements] == [
        ("b", {resource: ("b0/0", "b0/1")})]


@pytest.mark.parametrize("resource", ["gpu", "gpu.shares"])
def test_no_reservation_for_slots_no_gpu_can_ever_give(resource: str) -> None:
    # Three slots of GPUs split in two fit no node even when ``low`` ends:
    # backfill's arithmetic counted slots by number and reserved node n.
    state = ClusterState([Node("n", {"cpu": 8000, resource: 4},
                               devices={resource: slots(2, 2)})])
    low = job("low", {"cpu": 1000, resource: 1}, runtime_estimate=5000.0)
    schedule_cycle(state, [low], 0.0, SchedulerConfig())
    high = job("high", {"cpu": 1000, resource: 3}, priority=5)
    out = schedule_cycle(state, [high], 1.0, SchedulerConfig())
    assert out.reservations == () and "high" in out.unplaced


@settings(max_examples=150, deadline=None)
@given(fleets(), st.integers(1, 8))
def test_the_filters_offer_a_node_exactly_when_its_slots_place_the_task(
    fleet: tuple[str, list[Node], list[int], list[tuple[int, int, int]]], q: int,
) -> None:
    resource, nodes, lows, _ = fleet
    state = ClusterState(nodes)
    schedule_cycle(state, [job(f"low{i}", {"cpu": 1, resource: n}) for i, n in enumerate(lows)],
                   0.0, SchedulerConfig())
    placer = Placer(state, STRATEGIES["priority"].options)
    one = job("one", {"cpu": 1, resource: q})
    for node in nodes:
        mark = state.mark()
        try:
            fits = placer.fits_on(one, node.name)
            assert fits == (devices.choose(state.nodes[node.name], resource, q, ()) is not None)
        finally:
            state.rollback(mark)
    assert placer.fits_now(one) == placer.place(one).ok
