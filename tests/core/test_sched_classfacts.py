"""``classfacts``: a class verdict built from the amount-free facts shared by
job shapes that differ only in amounts is the verdict every class filter
gives asked afresh (hypothesis), on fleets of cpu, GPU nodes with and without
a device list, labels, nodes not ready, and jobs with label and device terms
and required node (anti-)affinity, many shapes on one state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.gpu_shares import split_gpu
from apportion.core.labels import parse_selector
from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import Affinity, ClusterState, Job, TaskSpec
from apportion.core.scheduling.classfacts import class_facts, needs_node_device_check
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.filters import CLASS_FILTERS, ResourcesFit, class_verdict

CONSTRAINTS = [NO_CONSTRAINTS, parse_constraints("zone=a"), parse_constraints("gpu.model=H100"),
               parse_constraints("gpu.model in (A100,H100),zone=b")]
AFFINITY = [(), (Affinity(parse_selector("zone=a"), required=True),),
            (Affinity(parse_selector("zone=b"), weight=3),),
            (Affinity(parse_selector("app=db"), target="job", required=True),)]


@st.composite
def fleets(draw: st.DrawFn) -> list[Node]:
    out = []
    for i in range(draw(st.integers(1, 10))):
        resources = {"cpu": draw(st.sampled_from([2000, 4000, 8000]))}
        labels = {"zone": draw(st.sampled_from(["a", "b"]))}
        devices = {}
        gpus = draw(st.sampled_from([0, 0, 1, 2, 4]))
        if gpus:
            model = draw(st.sampled_from(["A100", "H100"]))
            labels["gpu.model"] = model
            resources["gpu"] = gpus
            if draw(st.booleans()):  # else judged by its labels
                odd = draw(st.integers(0, 3)) == 0
                devices = {"gpu": tuple(Device(f"GPU-{k}", "V100" if odd and k == 0 else model)
                                        for k in range(gpus))}
        if not gpus and draw(st.integers(0, 3)) == 0:  # GPU share slots
            model = draw(st.sampled_from(["A100", "H100"]))
            slots = tuple(s for k in range(2) for s in split_gpu(Device(f"{i}-{k}", model), 4))
            labels["gpu.model"] = model
            resources["gpu.shares"] = len(slots)
            devices = {"gpu.shares": slots}
        state = NodeState.READY if draw(st.integers(0, 5)) else NodeState.DRAINING
        out.append(Node(f"n{i:02d}", resources, devices=devices, labels=labels, state=state))
    return out


jobs = st.lists(st.tuples(st.sampled_from([500, 2000, 9000]), st.sampled_from([0, 1, 2, 3, 5]),
                          st.integers(0, len(CONSTRAINTS) - 1), st.integers(0, len(AFFINITY) - 1),
                          st.booleans()),
                min_size=1, max_size=30)


def _asked_afresh(state: ClusterState, job: Job, i: int = 0) -> dict[str, Any]:
    """The verdict as ``class_verdict`` made it before the facts: every
    filter asked of every class."""
    spec = job.tasks[i]
    out: dict[str, Any] = {"rejected": [], "aligned": {}, "device_check": set(), "nodes_ok": 0}
    for cls in state.classes:
        if cls.size == 0:
            continue
        reason = None
        for plugin in CLASS_FILTERS:
            reason = plugin.check_class(job, spec, cls)
            if reason is not None:
                break
        if reason is not None:
            out["rejected"].append((cls.id, reason))
            continue
        out["aligned"][cls.id] = state.align(cls, spec.resources)
        out["nodes_ok"] += cls.size
        if needs_node_device_check(job.constraints, spec, cls):
            out["device_check"].add(cls.id)
    return out


def _job(n: int, cpu: int, gpus: int, c: int, a: int, anti: bool) -> Job:
    request = {"cpu": cpu, "gpu": gpus} if gpus else {"cpu": cpu}
    specs = (TaskSpec(request, 1),)
    if gpus == 3:  # a second spec: GPU shares
        specs += (TaskSpec({"cpu": cpu // 2, "gpu.shares": 1 + n % 3}, 1),)
    rules = AFFINITY[a]
    return Job(f"j{n}", specs, constraints=CONSTRAINTS[c],
               affinity=() if anti else rules, anti_affinity=rules if anti else ())


def _change(state: ClusterState, op: int, n: int) -> None:
    """Between shapes: add a node (new class or not), drain or ready one, or
    remove one."""
    names = sorted(state.nodes)
    if op == 1:
        state.add_node(Node(f"x{n}", {"cpu": 1000 * (1 + n % 9)}, labels={"zone": "ab"[n % 2]}))
    elif op == 2 and names:
        node = state.rec(names[n % len(names)]).node
        flip = NodeState.READY if node.state != NodeState.READY else NodeState.DRAINING
        state.update_node(replace(node, state=flip))
    elif op == 3 and len(names) > 1:
        state.remove_node(names[n % len(names)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), jobs, st.lists(st.sampled_from([0, 0, 1, 2, 3]), min_size=1, max_size=30))
def test_a_verdict_from_shared_facts_is_the_verdict_asked_afresh(
    nodes: list[Node], shapes: list[tuple[int, int, int, int, bool]], ops: list[int]
) -> None:
    state = ClusterState(nodes)
    for n, shape in enumerate(shapes):
        _change(state, ops[n % len(ops)], n)
        job = _job(n, *shape)
        # The verdict made anew (its own cache entry dropped), from the
        # facts the shapes before it left.
        for i in range(len(job.tasks)):
            state.cache.pop((job.shape_hash, i), None)
            verdict = class_verdict(state, job, i)
            want = _asked_afresh(state, job, i)
            assert [(cls.id, r) for cls, r in verdict.rejected] == want["rejected"]
            assert verdict.aligned == want["aligned"]
            assert verdict.device_check == want["device_check"]
            assert verdict.nodes_ok == want["nodes_ok"]


def test_facts_are_shared_across_amounts_and_ask_resources_fit_each_time() -> None:
    gpu = Node("g", {"cpu": 8000, "gpu": 2},
               devices={"gpu": (Device("GPU-0", "H100"), Device("GPU-1", "A100"))},
               labels={"gpu.model": "H100"})
    state = ClusterState([gpu, Node("c", {"cpu": 4000}, state=NodeState.DRAINING)])
    h100 = parse_constraints("gpu.model=H100")
    one = Job("a", (TaskSpec({"cpu": 1000, "gpu": 1}, 1),), constraints=h100)
    two = Job("b", (TaskSpec({"cpu": 2000, "gpu": 2}, 1),), constraints=h100)
    facts = class_facts(state, one, one.tasks[0], CLASS_FILTERS)
    assert class_facts(state, two, two.tasks[0], CLASS_FILTERS) is facts
    by_id = {cls.id: (steps, reason) for cls, steps, reason, _ in facts}
    g, c = state.rec("g").cls, state.rec("c").cls
    steps, reason = by_id[g.id]
    assert reason is None
    assert [type(p).__name__ for p, _ in steps] == ["ResourcesFit", "DeviceConstraints"]
    assert isinstance(steps[0][0], ResourcesFit) and steps[0][1] is None  # asked each time
    assert by_id[c.id] == ((), by_id[c.id][1]) and by_id[c.id][1].code == "not_ready"
    assert class_verdict(state, one, 0).aligned  # one H100 of the two
    refused = class_verdict(state, two, 0)
    assert not refused.aligned
    assert "needs 2 gpu" in refused.rejected[0][1].message


def test_the_facts_are_dropped_when_the_node_classes_change() -> None:
    """A new class and a class turned not ready are seen by the next shape
    that shares the facts (differing only in amounts)."""
    a = Node("a", {"cpu": 4000}, labels={"zone": "a"})
    state = ClusterState([a])
    zone_a = parse_constraints("zone=a")
    small = Job("s", (TaskSpec({"cpu": 1000}, 1),), constraints=zone_a)
    assert list(class_verdict(state, small, 0).aligned) == [state.rec("a").cls.id]
    state.add_node(Node("b", {"cpu": 8000}, labels={"zone": "a"}))
    state.update_node(Node("a", {"cpu": 4000}, labels={"zone": "a"}, state=NodeState.DRAINING))
    big = Job("b", (TaskSpec({"cpu": 2000}, 1),), constraints=zone_a)
    verdict = class_verdict(state, big, 0)
    assert list(verdict.aligned) == [state.rec("b").cls.id]
    assert [(cls.id, r.code) for cls, r in verdict.rejected] == [
        (state.rec("a").cls.id, "not_ready")]


def test_job_target_rules_share_a_key_and_the_facts_stay_bounded() -> None:
    from apportion.core.scheduling import classfacts

    state = ClusterState([Node(f"n{i}", {"cpu": 1000 + i}, labels={"k": str(i)})
                          for i in range(40)])
    classes = len(list(state.classes))

    def job(n: int, target: str) -> Job:
        rule = Affinity(parse_selector(f"app=a{n}"), target=target, required=True)
        return Job(f"j{n}", (TaskSpec({"cpu": 500}, 1),), anti_affinity=(rule,))

    first = class_facts(state, job(0, "job"), job(0, "job").tasks[0], CLASS_FILTERS)
    assert class_facts(state, job(1, "job"), job(1, "job").tasks[0], CLASS_FILTERS) is first
    for n in range(3 * classfacts._BOUND // classes):
        j = job(n, "node")  # each its own key
        class_facts(state, j, j.tasks[0], CLASS_FILTERS)
        kept = state.cache[classfacts._KEY]
        assert len(kept) * classes <= classfacts._BOUND


def test_a_filter_with_judge_but_no_fixed_is_refused_clearly() -> None:
    class _Half:
        def judge(self, spec: TaskSpec, cls: Any, fixed: Any) -> None:
            return None

    state = ClusterState([Node("a", {"cpu": 1000})])
    job = Job("j", (TaskSpec({"cpu": 1}, 1),))
    with pytest.raises(TypeError, match="_Half: a class filter with judge needs fixed"):
        class_facts(state, job, job.tasks[0], [_Half()])
