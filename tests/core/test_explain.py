"""explain and validate_job (core/scheduling/explain.py), with literal values:
each status, the order of the counts, each piece of advice at its edge, and
each refusal at submission with its field and reasons."""

from __future__ import annotations

import pytest

from apportion.core.labels import parse_selector
from apportion.core.model import Node, NodeState
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.scheduling import (
    Affinity,
    ClusterState,
    JobRejected,
    Queue,
    TaskPlacement,
    TaskSpec,
    explain,
    job,
    parse_constraints,
    validate_job,
)
from apportion.core.scheduling.explain import Explanation
from apportion.core.scheduling.jobs import Job

GI = 2**30
P = 1000
CAP = "ResourcesFit"


def cluster() -> ClusterState:
    """A cordoned big node first (so counts are not in node order), two
    8-cpu nodes (one class of two) and a small labelled GPU node."""
    return ClusterState([
        Node("d0", {"cpu": 16 * P, "memory": 8 * GI}, state=NodeState.CORDONED),
        Node("a1", {"cpu": 8 * P, "memory": 8 * GI}),
        Node("a2", {"cpu": 8 * P, "memory": 8 * GI}),
        Node("g1", {"cpu": 4 * P, "memory": 4 * GI, "gpu": 2}, labels={"zone": "x"}),
    ])


def busy_cluster(estimate: float | None = 50.0) -> ClusterState:
    """``cluster()`` with 6 cpu taken on a1 (queue a, ends at ``estimate``) and
    on a2 (queue b, no estimate)."""
    state = cluster()
    state.start(job("r", {"cpu": 6 * P}, queue="a"), [TaskPlacement("a1", {"cpu": 6 * P})],
                0.0, estimate)
    state.start(job("r2", {"cpu": 6 * P}, queue="b"), [TaskPlacement("a2", {"cpu": 6 * P})], 0.0)
    return state


def cap(have: int, need: int) -> Reason:
    return Reason(CAP, Code.CAPACITY, Kind.NEVER,
                  f"cpu: node capacity {have} < {need} requested", "cpu", need * P, have * P)


CORDONED = Reason("NodeReady", Code.NOT_READY, Kind.CONDITION, "node is cordoned")


# -- explain --


def test_explain_checks_the_largest_task_group_and_says_fits() -> None:
    # The second group (7 cpu + memory) is the largest: g1 (4 cpu) cannot
    # hold it, though it could hold the first.
    j = Job("j", (TaskSpec({"cpu": P}, 1), TaskSpec({"cpu": 6 * P, "memory": GI}, 1)), gang=True)
    e = explain(cluster(), j, detail=True)
    assert e == Explanation(
        "j", "fits", 4, {"capacity cpu": 1, "not_ready": 1},
        {"cpu: node capacity 4 < 6 requested": 1, "node is cordoned": 1},
        (), None, {"d0": CORDONED, "g1": cap(4, 6)},
    )
    assert e.hints == ()
    assert e.summary() == "fits now (2 of 4 nodes could take a task)"


def test_explain_orders_counts_most_first_then_by_name() -> None:
    e = explain(cluster(), job("k", {"cpu": 10 * P}))
    assert e.status == "condition"
    assert e.nodes_total == 4
    assert list(e.counts.items()) == [("capacity cpu", 3), ("not_ready", 1)]
    assert list(e.messages.items()) == [
        ("cpu: node capacity 8 < 10 requested", 2),
        ("cpu: node capacity 4 < 10 requested", 1),
        ("node is cordoned", 1),
    ]
    assert e.per_node == {}
    assert e.advice == (Reason("Aggregate", Code.INSUFFICIENT, Kind.BUSY,
                               "needs 10 cpu; largest free on any ready node: 8",
                               "cpu", 10 * P, 8 * P),)
    assert e.earliest_start is None
    assert e.summary() == ("0/4 nodes available: 3 capacity cpu, 1 not_ready; "
                           "needs 10 cpu; largest free on any ready node: 8")


def test_explain_ties_in_counts_go_by_name() -> None:
    state = busy_cluster()
    e = explain(state, job("k", {"cpu": 3 * P}))
    assert list(e.counts.items()) == [("insufficient cpu", 2), ("not_ready", 1)]
    e = explain(state, job("k", {"cpu": 5 * P}), now=5.0)
    assert list(e.counts.items()) == [
        ("insufficient cpu", 2), ("capacity cpu", 1), ("not_ready", 1)]
    assert list(e.messages.items()) == [
        ("insufficient cpu: 2 free, 5 requested", 2),
        ("cpu: node capacity 4 < 5 requested", 1),
        ("node is cordoned", 1),
    ]


def test_explain_never_when_no_node_could_hold_it_even_empty() -> None:
    # 24 cpu: more than the 20 free on ready nodes, yet one task: no gang advice
    e = explain(cluster(), job("k", {"cpu": 24 * P}))
    assert e.status == "never"
    assert e.hints == ("needs 24 cpu; largest free on any ready node: 8",)
    assert e.earliest_start is None


def test_explain_a_gang_too_big_for_ready_nodes_waits_on_a_condition() -> None:
    e = explain(cluster(), job("k", {"cpu": 6 * P}, count=4))
    assert e.status == "condition"
    assert list(e.counts.items()) == [("capacity cpu", 1), ("not_ready", 1)]
    assert e.advice == (Reason("Aggregate", Code.INSUFFICIENT, Kind.BUSY,
                               "gang needs 24 cpu in all; 20 free on ready nodes",
                               "cpu", 24 * P, 20 * P),)
    assert e.summary() == ("2/4 nodes available: 1 capacity cpu, 1 not_ready; "
                           "gang needs 24 cpu in all; 20 free on ready nodes")


def test_explain_gang_advice_only_past_the_free_total() -> None:
    # 5 tasks of 4 cpu: exactly the 20 free on ready nodes; the ready nodes
    # hold 2 + 2 + 1 = 5 of them: it fits, with no advice.
    e = explain(cluster(), job("k", {"cpu": 4 * P}, count=5))
    assert (e.status, e.hints) == ("fits", ())
    # one task of 8: exactly the largest free, and no gang advice for one task
    e = explain(busy_cluster(), job("k", {"cpu": 4 * P}))
    assert (e.status, e.hints) == ("fits", ())


def test_explain_busy_says_when_running_jobs_would_let_it_fit() -> None:
    e = explain(busy_cluster(), job("k", {"cpu": 5 * P}), now=5.0)
    assert e.status == "busy"
    assert e.earliest_start == 50.0
    assert e.advice == (
        Reason("Aggregate", Code.INSUFFICIENT, Kind.BUSY,
               "needs 5 cpu; largest free on any ready node: 4", "cpu", 5 * P, 4 * P),
        Reason("Backfill", Code.INSUFFICIENT, Kind.BUSY,
               "expected to fit at 50 as running jobs end"),
    )


def test_explain_busy_without_estimates_gives_no_start() -> None:
    e = explain(busy_cluster(None), job("k", {"cpu": 5 * P}), now=5.0)
    assert e.status == "busy"
    assert e.earliest_start is None
    assert e.hints == ("needs 5 cpu; largest free on any ready node: 4",)


def test_explain_quota_comes_first_and_over_fits() -> None:
    queues = {"a": Queue("a", quota={"cpu": 8 * P})}
    e = explain(busy_cluster(), job("k", {"cpu": 3 * P}, queue="a"), queues=queues)
    assert e.status == "quota"
    assert e.earliest_start is None
    assert e.advice == (Reason("Quota", Code.QUOTA, Kind.BUSY,
                               "queue a quota: 6 of 8 cpu in use, job needs 3",
                               "cpu", 3 * P, 2 * P),)
    assert e.summary() == ("1/4 nodes available: 2 insufficient cpu, 1 not_ready; "
                           "queue a quota: 6 of 8 cpu in use, job needs 3")
    queues = {"a": Queue("a", quota={"cpu": 10 * P})}
    e = explain(busy_cluster(), job("k", {"cpu": 5 * P}, queue="a"), queues=queues)
    assert e.status == "quota"
    assert e.hints == ("queue a quota: 6 of 10 cpu in use, job needs 5",
                       "needs 5 cpu; largest free on any ready node: 4")


def test_explain_quota_at_its_limit_and_on_other_resources() -> None:
    state = busy_cluster()
    # 6 in use + 4 is the quota exactly: not over
    e = explain(state, job("k", {"cpu": 4 * P}, queue="a"),
                queues={"a": Queue("a", quota={"cpu": 10 * P})})
    assert (e.status, e.hints) == ("fits", ())
    assert e.summary() == "fits now (1 of 4 nodes could take a task)"
    # a quota on another resource only, or on another queue
    for queues in ({"a": Queue("a", quota={"memory": GI})}, {"b": Queue("b", quota={"cpu": 1})}):
        e = explain(state, job("k", {"cpu": 4 * P}, queue="a"), queues=queues)
        assert (e.status, e.hints) == ("fits", ())
    # the second resource over, the first not; a queue with nothing running
    e = explain(state, job("k", {"cpu": P, "memory": 2 * GI}, queue="a"),
                queues={"a": Queue("a", quota={"cpu": 10 * P, "memory": GI})})
    assert e.hints == ("queue a quota: 0 of 1Gi memory in use, job needs 2Gi",)
    # queue a uses no memory: 1Gi more is its memory quota exactly
    e = explain(state, job("k", {"cpu": P, "memory": GI}, queue="a"),
                queues={"a": Queue("a", quota={"cpu": 10 * P, "memory": GI})})
    assert (e.status, e.hints) == ("fits", ())
    e = explain(state, job("k", {"cpu": 5 * P}, queue="c"),
                queues={"c": Queue("c", quota={"cpu": 4 * P})})
    assert e.status == "quota"
    assert e.advice[0] == Reason("Quota", Code.QUOTA, Kind.BUSY,
                                 "queue c quota: 0 of 4 cpu in use, job needs 5",
                                 "cpu", 5 * P, 4 * P)


def test_explain_quota_summary_with_every_node_available() -> None:
    e = explain(ClusterState([Node("n", {"cpu": 8 * P})]), job("k", {"cpu": P}, queue="c"),
                queues={"c": Queue("c", quota={"cpu": 0})})
    assert e.status == "quota"
    assert e.counts == {}
    assert e.summary() == "1/1 nodes available; queue c quota: 0 of 0 cpu in use, job needs 1"


def test_explain_capacity_leaves_out_removed_and_refusing_classes() -> None:
    state = cluster()
    state.add_node(Node("big", {"cpu": 32 * P, "memory": 8 * GI}))
    state.remove_node("big")
    # the class of the removed node is empty: it holds nothing
    assert explain(state, job("k", {"cpu": 20 * P})).status == "never"
    # d0 could hold it but is cordoned: a condition, never counted as ready
    assert explain(state, job("k", {"cpu": 12 * P})).status == "condition"
    # g1 holds two 2-cpu tasks on labels zone=x; the others refuse the label
    j = job("k", {"cpu": 2 * P}, count=3, constraints=parse_constraints("zone=x"))
    assert explain(state, j).status == "never"
    j = job("k", {"cpu": 2 * P}, count=2, constraints=parse_constraints("zone=x"))
    assert explain(state, j).status == "fits"


def test_explain_status_per_group_of_a_job() -> None:
    # the first group fits somewhere; the second only on the cordoned node
    j = Job("j", (TaskSpec({"cpu": P}, 1), TaskSpec({"cpu": 12 * P}, 1)), gang=True)
    assert explain(cluster(), j).status == "condition"
    # the first group can never fit: never, whatever the second
    j = Job("j", (TaskSpec({"cpu": 20 * P}, 1), TaskSpec({"cpu": 12 * P}, 1)), gang=True)
    assert explain(cluster(), j).status == "never"
    # the ready nodes hold 2 + 2 + 1 tasks of 4 cpu (a1, a2 as one class of two)
    j = Job("j", (TaskSpec({"cpu": 4 * P}, 5), TaskSpec({"cpu": 20 * P}, 1)), gang=True)
    assert explain(cluster(), j).status == "never"
    j = Job("j", (TaskSpec({"cpu": 4 * P}, 6), TaskSpec({"cpu": 12 * P}, 1)), gang=True)
    assert explain(cluster(), j).status == "condition"
    j = Job("j", (TaskSpec({"cpu": 4 * P}, 10), TaskSpec({"gpu": 1}, 1)), gang=True)
    assert explain(cluster(), j).status == "never"
    j = Job("j", (TaskSpec({"cpu": 4 * P}, 9), TaskSpec({"gpu": 1}, 1)), gang=True)
    assert explain(cluster(), j).status == "condition"


def test_explain_hints_for_every_group() -> None:
    j = Job("j", (TaskSpec({"cpu": 9 * P}, 1), TaskSpec({"gpu": 3}, 2)), gang=True)
    e = explain(cluster(), j)
    assert e.hints == (
        "needs 9 cpu; largest free on any ready node: 8",
        "needs 3 gpu; largest free on any ready node: 2",
        "gang needs 6 gpu in all; 2 free on ready nodes",
    )


def test_explain_asks_job_affinity_with_the_state() -> None:
    state = ClusterState([Node("a", {"cpu": 4 * P}), Node("b", {"cpu": 4 * P})])
    state.start(job("db1", {"cpu": P}, name="db"), [TaskPlacement("a", {"cpu": P})], 0.0)
    j = job("k", {"cpu": P}, name="db",
            anti_affinity=(Affinity(parse_selector("name=db"), target="job", required=True),))
    e = explain(state, j, detail=True)
    assert (e.status, e.counts) == ("fits", {"anti_affinity": 1})
    assert e.per_node == {"a": Reason("JobAffinity", Code.ANTI_AFFINITY, Kind.BUSY,
                                      "anti-affinity: node runs a job with name=db")}


def test_explain_plans_from_time_zero_by_default() -> None:
    # Both nodes' running jobs end at 0.5; the gang waits for both.
    state = ClusterState([Node("a", {"cpu": 4 * P}), Node("b", {"cpu": 4 * P})])
    for name in ("a", "b"):
        state.start(job(f"r{name}", {"cpu": 3 * P}), [TaskPlacement(name, {"cpu": 3 * P})],
                    0.0, 0.5)
    gang = job("k", {"cpu": 2 * P}, count=2)
    assert explain(state, gang).earliest_start == 0.5
    assert explain(state, gang, now=1.0).earliest_start == 1.0


# -- validate_job --


def rejected(j: Job, queues: dict[str, Queue], state: ClusterState) -> JobRejected:
    with pytest.raises(JobRejected) as err:
        validate_job(j, queues, state)
    return err.value


def test_validate_unknown_queue_names_the_known_ones_sorted() -> None:
    err = rejected(job("j", {"cpu": P}), {}, cluster())
    message = "queue: unknown queue 'default' (queues: none)"
    assert err.message == message
    assert err.data == {"field": "queue", "job": "j"}
    assert err.failure == Failure(Code.QUEUE, Kind.NEVER, message,
                                  (Reason("Quota", Code.QUEUE, Kind.NEVER, message),))
    err = rejected(job("j", {"cpu": P}, queue="q"), {"b": Queue("b"), "a": Queue("a")}, cluster())
    assert err.message == "queue: unknown queue 'q' (queues: a, b)"


def test_validate_priority_outside_the_bounds() -> None:
    queues = {"a": Queue("a", min_priority=0, max_priority=5)}
    err = rejected(job("j", {"cpu": P}, queue="a", priority=-1), queues, cluster())
    message = "priority: -1 is outside queue a's bounds [0, 5]"
    assert err.data == {"field": "priority", "job": "j"}
    assert err.failure == Failure(Code.PRIORITY, Kind.NEVER, message,
                                  (Reason("Quota", Code.PRIORITY, Kind.NEVER, message),))
    validate_job(job("j", {"cpu": P}, queue="a", priority=5), queues, cluster())


def test_validate_quota_at_and_past_its_limit() -> None:
    queues = {"a": Queue("a", quota={"memory": 64 * GI, "cpu": 6 * P})}
    validate_job(job("j", {"cpu": 2 * P}, count=3, queue="a"), queues, cluster())
    err = rejected(job("j", {"cpu": 2 * P, "memory": GI}, count=4, queue="a"), queues, cluster())
    message = "resources.cpu: the job needs 8 in all but queue a's quota is 6; it can never fit"
    assert err.data == {"field": "resources.cpu", "job": "j"}
    assert err.failure == Failure(Code.QUOTA, Kind.NEVER, message, (
        Reason("Quota", Code.QUOTA, Kind.NEVER, message, "cpu", 8 * P, 6 * P),))


def test_validate_a_bag_needs_room_for_one_task_a_gang_for_all() -> None:
    queues = {"a": Queue("a")}
    state = cluster()
    # d0 (cordoned, so possible) holds one task of 9 cpu, no other node any
    validate_job(job("j", {"cpu": 9 * P}, count=3, queue="a", gang=False), queues, state)
    validate_job(job("j", {"cpu": 9 * P}, count=2, queue="a", gang=False), queues, state)
    err = rejected(job("j", {"cpu": 9 * P}, count=3, queue="a"), queues, state)
    message = ("no node can ever hold these tasks: 2 node(s): cpu: node capacity 8 < 9 "
               "requested; 1 node(s): cpu: node capacity 4 < 9 requested; all nodes "
               "together could hold 1 of its 3 tasks")
    assert err.data == {"field": "tasks", "job": "j"}
    assert err.failure == Failure(Code.CAPACITY, Kind.NEVER, message, (cap(8, 9), cap(4, 9)))
    # 3 + 1 + 1 + 0 tasks of 5 cpu: exactly five
    validate_job(job("j", {"cpu": 5 * P}, count=5, queue="a"), queues, state)
    err = rejected(job("j", {"cpu": 5 * P}, count=6, queue="a"), queues, state)
    assert err.message == ("no node can ever hold these tasks: 1 node(s): cpu: node capacity "
                           "4 < 5 requested; all nodes together could hold 5 of its 6 tasks")
    # a single task: this task
    err = rejected(job("j", {"cpu": 17 * P}, queue="a"), queues, state)
    assert err.message == ("no node can ever hold this task: 2 node(s): cpu: node capacity 8 "
                           "< 17 requested; 1 node(s): cpu: node capacity 16 < 17 requested; "
                           "1 node(s): cpu: node capacity 4 < 17 requested")


def test_validate_names_every_resource_no_node_offers() -> None:
    err = rejected(job("j", {"tpu": 1, "gpu": 1, "fpga": 1}, queue="a"), {"a": Queue("a")},
                   cluster())
    message = "resources.fpga: no node has fpga, tpu"
    assert err.data == {"field": "resources.fpga", "job": "j"}
    assert err.failure == Failure(Code.UNKNOWN_RESOURCE, Kind.NEVER, message, (
        Reason("ResourcesFit", Code.UNKNOWN_RESOURCE, Kind.NEVER, message, "fpga"),))


def test_validate_a_removed_nodes_resource_is_not_offered() -> None:
    state = cluster()
    state.add_node(Node("t1", {"cpu": P, "tpu": 4}))
    validate_job(job("j", {"tpu": 1}, queue="a"), {"a": Queue("a")}, state)
    state.remove_node("t1")
    err = rejected(job("j", {"tpu": 1}, queue="a"), {"a": Queue("a")}, state)
    assert err.message == "resources.tpu: no node has tpu"


def test_validate_skips_an_empty_class_before_the_others() -> None:
    state = ClusterState([Node("t1", {"cpu": P, "tpu": 4}), Node("a", {"cpu": 2 * P})])
    state.remove_node("t1")
    err = rejected(job("j", {"cpu": 5 * P}, queue="a"), {"a": Queue("a")}, state)
    assert err.failure == Failure(
        Code.CAPACITY, Kind.NEVER,
        "no node can ever hold this task: 1 node(s): cpu: node capacity 2 < 5 requested",
        (cap(2, 5),))


def test_validate_with_no_nodes_says_so() -> None:
    queues = {"a": Queue("a")}
    err = rejected(job("j", {"tpu": 1}, queue="a"), queues, ClusterState([]))
    assert err.failure == Failure(Code.CAPACITY, Kind.NEVER,
                                  "no node can ever hold this task: there are no nodes")
    err = rejected(job("j", {"tpu": 1}, count=2, queue="a"), queues, ClusterState([]))
    assert err.message == ("no node can ever hold these tasks: all nodes together could hold "
                           "0 of its 2 tasks")
    state = ClusterState([Node("t1", {"tpu": 1})])
    state.remove_node("t1")
    err = rejected(job("j", {"tpu": 1}, queue="a"), queues, state)
    assert err.message == "no node can ever hold this task: there are no nodes"


def test_validate_never_failure_takes_the_first_classes_code() -> None:
    err = rejected(job("j", {"cpu": P}, queue="a", constraints=parse_constraints("zone=y")),
                   {"a": Queue("a")}, cluster())
    label = Reason("LabelConstraints", Code.LABEL, Kind.NEVER, "label mismatch: zone=y")
    message = "no node can ever hold this task: 4 node(s): label mismatch: zone=y"
    assert err.failure == Failure(Code.LABEL, Kind.NEVER, message, (label, label, label))
