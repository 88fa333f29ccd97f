"""Fragmentation: free capacity on ready nodes that no pending task can use."""

from __future__ import annotations

from apportion.core.model import Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskPlacement, TaskSpec, job
from apportion.core.scheduling.constraints import parse_constraints
from apportion.core.scheduling.fragmentation import FragmentationReport, fragmentation


def fleet() -> ClusterState:
    state = ClusterState([
        Node("a0", {"cpu": 8, "memory": 32}, labels={"zone": "z0"}),
        Node("a1", {"cpu": 8, "memory": 32}, labels={"zone": "z0"}),
        Node("a2", {"cpu": 8, "memory": 32}, labels={"zone": "z0"}),
        Node("b0", {"cpu": 16, "memory": 64, "gpu": 2}, labels={"zone": "z1"}),
        Node("off", {"cpu": 64, "memory": 256}, state=NodeState.DRAINING),
    ])
    # a0 and a1: 2 cpu and 4 memory left; a2: no cpu, 20 memory; b0: 1 gpu.
    for name in ("a0", "a1"):
        used = job(f"on-{name}", {"cpu": 6, "memory": 28})
        state.start(used, [TaskPlacement(name, {"cpu": 6, "memory": 28})], 0.0)
    full = job("cpu-full", {"cpu": 8, "memory": 12})
    state.start(full, [TaskPlacement("a2", {"cpu": 8, "memory": 12})], 0.0)
    g = job("one-gpu", {"cpu": 4, "memory": 16, "gpu": 1})
    state.start(g, [TaskPlacement("b0", {"cpu": 4, "memory": 16, "gpu": 1})], 0.0)
    return state


def test_nothing_pending_strands_nothing() -> None:
    report = fragmentation(fleet(), [])
    assert report == FragmentationReport(
        {"cpu": 16, "memory": 76, "gpu": 1}, {}, 0,
        {"cpu": 12, "memory": 48, "gpu": 1}, 0,
    )
    assert report.share("cpu") == 0.0


def test_free_capacity_no_pending_task_fits_is_stranded_per_node() -> None:
    state = fleet()
    # Needs 2 cpu and 5 memory: a0/a1 have 4 memory, a2 no cpu; b0 fits.
    report = fragmentation(state, [job("p", {"cpu": 2, "memory": 5})])
    assert report.stranded == {"cpu": 4, "memory": 28}
    assert report.stranded_nodes == 3
    assert report.free == {"cpu": 16, "memory": 76, "gpu": 1}
    assert report.largest_free == {"cpu": 12, "memory": 48, "gpu": 1}
    assert report.pending_shapes == 1
    assert report.share("cpu") == 0.25
    assert report.share("memory") == 28 / 76
    assert report.share("gpu") == 0.0
    assert report.share("fpga") == 0.0


def test_an_exact_fit_makes_a_node_usable() -> None:
    report = fragmentation(fleet(), [job("p", {"cpu": 2, "memory": 4})])
    # a0 and a1 fit exactly; a2 (no cpu) is stranded, b0 fits.
    assert report.stranded == {"memory": 20}
    assert report.stranded_nodes == 1


def test_any_task_group_of_any_pending_job_makes_a_node_usable() -> None:
    state = fleet()
    two = Job("two", (TaskSpec({"gpu": 2}), TaskSpec({"memory": 20})))
    report = fragmentation(state, [job("big", {"cpu": 20}), two])
    # The second group of "two" fits a2 (20 memory) and b0; a0 and a1 fit nothing.
    assert report.stranded == {"cpu": 4, "memory": 8}
    assert report.stranded_nodes == 2
    assert report.pending_shapes == 3


def test_jobs_of_one_shape_count_once() -> None:
    jobs = [job(f"p{i}", {"cpu": 2, "memory": 5}) for i in range(4)]
    report = fragmentation(fleet(), jobs)
    assert report.pending_shapes == 1
    assert report.stranded == {"cpu": 4, "memory": 28}


def test_constraints_strand_the_nodes_a_job_may_not_use() -> None:
    state = fleet()
    report = fragmentation(state, [job("z1", {"cpu": 1}, constraints=parse_constraints(
        "zone=z1"))])
    assert report.stranded == {"cpu": 4, "memory": 28}
    assert report.stranded_nodes == 3


def test_a_node_with_nothing_free_is_not_stranded() -> None:
    state = ClusterState([Node("n0", {"cpu": 4}), Node("n1", {"cpu": 4})])
    used = job("u", {"cpu": 4})
    state.start(used, [TaskPlacement("n0", {"cpu": 4})], 0.0)
    report = fragmentation(state, [job("p", {"cpu": 8})])
    assert report.stranded == {"cpu": 4}
    assert report.stranded_nodes == 1
    assert report.free == {"cpu": 4}
    assert report.largest_free == {"cpu": 4}


def test_every_bucket_is_looked_at_whatever_comes_before_it() -> None:
    state = ClusterState([Node("n0", {"cpu": 4}), Node("n1", {"cpu": 4}), Node("n2", {"cpu": 4})])
    state.start(job("full", {"cpu": 4}), [TaskPlacement("n0", {"cpu": 4})], 0.0)
    state.start(job("half", {"cpu": 2}), [TaskPlacement("n1", {"cpu": 2})], 0.0)
    # Buckets in the order they were made: n2 (usable), n0 (nothing free), n1.
    assert [b.nodes for b in state.buckets()] == [["n2"], ["n0"], ["n1"]]
    report = fragmentation(state, [job("p", {"cpu": 3})])
    assert report.stranded == {"cpu": 2}
    assert report.stranded_nodes == 1
