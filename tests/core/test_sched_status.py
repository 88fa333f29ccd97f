"""The pipeline's wording of its reasons (``core/scheduling/status.py``): each
helper's ``Reason`` field by field, the aggregate checks at their edge, the
walk's busy failure and the class stage's count of nodes by message.

Written for the mutants of ``status.py`` that the placement tests let through
or never reached (docs/testing.md): they read a failure's message at most,
and explain's advice is only tested through the service.
"""

from __future__ import annotations

from apportion.core.model import Node, NodeState
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.scheduling import ClusterState, TaskSpec, job
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.policies import strategy
from apportion.core.scheduling.status import (
    aggregate_short,
    busy_failure,
    group_aggregate_short,
    nodes_by_message,
    not_enough_free,
    over_quota,
    quota_advice,
    short_gang,
    short_in_all,
    short_largest,
)

GI = 1 << 30


def small_cluster() -> ClusterState:
    # 6 cpu and 8Gi free on ready nodes, at most 4 cpu on one; the cordoned
    # node's 8 cpu count for nothing.
    return ClusterState([
        Node("a", {"cpu": 4000, "memory": 4 * GI}),
        Node("b", {"cpu": 2000, "memory": 4 * GI}),
        Node("c", {"cpu": 8000, "memory": 4 * GI}, state=NodeState.CORDONED),
    ])


def test_each_wording_helper_gives_its_stage_code_kind_and_amounts() -> None:
    assert short_in_all("memory", 6 * GI, 4 * GI, 2 * GI) == Reason(
        "Aggregate", Code.INSUFFICIENT, Kind.BUSY,
        "needs 6Gi memory in all; 4Gi free on ready nodes (largest free on any ready node: 2Gi)",
        "memory", 6 * GI, 4 * GI,
    )
    assert not_enough_free("cpu", 2500) == Reason(
        "Aggregate", Code.INSUFFICIENT, Kind.BUSY,
        "not enough cpu free on ready nodes now (2500m in all)", "cpu", None, 2500,
    )
    assert short_gang("gpu", 8, 3) == Reason(
        "Aggregate", Code.INSUFFICIENT, Kind.BUSY,
        "gang needs 8 gpu in all; 3 free on ready nodes", "gpu", 8, 3,
    )
    assert short_largest("cpu", 4000, 3000) == Reason(
        "Aggregate", Code.INSUFFICIENT, Kind.BUSY,
        "needs 4 cpu; largest free on any ready node: 3", "cpu", 4000, 3000,
    )


def test_the_quota_reasons_say_what_is_left_of_the_quota() -> None:
    assert over_quota("team", "cpu", 6000, 8000, 4000) == Reason(
        "Quota", Code.QUOTA, Kind.BUSY,
        "queue team quota: cpu 6 of 8 in use, job needs 4", "cpu", 4000, 2000,
    )
    assert quota_advice("team", "cpu", 6000, 8000, 4000) == Reason(
        "Quota", Code.QUOTA, Kind.BUSY,
        "queue team quota: 6 of 8 cpu in use, job needs 4", "cpu", 4000, 2000,
    )


def test_a_job_short_in_all_is_refused_and_one_that_just_fits_is_not() -> None:
    state = small_cluster()
    assert aggregate_short(state, job("fits", {"cpu": 6000})) is None
    assert aggregate_short(state, job("one", {"cpu": 2000})) is None
    # Nine tasks: 18 cpu (and 9Gi) in all; the first short resource is said.
    failure = aggregate_short(state, job("big", {"cpu": 2000, "memory": GI}, count=9))
    assert failure == Failure.of(short_in_all("cpu", 18000, 6000, 4000))
    assert failure is not None
    assert failure.message == (
        "needs 18 cpu in all; 6 free on ready nodes (largest free on any ready node: 4)")


def test_a_group_short_in_all_counts_its_tasks() -> None:
    state = small_cluster()
    assert group_aggregate_short(state, TaskSpec({"cpu": 2000}, 3)) is None
    assert group_aggregate_short(state, TaskSpec({"cpu": 1000, "memory": GI}, 6)) is None
    assert group_aggregate_short(state, TaskSpec({"cpu": 2000, "memory": GI}, 4)) == Failure(
        Code.INSUFFICIENT, Kind.BUSY,
        "needs 8 cpu in all; 6 free on ready nodes (largest free on any ready node: 4)",
        (short_in_all("cpu", 8000, 6000, 4000),),
    )
    assert group_aggregate_short(state, TaskSpec({"memory": 3 * GI}, 3)) == Failure.of(
        short_in_all("memory", 9 * GI, 8 * GI, 4 * GI))


def test_a_busy_failure_names_each_resource_larger_than_any_node_has_free() -> None:
    state = small_cluster()
    spec = TaskSpec({"cpu": 5000, "memory": 5 * GI})
    assert busy_failure(state, job("j", spec.resources), spec, 1) == Failure(
        Code.INSUFFICIENT, Kind.BUSY,
        "no room now for the task: needs 5 cpu; largest free on any ready node: 4; "
        "needs 5Gi memory; largest free on any ready node: 4Gi",
        (short_largest("cpu", 5000, 4000), short_largest("memory", 5 * GI, 4 * GI)),
    )
    # Exactly the largest free amount is no shortage of one resource.
    spec = TaskSpec({"cpu": 4000})
    assert busy_failure(state, job("j", spec.resources), spec, 1).reasons == ()


def test_a_busy_failure_with_no_resource_too_large_says_no_node_has_all_at_once() -> None:
    state = small_cluster()
    spec = TaskSpec({"cpu": 3000, "memory": GI}, 3)
    assert busy_failure(state, job("j", spec.resources, count=3), spec, 2) == Failure(
        Code.INSUFFICIENT, Kind.BUSY,
        "no room now for 2 more task(s): no ready node has all of 3 cpu, 1Gi memory free "
        "at once, with its constraints",
    )
    # Two tasks are a group too: the words count the ones left.
    pair = TaskSpec({"cpu": 5000}, 2)
    assert busy_failure(state, job("j", pair.resources, count=2), pair, 1).message == (
        "no room now for 1 more task(s): needs 5 cpu; largest free on any ready node: 4")


def place(state: ClusterState, cpu: int) -> Failure | None:
    return Placer(state, strategy("fifo").options).place(job("j", {"cpu": cpu})).failure


def test_no_class_counts_nodes_by_message_most_first_and_a_condition_can_change() -> None:
    state = ClusterState([
        Node("c", {"cpu": 8000}, state=NodeState.CORDONED),
        Node("a0", {"cpu": 2000}), Node("a1", {"cpu": 2000}), Node("b", {"cpu": 3000}),
    ])
    failure = place(state, 4000)
    assert failure is not None
    assert (failure.code, failure.kind, failure.message) == (
        Code.NOT_READY, Kind.CONDITION,
        "0/4 nodes can take it: cpu: node capacity 2 < 4 requested (2); node is cordoned (1); "
        "cpu: node capacity 3 < 4 requested (1)",
    )
    assert [(r.plugin, r.code, r.kind, r.message) for r in failure.reasons] == [
        ("NodeReady", Code.NOT_READY, Kind.CONDITION, "node is cordoned"),
        ("ResourcesFit", Code.CAPACITY, Kind.NEVER, "cpu: node capacity 2 < 4 requested"),
        ("ResourcesFit", Code.CAPACITY, Kind.NEVER, "cpu: node capacity 3 < 4 requested"),
    ]


def test_no_class_of_a_node_too_small_is_never() -> None:
    failure = place(ClusterState([Node("a", {"cpu": 2000}), Node("b", {"cpu": 3000})]), 4000)
    assert failure is not None
    assert (failure.code, failure.kind, failure.message, len(failure.reasons)) == (
        Code.CAPACITY, Kind.NEVER,
        "0/2 nodes can take it: cpu: node capacity 2 < 4 requested (1); "
        "cpu: node capacity 3 < 4 requested (1)", 2,
    )


def test_no_class_in_an_empty_cluster_says_no_nodes() -> None:
    assert place(ClusterState([]), 4000) == Failure(
        Code.CAPACITY, Kind.NEVER, "0/0 nodes can take it: no nodes", ())


def test_nodes_by_message_sums_sizes_most_first_ties_in_first_seen_order() -> None:
    def why(message: str) -> Reason:
        return Reason("P", Code.LABEL, Kind.NEVER, message)

    assert nodes_by_message([(1, why("z")), (2, why("b")), (1, why("a")), (3, why("z"))]) == [
        ("z", 4), ("b", 2), ("a", 1)]
    assert nodes_by_message([(1, why("b")), (1, why("a"))]) == [("b", 1), ("a", 1)]
