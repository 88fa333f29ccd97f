"""ClusterState's bookkeeping, recounted from scratch after each step: free
vectors, buckets, totals, the free index, running jobs, usage, expected ends,
what jobs past their estimate hold, the undo log and the change counter."""

from __future__ import annotations

import math

import pytest

from apportion.core.errors import InsufficientResources, InvalidInput, NodeExists
from apportion.core.model import Device, Health, Node, NodeState
from apportion.core.reasons import Code, Kind
from apportion.core.resources import MAX_QUANTITY
from apportion.core.scheduling import (
    ClusterState,
    Job,
    SchedulerConfig,
    TaskPlacement,
    TaskSpec,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.jobs import RunningJob
from apportion.core.scheduling.state import COMMIT
from sched_support import past_recounted


def recount(state: ClusterState) -> None:
    """Every incremental figure of ``state`` equals its recount."""
    held: dict[str, list[int]] = {n: [0] * len(r.cls.resources) for n, r in state.nodes.items()}
    jobs: dict[str, dict[str, int]] = {n: {} for n in state.nodes}
    usage: dict[str, dict[str, int]] = {}
    prio: dict[int, int] = {}
    for job_id, rj in state.running.items():
        assert rj.job.id == job_id
        for tp in rj.tasks:
            rec = state.nodes[tp.node]
            for r, q in tp.resources.items():
                held[tp.node][rec.cls.pos[r]] += q * tp.count
            jobs[tp.node][job_id] = jobs[tp.node].get(job_id, 0) + tp.count
        used = usage.setdefault(rj.job.queue, {})
        for r, q in rj.job.total.items():
            used[r] = used.get(r, 0) + q
        if rj.job.preemptible:
            prio[rj.job.priority] = prio.get(rj.job.priority, 0) + 1
    ft: dict[str, int] = {}
    ct: dict[str, int] = {}
    fs: dict[int, list[int]] = {c.id: [0] * len(c.resources) for c in state.classes}
    for name, rec in state.nodes.items():
        assert rec.free == tuple(c - h for c, h in zip(rec.cls.capacity, held[name], strict=True))
        assert rec.jobs == jobs[name]
        if not rec.cls.schedulable:
            assert rec.bucket is None
            continue
        bucket = rec.bucket
        assert bucket is not None and bucket.cls is rec.cls and bucket.free == rec.free
        assert name in bucket.nodes
        for i, (r, c, f) in enumerate(zip(rec.cls.resources, rec.cls.capacity, rec.free,
                                          strict=True)):
            ft[r] = ft.get(r, 0) + f
            ct[r] = ct.get(r, 0) + c
            fs[rec.cls.id][i] += f
    buckets = list(state.buckets())
    assert len({(b.cls.id, b.free) for b in buckets}) == len(buckets)
    for b in buckets:
        assert b.nodes and b.nodes == sorted(b.nodes)
        assert all(state.nodes[n].bucket is b for n in b.nodes)
        assert state.bucket(b.id) is b
    assert sorted(n for b in buckets for n in b.nodes) == sorted(
        n for n, r in state.nodes.items() if r.cls.schedulable)
    assert {r: v for r, v in state.free_total().items() if v or r in ft} == ft
    assert {r: v for r, v in state.capacity_total().items() if v or r in ct} == ct
    assert {c.id: c.free_sum for c in state.classes} == fs
    for r in {r for c in state.classes for r in c.resources}:
        index = state.index(r)
        want = sorted((b.free[b.cls.pos[r]], b.cls.id, b.free, b.id)
                      for b in buckets if r in b.cls.pos)
        assert (list(index) if index is not None else []) == want
        if index is not None:
            assert len(index) == len(want)
    assert list(state.ends) == sorted(
        (rj.start + rj.estimate, j) for j, rj in state.running.items()
        if rj.estimate is not None)
    for queue in set(usage) | set(state.queues_in_use()):
        assert {r: q for r, q in state.usage(queue).items() if q} == {
            r: q for r, q in usage.get(queue, {}).items() if q}
    assert state.lowest_preemptible_priority() == min(prio, default=None)


def gpu_node(name: str, n: int = 4) -> Node:
    return Node(name, {"cpu": 16, "memory": 64},
                devices={"gpu": tuple(Device(f"{name}-g{i}", "H100") for i in range(n))})


def fleet() -> ClusterState:
    return ClusterState([
        *(Node(f"n{i}", {"cpu": 8, "memory": 32}) for i in range(12)),
        gpu_node("g0"), gpu_node("g1"),
        Node("d0", {"cpu": 8, "memory": 32}, state=NodeState.DRAINING),
    ])


def tp(node: str, count: int = 1, **res: int) -> TaskPlacement:
    return TaskPlacement(node, res, count=count)


def test_a_fresh_state_counts_its_nodes_and_changes_nothing() -> None:
    state = fleet()
    recount(state)
    assert state.changes == 0
    assert state.free_total() == {"cpu": 128, "memory": 512, "gpu": 8}
    assert state.capacity_total() == {"cpu": 128, "memory": 512, "gpu": 8}
    assert sorted(len(b.nodes) for b in state.buckets()) == [2, 12]
    assert sorted(c.size for c in state.classes) == [1, 2, 12]
    assert state.lowest_preemptible_priority() is None
    assert state.usage("default") == {}
    assert list(state.queues_in_use()) == []
    assert list(state.ends) == []
    assert state.past_estimate(0.0) == {}


def test_start_and_finish_keep_every_figure_and_count_two_changes_each() -> None:
    state = fleet()
    a = job("a", {"cpu": 2, "memory": 4}, count=3, queue="q1", priority=5, preemptible=True)
    state.start(a, [tp("n0", 2, cpu=2, memory=4), tp("n1", cpu=2, memory=4)], 10.0, 50.0)
    assert state.changes == 3  # two grants and the running job
    recount(state)
    assert state.free("n0") == {"cpu": 4, "memory": 24}
    assert state.free("n1") == {"cpu": 6, "memory": 28}
    assert state.nodes["n0"].jobs == {"a": 2}
    assert state.usage("q1") == {"cpu": 6, "memory": 12}
    assert list(state.queues_in_use()) == ["q1"]
    assert list(state.ends) == [(60.0, "a")]
    assert state.lowest_preemptible_priority() == 5
    assert state.running["a"].tasks == (tp("n0", 2, cpu=2, memory=4), tp("n1", cpu=2, memory=4))
    b = job("b", {"cpu": 1}, priority=2, preemptible=True)
    state.start(b, [tp("n0", cpu=1)], 0.0)
    assert state.lowest_preemptible_priority() == 2
    assert state.changes == 5
    rj = state.finish("a")
    assert rj.job is a and rj.start == 10.0 and rj.estimate == 50.0
    recount(state)
    assert state.changes == 8
    assert state.free("n0") == {"cpu": 7, "memory": 32}
    assert state.nodes["n0"].jobs == {"b": 1}
    assert state.usage("q1") == {"cpu": 0, "memory": 0}
    assert list(state.ends) == []
    assert state.lowest_preemptible_priority() == 2
    state.finish("b")
    assert state.lowest_preemptible_priority() is None
    recount(state)


def test_start_refuses_a_running_job_a_short_node_and_taken_devices() -> None:
    state = fleet()
    a = job("a", {"cpu": 4})
    state.start(a, [tp("n0", cpu=4)], 0.0)
    with pytest.raises(InvalidInput) as err:
        state.start(a, [tp("n1", cpu=4)], 0.0)
    assert (err.value.message, err.value.data) == ("job a is already running", {"field": "job"})
    big = job("big", {"cpu": 3}, count=4)
    changes = state.changes
    with pytest.raises(InsufficientResources) as short:
        state.start(big, [tp("n1", 2, cpu=3), tp("n0", 2, cpu=3)], 0.0)
    (reason,) = short.value.failure.reasons
    assert (reason.plugin, reason.code, reason.kind, reason.message, reason.node) == (
        COMMIT, Code.CAPACITY, Kind.BUSY, "cannot hold job big", "n0")
    assert COMMIT == "Commit"
    assert short.value.to_dict()["nodes_considered"] == 1
    assert state.free("n1") == {"cpu": 8, "memory": 32}  # the grant on n1 undone
    assert "big" not in state.running
    assert state.changes == changes + 2  # the grant and its undoing
    recount(state)
    # A node that lacks a requested resource cannot hold it either.
    with pytest.raises(InsufficientResources):
        state.start(job("g", {"gpu": 1}), [tp("n2", gpu=1)], 0.0)
    # Exactly what is free fits.
    state.start(job("fill", {"cpu": 4, "memory": 32}), [tp("n0", cpu=4, memory=32)], 0.0)
    assert state.free("n0") == {"cpu": 0, "memory": 0}
    recount(state)


def test_devices_are_taken_and_given_back_in_the_nodes_order() -> None:
    state = fleet()
    g = job("g", {"cpu": 1, "gpu": 2})
    held = TaskPlacement("g0", {"cpu": 1, "gpu": 2}, {"gpu": ("g0-g2", "g0-g0")})
    state.start(g, [held], 0.0)
    rec = state.nodes["g0"]
    assert rec.free_devices == {"gpu": ["g0-g1", "g0-g3"]}
    assert state.free("g0") == {"cpu": 15, "gpu": 2, "memory": 64}
    h = job("h", {"gpu": 1})
    with pytest.raises(InsufficientResources) as err:
        state.start(h, [TaskPlacement("g0", {"gpu": 1}, {"gpu": ("g0-g0",)})], 0.0)
    (reason,) = err.value.failure.reasons
    assert (reason.plugin, reason.code, reason.kind, reason.message, reason.node) == (
        COMMIT, Code.DEVICE, Kind.BUSY, "devices g0-g0 are not free", "g0")
    two = job("two", {"gpu": 1}, count=2)
    with pytest.raises(InsufficientResources) as err:
        state.start(two, [TaskPlacement("g0", {"gpu": 1}, {"gpu": ("g0-g1",)}),
                          TaskPlacement("g1", {"gpu": 1}, {"gpu": ("g1-g0", "g0-g2")})], 0.0)
    assert err.value.failure.reasons[0].message == "devices g1-g0, g0-g2 are not free"
    assert rec.free_devices == {"gpu": ["g0-g1", "g0-g3"]}  # the first task undone
    state.finish("g")
    assert rec.free_devices == {"gpu": ["g0-g0", "g0-g1", "g0-g2", "g0-g3"]}
    recount(state)


def test_finish_of_a_job_not_running_says_so() -> None:
    state = fleet()
    with pytest.raises(InvalidInput) as err:
        state.finish("nope")
    assert (err.value.message, err.value.data) == ("job nope is not running", {"field": "job"})


def test_a_gang_over_many_alike_nodes_is_released_in_one_move() -> None:
    state = fleet()
    gang = job("gang", {"cpu": 2, "memory": 8}, count=10)
    res = gang.tasks[0].resources  # one request shared by the tasks, as placements do
    state.start(gang, [TaskPlacement(f"n{i}", res) for i in range(10)], 0.0)
    assert state.changes == 11
    assert sorted(len(b.nodes) for b in state.buckets()) == [2, 2, 10]
    recount(state)
    state.finish("gang")
    assert state.changes == 13  # one bulk release and the running job
    assert sorted(len(b.nodes) for b in state.buckets()) == [2, 12]
    recount(state)


@pytest.mark.parametrize("n", [2, 8, 9, 11])
def test_a_bulk_release_of_some_nodes_of_a_bucket_leaves_the_rest(n: int) -> None:
    state = fleet()
    other = job("other", {"cpu": 2, "memory": 8}, count=12 - n)
    a = job("a", {"cpu": 2, "memory": 8}, count=n)
    state.start(other, [tp(f"n{i}", cpu=2, memory=8) for i in range(n, 12)], 0.0)
    res = a.tasks[0].resources
    state.start(a, [TaskPlacement(f"n{i}", res) for i in range(n)], 0.0)
    assert sorted(len(b.nodes) for b in state.buckets()) == [2, 12]
    changes = state.changes
    state.finish("a")
    assert state.changes == changes + 2  # one bulk release and the running job
    assert sorted(len(b.nodes) for b in state.buckets()) == sorted([2, 12 - n, n])
    bucket = state.nodes["n0"].bucket
    assert bucket is not None
    assert bucket.nodes == sorted(f"n{i}" for i in range(n))
    recount(state)


def test_tasks_of_one_job_twice_on_a_node_are_released_one_by_one() -> None:
    state = fleet()
    two = Job("two", (TaskSpec({"cpu": 1}, 2), TaskSpec({"memory": 4}, 2)), gang=True)
    cpu, mem = two.tasks[0].resources, two.tasks[1].resources
    state.start(two, [TaskPlacement("n0", cpu), TaskPlacement("n1", cpu),
                      TaskPlacement("n0", mem), TaskPlacement("n1", mem)], 0.0)
    assert state.nodes["n0"].jobs == {"two": 2}
    recount(state)
    state.finish("two")
    assert state.free("n0") == {"cpu": 8, "memory": 32}
    recount(state)


def test_a_bulk_release_with_a_count_per_node() -> None:
    state = fleet()
    a = job("a", {"cpu": 1, "memory": 2}, count=6)
    res = a.tasks[0].resources
    state.start(a, [TaskPlacement("n0", res, count=3), TaskPlacement("n1", res, count=3)], 0.0)
    assert state.free("n0") == {"cpu": 5, "memory": 26}
    state.finish("a")
    assert state.free("n1") == {"cpu": 8, "memory": 32}
    recount(state)


def test_bulk_grants_and_releases_on_each_node() -> None:
    state = fleet()
    recs = [state.nodes[f"n{i}"] for i in range(4)]
    state.bulk(recs, (1, 4), 2, "x", 1)
    assert state.changes == 1
    assert [r.free for r in recs] == [(6, 24)] * 4
    assert [r.jobs for r in recs] == [{"x": 2}] * 4
    assert state.free_total()["cpu"] == 120
    state.bulk(recs[:1], (1, 4), 1, "x", 1)
    assert recs[0].free == (5, 20) and recs[0].jobs == {"x": 3}
    state.bulk(recs[:1], (1, 4), 1, "x", -1)
    state.bulk(recs, (1, 4), 2, "x", -1)
    assert [r.free for r in recs] == [(8, 32)] * 4
    assert [r.jobs for r in recs] == [{}] * 4
    assert state.changes == 4
    assert state.free_total() == {"cpu": 128, "memory": 512, "gpu": 8}
    assert sorted(len(b.nodes) for b in state.buckets()) == [2, 12]


def test_nodes_come_and_go() -> None:
    state = fleet()
    with pytest.raises(NodeExists) as err:
        state.add_node(Node("n0", {"cpu": 1}))
    assert (err.value.message, err.value.data) == ("node n0 already exists", {"node": "n0"})
    a = job("a", {"cpu": 2}, count=2)
    state.start(a, [tp("n0", cpu=2), tp("n1", cpu=2)], 0.0, 30.0)
    state.start(job("b", {"cpu": 2}), [tp("n1", cpu=2)], 0.0)
    state.cache["x"] = 1
    lost = state.remove_node("n1")
    assert [rj.job.id for rj in lost] == ["a", "b"]
    assert "x" not in state.cache
    assert "n1" not in state.nodes
    assert state.free("n0") == {"cpu": 8, "memory": 32}
    assert sorted(c.size for c in state.classes) == [1, 2, 11]
    assert state.free_total() == {"cpu": 120, "memory": 480, "gpu": 8}
    recount(state)
    state.remove_node("d0")
    assert sorted(c.size for c in state.classes) == [0, 2, 11]
    assert state.free_total() == {"cpu": 120, "memory": 480, "gpu": 8}
    state.add_node(Node("d0", {"cpu": 8, "memory": 32}, state=NodeState.DRAINING))
    state.add_node(Node("n1", {"cpu": 8, "memory": 32}))
    assert sorted(c.size for c in state.classes) == [1, 2, 12]
    recount(state)


def test_update_node_moves_jobs_over_and_returns_those_that_no_longer_fit() -> None:
    state = fleet()
    state.start(job("a", {"cpu": 4}), [tp("n0", cpu=4)], 0.0, 100.0)
    state.start(job("b", {"cpu": 3}), [tp("n0", cpu=3)], 1.0)
    state.start(job("c", {"memory": 4}), [tp("n2", memory=4)], 0.0)
    state.cache["x"] = 1
    lost = state.update_node(Node("n0", {"cpu": 5, "memory": 32}, labels={"k": "v"}))
    assert [rj.job.id for rj in lost] == ["b"]
    assert "x" not in state.cache
    assert sorted(state.running) == ["a", "c"]
    assert state.running["a"].start == 0.0 and state.running["a"].estimate == 100.0
    assert state.free("n0") == {"cpu": 1, "memory": 32}
    assert sorted(c.size for c in state.classes) == [1, 1, 2, 11]
    recount(state)
    # A node that goes down keeps its jobs, out of every total.
    assert state.update_node(Node("n2", {"cpu": 8, "memory": 32},
                                  health=Health.UNHEALTHY)) == []
    assert state.free_total() == {"cpu": 113, "memory": 480, "gpu": 8}
    recount(state)
    # Its jobs end there as anywhere (the node sits in no bucket).
    state.finish("c")
    assert state.free("n2") == {"cpu": 8, "memory": 32}
    assert state.free_total() == {"cpu": 113, "memory": 480, "gpu": 8}
    recount(state)
    # A job on a node that loses a resource it holds is lost.
    state.start(job("g", {"gpu": 1}), [TaskPlacement("g0", {"gpu": 1}, {"gpu": ("g0-g1",)})],
                0.0)
    lost = state.update_node(Node("g0", {"cpu": 16, "memory": 64}))
    assert [rj.job.id for rj in lost] == ["g"]
    recount(state)


def test_what_jobs_past_their_estimate_hold_moves_with_now() -> None:
    state = fleet()
    state.start(job("a", {"cpu": 2}, count=2), [tp("n0", 2, cpu=2)], 0.0, 50.0)
    state.start(job("b", {"memory": 4}), [tp("n0", memory=4)], 10.0, 50.0)
    state.start(job("c", {"cpu": 1}), [tp("n1", cpu=1)], 0.0)  # no estimate
    assert state.past_estimate(49.5) == {}
    assert state.past_estimate(50.0) == {"n0": {"cpu": 4}}  # an end at now counts
    assert state.past_estimate(50.0) == {"n0": {"cpu": 4}}  # and only once
    assert state.past_estimate(60.0) == {"n0": {"cpu": 4, "memory": 4}}
    assert state.past_estimate(59.0) == {"n0": {"cpu": 4}}  # earlier: starts over
    assert state.past_estimate(-math.inf) == {}
    assert state.past_estimate(60.0) == past_recounted(state, 60.0)
    # Jobs that start already past, and jobs that end, are kept up to date.
    state.start(job("d", {"cpu": 1}), [tp("n2", cpu=1)], 0.0, 60.0)
    state.start(job("e", {"cpu": 1}), [tp("n2", cpu=1)], 0.0, 61.0)
    assert state.past_estimate(60.0) == {"n0": {"cpu": 4, "memory": 4}, "n2": {"cpu": 1}}
    state.finish("a")
    assert state.past_estimate(60.0) == {"n0": {"cpu": 0, "memory": 4}, "n2": {"cpu": 1}}
    state.finish("b")
    state.finish("d")
    assert state.past_estimate(60.0) == {}
    assert state.past_estimate(61.0) == {"n2": {"cpu": 1}}
    state.reestimate("e", 100.0)
    assert state.past_estimate(61.0) == {}
    assert list(state.ends) == [(100.0, "e")]
    recount(state)


def test_add_running_registers_a_job_whose_grants_were_made() -> None:
    state = fleet()
    a = job("a", {"cpu": 2}, preemptible=True, priority=3)
    rec = state.nodes["n0"]
    state.grant(rec, state.align(rec.cls, {"cpu": 2}) or (), 1, "a")
    state.add_running(RunningJob(a, 5.0, (tp("n0", cpu=2),), 10.0))
    assert state.changes == 2
    assert list(state.ends) == [(15.0, "a")]
    assert state.lowest_preemptible_priority() == 3
    recount(state)


def test_devices_a_node_does_not_have_are_refused_as_not_free() -> None:
    state = fleet()
    j = job("j", {"cpu": 1})
    with pytest.raises(InsufficientResources) as err:
        state.start(j, [TaskPlacement("n0", {"cpu": 1}, {"gpu": ("g0-g0",)})], 0.0)
    (reason,) = err.value.failure.reasons
    assert (reason.code, reason.message, reason.node) == (
        Code.DEVICE, "devices g0-g0 are not free", "n0")
    assert err.value.to_dict()["nodes_considered"] == 1
    with pytest.raises(InsufficientResources) as err:
        state.start(j, [TaskPlacement("g0", {"gpu": 1}, {"gpu": ("zz",)})], 0.0)
    assert err.value.to_dict()["nodes_considered"] == 1
    assert state.free("n0") == {"cpu": 8, "memory": 32}
    recount(state)


def test_two_groups_on_one_node_with_one_request_are_released_one_by_one() -> None:
    # The two placements share the node and the very request object: grouped
    # into one bulk move, the node would leave its bucket twice.
    state = ClusterState([Node("n", {"cpu": 8000}), Node("m", {"cpu": 8000})])
    r = {"cpu": 1000}
    pair = Job("pair", (TaskSpec(r, 1), TaskSpec(r, 1)), gang=True)
    state.start(pair, [TaskPlacement("n", r), TaskPlacement("n", r)], 0.0)
    assert state.nodes["n"].free == (6000,)
    state.finish("pair")
    assert state.nodes["n"].free == (8000,)
    assert state.nodes["n"].bucket is state.nodes["m"].bucket
    assert state.nodes["n"].bucket is not None and state.nodes["n"].bucket.nodes == ["m", "n"]


def test_a_task_may_hold_every_free_device_and_they_come_back_in_the_node_order() -> None:
    gpus = [Device("z"), Device("a"), Device("m")]
    state = ClusterState([Node("g", {"cpu": 8000, "gpu": 3}, devices={"gpu": gpus})])
    rec = state.nodes["g"]
    state.start(job("all", {"gpu": 3}), [TaskPlacement("g", {"gpu": 3}, {"gpu": ("a", "m", "z")})],
                0.0)
    assert rec.free_devices["gpu"] == []
    state.finish("all")
    assert rec.free_devices["gpu"] == ["z", "a", "m"]


def test_amounts_at_the_api_limit_are_placed_and_summed_past_64_bits() -> None:
    # The API takes a quantity up to MAX_QUANTITY (2^63-1, resources.py) and
    # refuses more, naming the field and the limit (test_api_errors); the
    # compiled index reads a node's amounts as C long long, and the totals
    # over nodes (past 2^63 here) stay Python ints, in both modes.
    nodes = [Node(f"n{k}", {"cpu": 8000, "memory": MAX_QUANTITY - k}) for k in range(3)]
    state = ClusterState(nodes)
    assert state.free_totals["memory"] == 3 * MAX_QUANTITY - 3
    jobs = [job("big", {"cpu": 1000, "memory": MAX_QUANTITY - 1}),
            job("two", {"cpu": 1000, "memory": 2**62}, count=2),
            job("one", {"cpu": 1000, "memory": 1})]
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(strategy="binpack"))
    placed = {p.job_id: sorted(t.node for t in p.tasks) for p in r.placements}
    assert placed == {"big": ["n1"], "two": ["n0", "n2"], "one": ["n2"]}  # the tightest fits
    assert state.free_totals["memory"] == 3 * MAX_QUANTITY - 3 - (MAX_QUANTITY - 1) - 2**63 - 1
    recount(state)
    for j in ("big", "two", "one"):
        state.finish(j)
    assert state.free_totals["memory"] == 3 * MAX_QUANTITY - 3
    recount(state)


def test_replace_running_changes_the_record_and_keeps_the_grants() -> None:
    """A running job's record replaced on the same tasks: its start, estimate
    and job value (here: no longer preemptible) change, what it holds does
    not; the state equals one where it was finished and started so."""
    state, other = fleet(), fleet()
    a = job("a", {"cpu": 2}, preemptible=True, priority=3)
    for s in (state, other):
        s.start(a, [tp("n0", cpu=2)], 0.0, 50.0)
        s.start(job("b", {"cpu": 1}), [tp("n1", cpu=1)], 0.0, 80.0)
        s.past_estimate(60.0)
        s.past_ids(60.0)
    free, changes = state.nodes["n0"].free, state.changes
    kept = Job("a", a.tasks, priority=3, preemptible=False)
    new = RunningJob(kept, 5.0, (tp("n0", cpu=2),), 70.0)
    state.replace_running(new)
    assert state.running["a"] is new
    assert state.nodes["n0"].free == free and state.changes > changes
    assert state.lowest_preemptible_priority() is None
    assert list(state.ends) == [(75.0, "a"), (80.0, "b")]
    assert state.past_estimate(60.0) == {} and list(state.past_ids(60.0)) == []
    other.finish("a")
    other.start(kept, new.tasks, 5.0, 70.0)
    assert dict(state.running) == dict(other.running)
    assert state.past_estimate(76.0) == other.past_estimate(76.0) == {"n0": {"cpu": 2}}
    recount(state)
