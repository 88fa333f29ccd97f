"""Explain per node: each node's reason now, whether it ever could, the limit."""

from __future__ import annotations

from apportion.core.labels import parse_selector
from apportion.core.model import Node, NodeState
from apportion.core.scheduling import Affinity, ClusterState, Job, TaskPlacement, TaskSpec, job
from apportion.core.scheduling.explain_nodes import explain_nodes


def test_each_node_says_why_now_and_whether_ever() -> None:
    state = ClusterState([
        Node("small", {"cpu": 2000}),
        Node("busy", {"cpu": 8000}),
        Node("off", {"cpu": 8000}, state=NodeState.CORDONED),
        Node("off-small", {"cpu": 2000}, state=NodeState.CORDONED),
        Node("free", {"cpu": 4000}),
    ])
    state.start(job("hog", {"cpu": 6000}), [TaskPlacement("busy", {"cpu": 6000})], 0.0, 100.0)
    table = explain_nodes(state, job("j", {"cpu": 4000}))
    assert [(v.node, v.now, v.ever, v.reason.message if v.reason else None,
             v.never.message if v.never else None) for v in table.nodes] == [
        ("free", "fits", True, None, None),
        ("busy", "busy", True, "insufficient cpu: 2 free, 4 requested", None),
        ("off", "condition", True, "node is cordoned", None),
        ("off-small", "condition", False, "node is cordoned",
         "cpu: node capacity 2 < 4 requested"),
        ("small", "never", False, "cpu: node capacity 2 < 4 requested",
         "cpu: node capacity 2 < 4 requested"),
    ]
    assert (table.total, table.more, dict(table.rest)) == (5, 0, {})


def test_past_the_limit_nodes_are_counted_by_reason() -> None:
    nodes = [Node(f"n{i:02}", {"cpu": 1000}) for i in range(55)]
    nodes.append(Node("big", {"cpu": 8000}, state=NodeState.DOWN))
    table = explain_nodes(ClusterState(nodes), job("j", {"cpu": 4000}), limit=50)
    assert table.nodes[0].node == "big"
    assert [v.node for v in table.nodes[1:3]] == ["n00", "n01"]
    assert (len(table.nodes), table.total, table.more) == (50, 56, 6)
    assert dict(table.rest) == {"capacity cpu": 6}


def test_the_largest_task_is_judged_and_the_rest_is_ordered_by_count_then_name() -> None:
    # Found by mutation testing (docs/testing.md): the first task group is
    # not the largest, and the nodes past the limit fall in four groups, the
    # ties in an order other than that of the table.
    state = ClusterState([
        Node("s1", {"cpu": 2000}),
        Node("c3", {"cpu": 8000}, state=NodeState.CORDONED),
        Node("f2", {"cpu": 8000}),
        Node("b1", {"cpu": 8000}),
        Node("c1", {"cpu": 8000}, state=NodeState.CORDONED),
        Node("f1", {"cpu": 8000}),
        Node("c2", {"cpu": 8000}, state=NodeState.DOWN),
    ])
    state.start(job("hog", {"cpu": 6000}), [TaskPlacement("b1", {"cpu": 6000})], 0.0, 100.0)
    two = Job("j", (TaskSpec({"cpu": 1000}), TaskSpec({"cpu": 4000})))
    table = explain_nodes(state, two, limit=1)
    assert [(v.node, v.now, v.reason, v.never) for v in table.nodes] == [
        ("f1", "fits", None, None)]
    assert (table.total, table.more) == (7, 6)
    assert list(table.rest.items()) == [
        ("not_ready", 3), ("capacity cpu", 1), ("fits", 1), ("insufficient cpu", 1)]


def test_a_node_running_a_job_the_job_must_avoid_is_busy() -> None:
    # The job-affinity filter reads what runs on the node from the state.
    state = ClusterState([Node("a", {"cpu": 8000}), Node("b", {"cpu": 8000})])
    state.start(job("db", {"cpu": 1000}, name="db"), [TaskPlacement("a", {"cpu": 1000})],
                0.0, 100.0)
    avoid_db = Affinity(parse_selector("name=db"), target="job", required=True)
    table = explain_nodes(state, job("web", {"cpu": 1000}, anti_affinity=(avoid_db,)))
    assert [(v.node, v.now, v.reason.message if v.reason else None, v.ever)
            for v in table.nodes] == [
        ("b", "fits", None, True),
        ("a", "busy", "anti-affinity: node runs a job with name=db", True),
    ]
