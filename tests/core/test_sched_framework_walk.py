"""The placement pipeline (``core/scheduling/framework.py``), continued:
what a gang's context records of the tasks placed so far, and the walk and
grant paths that only a gang over several buckets or nodes reaches (found
by mutation testing, see docs/testing.md)."""

from __future__ import annotations

from apportion.core.model import Device, Node
from apportion.core.reasons import Code, Kind
from apportion.core.scheduling import (
    ClusterState,
    Job,
    SchedulerConfig,
    TaskPlacement,
    TaskSpec,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions
from apportion.core.scheduling.policies import strategy


class _Ranked:
    """A score plugin that prefers the node with the highest ``rank`` label
    and notes what the context says each time it is asked."""

    name = "ranked"

    def __init__(self) -> None:
        self.seen: list[tuple[dict[tuple[str, str], int], int]] = []

    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        note = (dict(ctx.zones), ctx.placed)
        if not self.seen or self.seen[-1] != note:
            self.seen.append(note)
        return float(cand.cls.labels["rank"])


def test_a_gang_counts_its_tasks_per_facility_and_zone_as_it_places_them() -> None:
    # Five 2-cpu nodes, each its own class; the gang's tasks fill them in
    # rank order, two at a time. Nodes without a zone label (or facility)
    # count under "".
    labels = [
        {"facility": "f1", "zone": "a", "rank": "5"},
        {"facility": "f1", "zone": "a", "rank": "4"},
        {"facility": "f2", "rank": "3"},
        {"facility": "f2", "zone": "b", "rank": "2"},
        {"rank": "1"},
    ]
    state = ClusterState([Node(f"n{i}", {"cpu": 2000}, labels=lab)
                          for i, lab in enumerate(labels)])
    probe = _Ranked()
    r = Placer(state, PlaceOptions(((probe, 1.0),), limit=8)).place(
        job("g", {"cpu": 1000}, count=10))
    assert [(t.node, t.count) for t in r.tasks or ()] == [
        ("n0", 2), ("n1", 2), ("n2", 2), ("n3", 2), ("n4", 2)]
    # The last node is the only candidate left: nothing is scored for it.
    assert probe.seen == [
        ({}, 0),
        ({("f1", "a"): 2}, 2),
        ({("f1", "a"): 4}, 4),
        ({("f1", "a"): 4, ("f2", ""): 2}, 6),
    ]


def test_topology_keeps_a_gang_in_one_facility_without_zone_labels() -> None:
    # As test_topology_follows_the_gang_to_an_idle_node_in_its_zone, with
    # facilities and no zones: a0 is fuller than b1 (bin-pack and the walk
    # prefer it), but the gang's first task went to facility b.
    state = ClusterState([
        Node("a0", {"cpu": 4000}, labels={"facility": "a"}),
        Node("b0", {"cpu": 4000}, labels={"facility": "b"}),
        Node("b1", {"cpu": 4000}, labels={"facility": "b"}),
    ])
    for n, used in (("a0", 500), ("b0", 1000)):
        state.start(job(f"blk-{n}", {"cpu": used}), [TaskPlacement(n, {"cpu": used})], 0.0)
    r = schedule_cycle(state, [job("g", {"cpu": 3000}, count=2)], 0.0, SchedulerConfig())
    assert [t.node for t in r.placements[0].tasks] == ["b0", "b1"]


class _PerNode(_Ranked):
    """``_Ranked`` that asks for single-node candidates, and ranks by the
    node's name when told to (``favour``)."""

    def __init__(self, favour: dict[str, float] | None = None) -> None:
        super().__init__()
        self.favour = favour

    def per_node(self, job: Job) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        if self.favour is None:
            return super().score(cand, ctx)
        assert cand.rec is not None
        return self.favour.get(cand.rec.name, 0.0)


def ranked(state: ClusterState, limit: int, plugin: _Ranked | None = None) -> Placer:
    return Placer(state, PlaceOptions((((plugin or _Ranked()), 1.0),), limit=limit))


def nodes(*specs: tuple[str, int, str]) -> ClusterState:
    """Nodes of ``cpu`` millicores with a ``rank`` label."""
    return ClusterState([Node(name, {"cpu": cpu}, labels={"rank": rank})
                         for name, cpu, rank in specs])


def test_a_bulk_grant_puts_the_last_tasks_on_the_next_node_of_the_bucket() -> None:
    # The walk passes four small nodes (one task each, tightest first) to
    # reach the bucket of three 3-cpu nodes the plugin ranks highest: 8
    # tasks are two full nodes and two on the third, in that one pick.
    # Walked again for the last two, it would stop at the four small nodes.
    state = nodes(*[(f"s{i}", 1000, str(i + 1)) for i in range(4)],
                  *[(f"b{i}", 3000, "9") for i in range(3)])
    r = ranked(state, 4).place(job("g", {"cpu": 1000}, count=8))
    assert [(t.node, t.count) for t in r.tasks or ()] == [("b0", 3), ("b1", 3), ("b2", 2)]


def test_a_walk_counts_a_limited_buckets_other_nodes_as_all_their_tasks() -> None:
    # n0 may use 1 cpu (a backfill limit): the walk offers it alone and the
    # other four nodes of its bucket as one candidate, room for 1 + 4 * 4
    # tasks, enough for 4 with two candidates (the limit): it stops before
    # x, which the plugin would rank higher.
    state = nodes(*[(f"n{i}", 4000, "1") for i in range(5)], ("x", 8000, "9"))
    r = ranked(state, 2).place(job("g", {"cpu": 1000}, count=4), limits={"n0": {"cpu": 1000}})
    assert [(t.node, t.count) for t in r.tasks or ()] == [("n0", 1), ("x", 3)]


def test_a_single_node_candidate_counts_as_one_node_in_the_walk() -> None:
    # Single nodes (the plugin scores per node): n0 and n1 hold one task
    # each, two of the four the job asks for, so the walk goes on past its
    # limit of two candidates to x, which the plugin ranks higher.
    state = nodes(("n0", 1000, "1"), ("n1", 1000, "1"), ("x", 8000, "9"))
    r = ranked(state, 2, _PerNode()).place(job("g", {"cpu": 1000}, count=4))
    assert [(t.node, t.count) for t in r.tasks or ()] == [("x", 4)]


def test_a_bucket_offers_at_most_limit_single_nodes() -> None:
    # Six like nodes of two tasks each, offered one by one; the plugin
    # favours n4. The first walk offers n0..n3 only (four, the limit), so
    # n0 goes first and n4 comes in the second pick.
    state = nodes(*[(f"n{i}", 2000, "1") for i in range(6)])
    r = ranked(state, 4, _PerNode({"n4": 1.0})).place(job("g", {"cpu": 1000}, count=10))
    assert [(t.node, t.count) for t in r.tasks or ()] == [
        ("n0", 2), ("n4", 2), ("n1", 2), ("n2", 2), ("n3", 2)]


def gpu_node(name: str, cpu: int, gpus: int, rank: str) -> Node:
    devices = tuple(Device(f"{name}-gpu{k}") for k in range(gpus))
    return Node(name, {"cpu": cpu}, devices={"gpu": devices}, labels={"rank": rank})


def test_a_bucket_of_device_nodes_takes_its_tasks_node_by_node_in_one_pick() -> None:
    # Four one-gpu nodes come first in the walk, then the bucket b0, b1 of
    # two gpus each, which the plugin ranks highest: with a limit of one
    # candidate the walk goes on until it has room for all 5 tasks, and the
    # bucket takes 2 + 2 of them before the last goes to s0. Walked again
    # after b0 alone, the walk would stop at the small nodes.
    state = ClusterState([gpu_node(f"s{i}", 1000, 1, str(i + 1)) for i in range(4)]
                         + [gpu_node(f"b{i}", 8000, 2, "9") for i in range(2)])
    r = ranked(state, 1).place(job("g", {"cpu": 1000, "gpu": 1}, count=5))
    assert [(t.node, t.count) for t in r.tasks or ()] == [
        ("b0", 1), ("b0", 1), ("b1", 1), ("b1", 1), ("s0", 1)]


def test_a_limited_node_spends_its_limit_once_per_device_task() -> None:
    # n may use 2 cpu: the gang's first group takes 1 of it with a gpu,
    # the second group the other.
    state = ClusterState([gpu_node("n", 8000, 4, "1")])
    gang = Job("g", (TaskSpec({"cpu": 1000, "gpu": 1}, 1), TaskSpec({"cpu": 1000, "gpu": 1}, 1)),
               gang=True)
    r = ranked(state, 4).place(gang, limits={"n": {"cpu": 2000}})
    assert r.failure is None
    assert [(t.node, t.count) for t in r.tasks or ()] == [("n", 1), ("n", 1)]


def test_a_spreading_walk_passes_a_block_whose_tightened_classes_do_not_fit() -> None:
    # 35 buckets by free cpu make two index blocks; a0 (zone a, the only
    # node the job may use) tops the upper one until a task takes most of
    # its cpu and moves it to the lower block. The upper block's bounds
    # and class mask are stale then: walking down from the top, the walk
    # tightens them, finds only zone-b classes, and goes on to a0.
    state = ClusterState(
        [Node(f"b{i}", {"cpu": 1000 * (i + 1)}, labels={"zone": "b"}) for i in range(34)]
        + [Node("a0", {"cpu": 40000}, labels={"zone": "a"})])
    state.start(job("big", {"cpu": 39000}), [TaskPlacement("a0", {"cpu": 39000})], 0.0)
    index = state.index("cpu")
    assert index is not None and index.stale == [set(), {"cpu"}]
    r = Placer(state, strategy("spread").options).place(
        job("j", {"cpu": 500}, constraints=parse_constraints("zone=a")))
    assert [(t.node, t.count) for t in r.tasks or ()] == [("a0", 1)]


def test_a_candidate_whose_devices_give_no_task_fails_the_group_as_busy() -> None:
    # A running job restored with all four gpus of n for its two (start
    # checks only that the devices are free): n counts 2 gpus free but has
    # no free device. The walk offers it, the grant gets no device for
    # either task, and the group fails instead of walking again.
    state = ClusterState([gpu_node("n", 8000, 4, "1")])
    state.start(job("old", {"gpu": 2}), [TaskPlacement(
        "n", {"gpu": 2}, {"gpu": tuple(f"n-gpu{k}" for k in range(4))})], 0.0)
    assert (state.nodes["n"].free, state.nodes["n"].free_devices) == ((8000, 2), {"gpu": []})
    r = Placer(state, strategy("fifo").options).place(job("j", {"gpu": 1}, count=2))
    assert r.tasks is None and r.failure is not None
    assert (r.failure.code, r.failure.kind, r.failure.message, r.failure.reasons) == (
        Code.INSUFFICIENT, Kind.BUSY,
        "no room now for 2 more task(s): no ready node has all of 1 gpu free at once, "
        "with its constraints", ())
