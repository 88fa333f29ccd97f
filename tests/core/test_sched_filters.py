"""Filter plugins, their reasons, and explain."""

from __future__ import annotations

from apportion.core.labels import parse_selector
from apportion.core.model import Node, NodeState
from apportion.core.scheduling import (
    Affinity,
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    explain,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.constraints import DeviceRequirement

GI = 2**30


def cluster() -> ClusterState:
    return ClusterState([
        Node("a1", {"cpu": 8000, "memory": 32 * GI}, labels={"facility": "texas-1"}),
        Node("a2", {"cpu": 8000, "memory": 32 * GI}, labels={"facility": "texas-1"}),
        Node("b1", {"cpu": 16000, "memory": 64 * GI}, labels={"facility": "oslo"}),
        Node("d1", {"cpu": 16000, "memory": 64 * GI}, labels={"facility": "oslo"},
             state=NodeState.DRAINING),
    ])


def test_parse_constraints_splits_label_and_device_terms() -> None:
    c = parse_constraints("facility=texas-1, gpu.model in (A100,H100), gpu.memory>=40Gi, !spot")
    assert [str(r) for r in c.labels] == ["facility=texas-1", "!spot"]
    assert c.devices == (
        DeviceRequirement("gpu", "model", "in", ("A100", "H100")),
        DeviceRequirement("gpu", "memory", ">=", ("40Gi",)),
    )


def test_label_constraint_keeps_matching_nodes_only() -> None:
    state = cluster()
    j = job("j", {"cpu": 1000}, constraints=parse_constraints("facility=oslo"))
    r = schedule_cycle(state, [j], 0.0, SchedulerConfig())
    assert r.placements[0].tasks[0].node == "b1"


def test_explain_counts_nodes_by_first_reason() -> None:
    state = cluster()
    j = job("j", {"cpu": 12000}, constraints=parse_constraints("facility in (texas-1,oslo)"))
    e = explain(state, j)
    assert e.status == "fits"
    assert e.counts == {"capacity cpu": 2, "not_ready": 1}
    big = job("big", {"cpu": 20000})
    e = explain(state, big)
    assert e.status == "never"
    assert e.counts == {"capacity cpu": 3, "not_ready": 1}
    assert "needs 20 cpu; largest free on any ready node: 16" in e.hints


def test_explain_tells_busy_from_never_and_when_it_would_fit() -> None:
    state = cluster()
    hog = job("hog", {"cpu": 16000})
    state.start(hog, [TaskPlacement("b1", {"cpu": 16000})], 0.0, 100.0)
    j = job("j", {"cpu": 10000})
    e = explain(state, j, now=10.0)
    assert e.status == "busy"
    assert e.counts == {"capacity cpu": 2, "insufficient cpu": 1, "not_ready": 1}
    assert e.earliest_start == 100.0
    assert e.hints == (
        "needs 10 cpu; largest free on any ready node: 8",
        "expected to fit at 100 as running jobs end",
    )
    assert e.summary().startswith("0/4 nodes available: 2 capacity cpu, 1 insufficient cpu")


def test_explain_detail_lists_a_reason_per_rejected_node() -> None:
    state = cluster()
    j = job("j", {"cpu": 1000}, constraints=parse_constraints("facility=oslo"))
    e = explain(state, j, detail=True)
    assert {n: r.code.value for n, r in e.per_node.items()} == {
        "a1": "label", "a2": "label", "d1": "not_ready"}
    assert e.per_node["a1"].message == "label mismatch: facility=oslo"


def test_required_anti_affinity_to_jobs_keeps_them_apart() -> None:
    state = cluster()
    sel = parse_selector("name=db")
    jobs = [job(f"db{i}", {"cpu": 1000}, name="db",
                anti_affinity=(Affinity(sel, target="job", required=True),))
            for i in range(4)]
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig())
    assert sorted(p.tasks[0].node for p in r.placements) == ["a1", "a2", "b1"]
    assert r.unplaced["db3"].code.value == "insufficient"


def test_preferred_node_affinity_wins_over_bin_packing() -> None:
    state = cluster()
    j = job("j", {"cpu": 1000},
            affinity=(Affinity(parse_selector("facility=oslo"), weight=5),))
    r = schedule_cycle(state, [j], 0.0, SchedulerConfig(strategy="affinity"))
    assert r.placements[0].tasks[0].node == "b1"


def test_node_filters_fit_agrees_with_their_reasons() -> None:
    # The walk asks ``fit`` and explain asks ``check_node``: one task fits
    # exactly when no reason is given, so the two can never tell apart.
    from apportion.core.model import Device
    from apportion.core.scheduling.filters import NODE_FILTERS, JobAffinity, NodeReady

    gpus = tuple(Device(f"g{k}", "H100" if k % 2 else "A100", 80 * GI) for k in range(4))
    state = ClusterState([
        Node("g1", {"cpu": 8000, "memory": 32 * GI}, devices={"gpu": gpus}),
        Node("c1", {"cpu": 2000, "memory": 4 * GI}),
    ])
    state.start(job("run", {"cpu": 1000}, name="db", labels={"app": "db"}),
                [TaskPlacement("c1", {"cpu": 1000}, {}, 1)], 0.0)
    jobs = [
        job("a", {"cpu": 1000, "gpu": 1}, constraints=parse_constraints("gpu.model=H100")),
        job("b", {"cpu": 1000, "gpu": 3}, constraints=parse_constraints("gpu.model=H100")),
        job("c", {"cpu": 4000}),
        job("d", {"cpu": 500}, anti_affinity=(
            Affinity(parse_selector("app=db"), target="job", required=True),)),
        job("e", {"cpu": 500}, affinity=(
            Affinity(parse_selector("app=db"), target="job", required=True),)),
    ]
    for j in jobs:
        spec = j.tasks[0]
        for rec in state.nodes.values():
            if any(r not in rec.cls.pos for r in spec.resources):
                continue
            for plugin in NODE_FILTERS:
                if not plugin.needed(j):
                    continue
                reason = plugin.check_node(j, spec, rec, rec.free, state)
                fit = plugin.fit(j, spec, rec, rec.free, state, 1)
                assert (fit == 0) == (reason is not None), (j.id, rec.name, plugin.name)
    # A plugin implements only the levels it speaks at: no stubs.
    assert not hasattr(JobAffinity(), "check_class")
    assert not hasattr(NodeReady(), "check_node")
