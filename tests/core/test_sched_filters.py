"""Filter plugins, their reasons, and explain."""

from __future__ import annotations

from dataclasses import replace

from apportion.core.labels import parse_selector
from apportion.core.model import Device, Health, Node, NodeState
from apportion.core.scheduling import (
    Affinity,
    ClusterState,
    Job,
    SchedulerConfig,
    TaskPlacement,
    explain,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.capacity import NodeClass
from apportion.core.scheduling.constraints import DeviceRequirement
from apportion.core.scheduling.devices import share_devices
from apportion.core.scheduling.filters import (
    Code,
    DeviceConstraints,
    JobAffinity,
    Kind,
    LabelConstraints,
    NodeAffinity,
    NodeReady,
    Reason,
    ResourcesFit,
    class_verdict,
    needs_node_device_check,
    node_reasons,
    runs_matching,
)

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


# -- each node filter's reason, literally (explain shows them as they are) --


def _jobs_node() -> tuple[ClusterState, Job, Job]:
    """Node m runs "me" (app=db), started first, then "other" (app=web)."""
    state = ClusterState([Node("m", {"cpu": 4000}), Node("e", {"cpu": 4000})])
    me = job("me", {"cpu": 1000}, labels={"app": "db"})
    other = job("other", {"cpu": 1000}, labels={"app": "web"})
    state.start(me, [TaskPlacement("m", {"cpu": 1000})], 0.0)
    state.start(other, [TaskPlacement("m", {"cpu": 1000})], 0.0)
    return state, me, other


def _job_check(state: ClusterState, j: Job, node: str = "m") -> Reason | None:
    rec = state.nodes[node]
    return JobAffinity().check_node(j, j.tasks[0], rec, rec.free, state)


def test_resources_fit_reason_names_the_short_resource_with_amounts() -> None:
    state, _, _ = _jobs_node()
    j = job("j", {"cpu": 2500})
    rec = state.nodes["m"]
    assert ResourcesFit().check_node(j, j.tasks[0], rec, rec.free, state) == Reason(
        "ResourcesFit", Code.INSUFFICIENT, Kind.BUSY, "insufficient cpu: 2 free, 2500m requested",
        "cpu", 2500, 2000)


def test_runs_matching_skips_the_job_itself_and_looks_on() -> None:
    state, _, _ = _jobs_node()
    rec = state.nodes["m"]
    assert runs_matching(rec, parse_selector("app=web"), state, "me") is True
    assert runs_matching(rec, parse_selector("app=db"), state, "me") is False
    assert runs_matching(rec, parse_selector("app=db"), state, "other") is True


def test_job_affinity_reasons_and_the_job_itself_not_counted() -> None:
    state, me, _ = _jobs_node()
    two = parse_selector("app=web,zone!=b")
    anti = job("anti", {"cpu": 500}, anti_affinity=(Affinity(two, target="job", required=True),))
    assert _job_check(state, anti) == Reason(
        "JobAffinity", Code.ANTI_AFFINITY, Kind.BUSY,
        "anti-affinity: node runs a job with app=web,zone!=b")
    near = job("near", {"cpu": 500},
               affinity=(Affinity(parse_selector("app=api,zone!=b"), target="job", required=True),))
    assert _job_check(state, near) == Reason(
        "JobAffinity", Code.AFFINITY, Kind.BUSY, "affinity: node runs no job with app=api,zone!=b")
    web = job("web", {"cpu": 500},
              affinity=(Affinity(parse_selector("app=web"), target="job", required=True),))
    assert _job_check(state, web) is None
    # "me" (app=db) running on m is no other job with app=db, for or against.
    db = parse_selector("app=db")
    alone = replace(me, anti_affinity=(Affinity(db, target="job", required=True),))
    assert _job_check(state, alone) is None
    with_db = replace(me, affinity=(Affinity(db, target="job", required=True),))
    assert _job_check(state, with_db) == Reason(
        "JobAffinity", Code.AFFINITY, Kind.BUSY, "affinity: node runs no job with app=db")


def test_job_affinity_ignores_node_targets_and_preferred_terms() -> None:
    state, _, _ = _jobs_node()
    none = parse_selector("app=none")
    j = job("j", {"cpu": 500}, affinity=(
        Affinity(none, target="node", required=True), Affinity(none, target="job", weight=3)))
    assert _job_check(state, j) is None
    assert _job_check(state, j, "e") is None


def test_node_reasons_reads_the_free_vector_it_is_given_and_the_jobs() -> None:
    state, _, _ = _jobs_node()
    j = job("j", {"cpu": 1000})
    rec = state.nodes["e"]
    assert node_reasons(state, j, j.tasks[0], rec) is None
    assert node_reasons(state, j, j.tasks[0], rec, (500,)) == Reason(
        "ResourcesFit", Code.INSUFFICIENT, Kind.BUSY, "insufficient cpu: 500m free, 1 requested",
        "cpu", 1000, 500)
    anti = job("anti", {"cpu": 500}, anti_affinity=(
        Affinity(parse_selector("app=db"), target="job", required=True),))
    assert node_reasons(state, anti, anti.tasks[0], state.nodes["m"]) == Reason(
        "JobAffinity", Code.ANTI_AFFINITY, Kind.BUSY, "anti-affinity: node runs a job with app=db")


def _gpu_state() -> ClusterState:
    gpus = (Device("g0", "A100", 40 * GI), Device("g1", "H100", 80 * GI),
            Device("g2", "H100", 80 * GI))
    return ClusterState([
        Node("g", {"cpu": 8000}, devices={"gpu": gpus}),
        Node("one", {"cpu": 8000}, devices={"gpu": (Device("g0", "H100", 80 * GI),)}),
        Node("l", {"cpu": 4000, "gpu": 2}, labels={"gpu.model": "H100"}),
    ])


def _device_check(state: ClusterState, j: Job, node: str) -> Reason | None:
    rec = state.nodes[node]
    return DeviceConstraints().check_node(j, j.tasks[0], rec, rec.free, state)


def test_device_constraints_reason_counts_free_matching_devices() -> None:
    state = _gpu_state()
    h100 = parse_constraints("gpu.model=H100, gpu.memory>=40Gi")
    assert _device_check(state, job("two", {"gpu": 2}, constraints=h100), "g") is None
    assert _device_check(state, job("three", {"gpu": 3}, constraints=h100), "g") == Reason(
        "DeviceConstraints", Code.DEVICE, Kind.BUSY,
        "needs 3 free gpu with gpu.model=H100,gpu.memory>=40Gi; 2 free", "gpu", 3, 2)
    # A node that lists no devices is judged by its labels, at the class level.
    assert _device_check(state, job("lab", {"gpu": 1}, constraints=h100), "l") is None


def test_share_slots_spread_over_gpus_are_fewer_tasks_than_slots() -> None:
    slots = (share_devices(Device("GPU-0", "A100", 40 * GI), 2)
             + share_devices(Device("GPU-1", "A100", 40 * GI), 2)
             + share_devices(Device("GPU-2", "T4", 16 * GI), 2))
    state = ClusterState([Node("s", {"cpu": 8000}, devices={"gpu.shares": slots})])
    for k, slot in enumerate(("GPU-0/0", "GPU-1/0")):
        state.start(job(f"x{k}", {"gpu.shares": 1}),
                    [TaskPlacement("s", {"gpu.shares": 1}, {"gpu.shares": (slot,)})], 0.0)
    j = job("j", {"gpu.shares": 2},
            constraints=parse_constraints("gpu.model=A100", device_families=("gpu",)))
    rec = state.nodes["s"]
    assert _device_check(state, j, "s") == Reason(
        "DeviceConstraints", Code.DEVICE, Kind.BUSY,
        "needs 2 free gpu.shares with gpu.model=A100 on one GPU; 2 free, spread over GPUs",
        "gpu.shares", 2, 2)
    assert DeviceConstraints().fit(j, j.tasks[0], rec, rec.free, state, 5) == 0
    t4 = job("t4", {"gpu.shares": 2})  # no terms: the T4's two free slots hold one task
    assert DeviceConstraints().fit(t4, t4.tasks[0], rec, rec.free, state, 5) == 1
    three = job("three", {"gpu.shares": 3})  # no terms: four free slots, two per GPU at most
    assert _device_check(state, three, "s") == Reason(
        "DeviceConstraints", Code.DEVICE, Kind.BUSY,
        "needs 3 free gpu.shares on one GPU; 4 free, spread over GPUs", "gpu.shares", 3, 4)
    five = job("five", {"gpu.shares": 5})
    assert _device_check(state, five, "s") == Reason(
        "DeviceConstraints", Code.DEVICE, Kind.BUSY,
        "needs 5 free gpu.shares; 4 free", "gpu.shares", 5, 4)
    assert needs_node_device_check(t4.constraints, t4.tasks[0], rec.cls) is True


def test_needs_node_device_check_only_where_devices_of_a_class_differ() -> None:
    state = _gpu_state()
    h100 = parse_constraints("gpu.model=H100")
    spec = job("j", {"gpu": 1}, constraints=h100).tasks[0]
    g, one = state.nodes["g"].cls, state.nodes["one"].cls
    assert needs_node_device_check(h100, spec, g) is True  # an A100 among them
    assert needs_node_device_check(h100, spec, one) is False  # every device matches
    assert needs_node_device_check(parse_constraints(""), spec, g) is False  # no terms
    assert needs_node_device_check(parse_constraints(""), spec, one) is False


def test_class_verdict_is_cached_per_job_shape() -> None:
    state = cluster()
    a, b = job("a", {"cpu": 1000}), job("b", {"cpu": 1000})
    assert a.shape == b.shape and a.shape is not b.shape
    first = class_verdict(state, a, 0)
    assert class_verdict(state, a, 0) is first
    assert class_verdict(state, b, 0) is first
    assert class_verdict(state, job("c", {"cpu": 2000}), 0) is not first


def test_class_verdict_tells_apart_shapes_whose_hashes_collide() -> None:
    # CPython hashes an int modulo 2**61 - 1, so 1 and 2**61 hash alike and
    # so do the two jobs' shapes: the cache key is the same, the shape not.
    state = cluster()
    small, huge = job("small", {"cpu": 1}), job("huge", {"cpu": 2**61})
    assert small.shape_hash == huge.shape_hash and small.shape != huge.shape
    never = class_verdict(state, huge, 0)
    assert (never.nodes_ok, sorted(never.aligned)) == (0, [])
    fits = class_verdict(state, small, 0)
    assert fits is not never
    assert (fits.nodes_ok, sorted(fits.aligned)) == (3, [0, 1])


def _class_of(state: ClusterState, node: str) -> NodeClass:
    return state.nodes[node].cls


def test_required_node_affinity_and_anti_affinity_reasons() -> None:
    state = cluster()
    texas, oslo = _class_of(state, "a1"), _class_of(state, "b1")
    sel = parse_selector("facility=oslo,zone!=b")
    near = job("near", {"cpu": 1000}, affinity=(Affinity(sel, required=True),))
    apart = job("apart", {"cpu": 1000}, anti_affinity=(Affinity(sel, required=True),))
    f = NodeAffinity()
    assert f.check_class(near, near.tasks[0], texas) == Reason(
        "NodeAffinity", Code.AFFINITY, Kind.NEVER, "affinity not met: facility=oslo,zone!=b")
    assert f.check_class(near, near.tasks[0], oslo) is None
    assert f.check_class(apart, apart.tasks[0], oslo) == Reason(
        "NodeAffinity", Code.ANTI_AFFINITY, Kind.NEVER,
        "anti-affinity: node matches facility=oslo,zone!=b")
    assert f.check_class(apart, apart.tasks[0], texas) is None
    # Preferred terms only score; terms about jobs are JobAffinity's.
    other = job("other", {"cpu": 1000}, affinity=(
        Affinity(sel, weight=4), Affinity(sel, target="job", required=True)),
        anti_affinity=(Affinity(sel, weight=4), Affinity(sel, target="job", required=True)))
    for cls in (texas, oslo):
        assert f.check_class(other, other.tasks[0], cls) is None
    label = job("l", {"cpu": 1000}, constraints=parse_constraints("facility=oslo"))
    assert LabelConstraints().check_class(label, label.tasks[0], texas) == Reason(
        "LabelConstraints", Code.LABEL, Kind.NEVER, "label mismatch: facility=oslo")


def test_class_verdict_counts_feasible_nodes_and_skips_empty_classes() -> None:
    state = cluster()
    j = job("j", {"cpu": 1000})
    v = class_verdict(state, j, 0)
    assert (sorted(v.aligned), v.nodes_ok) == ([0, 1], 3)
    assert [type(f).__name__ for f in v.node_filters] == ["ResourcesFit"]
    state.remove_node("a1")
    state.remove_node("a2")  # class 0 is empty now, class 1 comes after it
    v = class_verdict(state, j, 0)
    assert (sorted(v.aligned), v.nodes_ok) == ([1], 1)
    near = job("near", {"cpu": 1000}, affinity=(
        Affinity(parse_selector("facility=oslo"), required=True),))
    assert [type(f).__name__ for f in class_verdict(state, near, 0).node_filters] == [
        "ResourcesFit"]


def test_class_verdict_asks_for_a_device_check_on_classes_with_unlike_devices() -> None:
    state = _gpu_state()
    j = job("j", {"gpu": 1}, constraints=parse_constraints("gpu.model=H100"))
    v = class_verdict(state, j, 0)
    assert v.device_check == {_class_of(state, "g").id}
    assert [type(f).__name__ for f in v.node_filters] == ["ResourcesFit", "DeviceConstraints"]
    plain = class_verdict(state, job("p", {"gpu": 1}), 0)
    assert (plain.device_check, [type(f).__name__ for f in plain.node_filters]) == (
        set(), ["ResourcesFit"])


def test_class_level_reasons_of_ready_capacity_and_devices() -> None:
    gpus = (Device("g0", "A100", 40 * GI), Device("g1", "H100", 80 * GI),
            Device("g2", "H100", 80 * GI))
    state = ClusterState([
        Node("g", {"cpu": 8000}, devices={"gpu": gpus}),
        Node("l", {"cpu": 4000, "gpu": 2}, labels={"gpu.model": "H100"}),
        Node("m", {"cpu": 4000, "gpu": 2}, labels={"gpu.model": "H100", "gpu.memory": "80Gi"}),
        Node("d", {"cpu": 4000}, state=NodeState.DRAINING),
        Node("u", {"cpu": 4000}, health=Health.UNHEALTHY),
        Node("h", {"cpu": 4000}, health=Health.DEGRADED),
    ])
    g, lab, mem, drain, sick, weak = (_class_of(state, n) for n in "glmduh")
    j = job("j", {"cpu": 4000})
    ready = NodeReady()
    assert ready.check_class(j, j.tasks[0], drain) == Reason(
        "NodeReady", Code.NOT_READY, Kind.CONDITION, "node is draining")
    assert ready.check_class(j, j.tasks[0], sick) == Reason(
        "NodeReady", Code.UNHEALTHY, Kind.CONDITION, "node is unhealthy")
    assert ready.check_class(j, j.tasks[0], weak) is None
    fit = ResourcesFit()
    assert fit.check_class(j, j.tasks[0], lab) is None  # exactly the capacity
    big = job("big", {"cpu": 12000, "gpu": 1})
    assert fit.check_class(big, big.tasks[0], lab) == Reason(
        "ResourcesFit", Code.CAPACITY, Kind.NEVER, "cpu: node capacity 4 < 12 requested",
        "cpu", 12000, 4000)
    tpu = job("tpu", {"cpu": 1000, "tpu": 1})
    assert fit.check_class(tpu, tpu.tasks[0], lab) == Reason(
        "ResourcesFit", Code.UNKNOWN_RESOURCE, Kind.NEVER, "node offers no tpu", "tpu", 1, 0)
    dev = DeviceConstraints()

    def gpu_job(n: int, terms: str) -> Job:
        return job("gj", {"cpu": 1000, "gpu": n}, constraints=parse_constraints(terms))

    two = "gpu.model=H100,gpu.memory>=40Gi"
    for n, terms, cls, reason in [
        (2, two, g, None),
        (3, two, g, Reason("DeviceConstraints", Code.DEVICE, Kind.NEVER,
                           f"needs 3 gpu with {two}; node has 2", "gpu", 3, 2)),
        (3, "", g, None),
        (1, "gpu.model=H100", lab, None),
        (1, "gpu.model=A100", lab, Reason("DeviceConstraints", Code.DEVICE, Kind.NEVER,
                                          "device gpu does not match gpu.model=A100",
                                          "gpu", 1, 0)),
        (1, two, lab, Reason("DeviceConstraints", Code.DEVICE, Kind.NEVER,
                             "device gpu does not match gpu.memory>=40Gi", "gpu", 1, 0)),
        (1, two, mem, None),
    ]:
        gj = gpu_job(n, terms)
        assert dev.check_class(gj, gj.tasks[0], cls) == reason, (n, terms, cls.labels)


def test_a_device_check_on_one_class_leaves_the_other_buckets_whole() -> None:
    # m0's devices differ, so its class is checked node by node; the four
    # a-nodes stay one candidate, and the walk reaches b0, which the
    # preferred affinity picks. Offered one by one, the a-nodes alone would
    # fill the walk's four candidates and a0 would win.
    def h100(name: str, cpu: int, zone: str) -> Node:
        return Node(name, {"cpu": cpu}, labels={"zone": zone},
                    devices={"gpu": (Device("h0", "H100", 80 * GI),)})

    state = ClusterState([
        *(h100(f"a{i}", 2000, "a") for i in range(4)), h100("b0", 4000, "b"),
        Node("m0", {"cpu": 8000}, devices={"gpu": (
            Device("x0", "A100", 40 * GI), Device("x1", "H100", 80 * GI))}),
    ])
    j = job("j", {"cpu": 1000, "gpu": 1}, constraints=parse_constraints("gpu.model=H100"),
            affinity=(Affinity(parse_selector("zone=b"), weight=5),))
    r = schedule_cycle(state, [j], 0.0, SchedulerConfig(strategy="binpack"))
    assert [(t.node, t.devices) for t in r.placements[0].tasks] == [("b0", {"gpu": ("h0",)})]


def test_device_terms_of_every_family_are_checked_on_labels() -> None:
    # No device lists: the gpu term passes on the labels, the fpga one fails.
    state = ClusterState([Node("l", {"cpu": 4000, "gpu": 1, "fpga": 1},
                               labels={"gpu.model": "H100", "fpga.model": "U250"})])
    terms = parse_constraints("gpu.model=H100, fpga.model=VU9P", device_families=("gpu", "fpga"))
    j = job("j", {"gpu": 1, "fpga": 1}, constraints=terms)
    assert DeviceConstraints().check_class(j, j.tasks[0], _class_of(state, "l")) == Reason(
        "DeviceConstraints", Code.DEVICE, Kind.NEVER, "device fpga does not match fpga.model=VU9P",
        "fpga", 1, 0)
