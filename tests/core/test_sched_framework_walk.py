"""The placement pipeline (``core/scheduling/framework.py``), continued:
what a gang's context records of the tasks placed so far, and the walk and
grant paths that only a gang over several buckets or nodes reaches (found
by mutation testing, see docs/testing.md)."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    Job,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions


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
