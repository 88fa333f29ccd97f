"""The leader's cluster state kept across cycles (``service/jobs/clusterview.py``)
equals one built afresh from the ledger after grants, releases, starts and
ends, node changes and a change of leader; it is kept while the nodes and
the epoch stay, built afresh when they change, and never handed back by a
cycle that failed."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node, NodeState, ReleaseReason
from apportion.core.scheduling import ClusterState, CycleResult, schedule_cycle
from apportion.exceptions import ApportionError
from apportion.service.settings import Settings
from apportion.service.wiring import Services, build
from service.builders import as_leader


def summary(state: ClusterState, now: float) -> dict[str, Any]:
    """Everything a decision reads from a state, in a form that does not
    depend on the order things were added (a dict's order, a bucket's id)."""
    resources = sorted({r for cls in state.classes for r in cls.resources})
    return {
        "nodes": {name: (rec.node, rec.free, rec.cls.id, dict(rec.jobs),
                         {r: list(ids) for r, ids in rec.free_devices.items()})
                  for name, rec in state.nodes.items()},
        "classes": sorted((c.id, c.size, tuple(c.free_sum)) for c in state.classes),
        "buckets": sorted((b.cls.id, b.free, tuple(b.nodes)) for b in state.buckets()),
        "index": {r: [e[:3] for e in state.index(r) or ()] for r in resources},
        "running": dict(state.running),
        "ends": list(state.ends),
        "usage": {q: {r: v for r, v in state.usage(q).items() if v}
                  for q in state.queues_in_use() if any(state.usage(q).values())},
        "free": state.free_total(), "capacity": state.capacity_total(),
        "lowest": state.lowest_preemptible_priority(),
        "past": {n: {r: v for r, v in held.items() if v}
                 for n, held in state.past_estimate(now).items() if any(held.values())},
        "past_ids": list(state.past_ids(now)),
    }


def assert_level(s: Services) -> ClusterState:
    """The kept state, brought level, equals a fresh build; returns it.
    Compared on a copy: reading the estimates past a time moves the state's
    own bookkeeping of them (``past_estimate``), and the kept state must
    reach the next cycle as the last left it."""
    scheduler = s.jobs.scheduler
    kept = scheduler.level_now()
    fresh = scheduler.cluster_state()
    assert kept is not fresh
    for now in (scheduler.clock(), math.inf):
        assert summary(copy.deepcopy(kept), now) == summary(fresh, now)
    return kept


@pytest.fixture
def settings_given() -> dict[str, Any]:
    return {"strategy": "priority"}


def test_the_kept_state_follows_grants_releases_nodes_and_leaders(services: Services) -> None:
    jobs, ledger = services.jobs, services.ledger

    async def scenario() -> None:
        await ledger.register_node(Node("n1", {"cpu": 8000, "memory": 1 << 34}))
        await ledger.register_node(Node("n2", {"cpu": 4000}))
        first = assert_level(services)
        one = await jobs.submit({"resources": {"cpu": "2"}}, "a")
        bag = await jobs.submit({"resources": {"cpu": "1"}, "count": 3}, "b")
        gang = await jobs.submit({"tasks": [{"resources": {"cpu": "1"}, "count": 2}],
                                  "gang": True, "priority": 5, "preemptible": True}, "c")
        await jobs.run_cycle()
        # Placed, granted and started: the same state object, level.
        assert assert_level(services) is first
        # What a cycle does to the state besides placing: a learning
        # strategy's new estimate for a running unit, a victim finished.
        first.reestimate(one.id, 1e9)
        assert assert_level(services) is first
        first.finish(gang.id)
        assert assert_level(services) is first
        plain = await ledger.grant({"cpu": 500}, owner="plain")
        assert assert_level(services) is first
        await jobs.complete(one.id, succeeded=True, exit_code=0)
        await jobs.cancel(bag.id)
        await ledger.release(plain.id, ReleaseReason.RELEASED)
        await jobs.run_cycle()
        assert assert_level(services) is first
        # A node's change, a new node, a node gone: built afresh, level.
        await ledger.set_node_state("n2", NodeState.DRAINING)
        drained = assert_level(services)
        assert drained is not first
        await ledger.register_node(Node("n3", {"cpu": 2000}))
        await jobs.submit({"resources": {"cpu": "2"}, "count": 2}, "d")
        await jobs.run_cycle()
        added = assert_level(services)
        assert added is not drained
        await ledger.delete_node("n3", force=True)
        await jobs.run_cycle()
        gone = assert_level(services)
        assert gone is not added
        # Another epoch: built afresh, though nothing else changed.
        await services.leadership.stop()
        await services.leadership.campaign_round()
        assert services.leadership.is_leader
        assert assert_level(services) is not gone
        assert jobs.live[gang.id].state in ("scheduled", "running")

    as_leader(services, scenario)


def test_a_cycle_that_fails_keeps_nothing(services: Services,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, ledger = services.jobs, services.ledger

    async def scenario() -> None:
        await ledger.register_node(Node("n1", {"cpu": 4000}))
        kept = assert_level(services)
        await jobs.submit({"resources": {"cpu": "1"}}, "a")
        calls = []

        def boom(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            raise RuntimeError("the core failed")

        monkeypatch.setattr("apportion.service.jobs.scheduling.schedule_cycle", boom)
        with pytest.raises(RuntimeError):
            await jobs.run_cycle()
        monkeypatch.undo()
        assert calls == [1]
        again = assert_level(services)
        assert again is not kept  # the failed cycle's state was not handed back
        await jobs.run_cycle()
        assert assert_level(services) is again

    as_leader(services, scenario)


OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 4), st.integers(1, 3), st.booleans(),
              st.integers(0, 3), st.booleans()),
    st.tuples(st.just("gpu"), st.integers(1, 2), st.integers(1, 3), st.booleans(),
              st.integers(0, 3), st.integers(0, 60)),
    st.tuples(st.just("array"), st.integers(1, 4), st.integers(2, 4), st.integers(0, 60)),
    st.tuples(st.just("tick"), st.sampled_from([1, 5, 30, 100])),
    st.tuples(st.just("cycle")),
    st.tuples(st.just("end"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("grant"), st.integers(1, 3)),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("node"), st.integers(2, 8)),
    st.tuples(st.just("state"), st.integers(0, 20),
              st.sampled_from([NodeState.DRAINING, NodeState.READY, NodeState.CORDONED])),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("leader")),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(OPS, st.booleans()), min_size=1, max_size=20),
       st.sampled_from(["priority", "fairshare"]))
def test_after_any_steps_the_kept_state_equals_a_fresh_one(
        steps: list[tuple[tuple[Any, ...], bool]], strategy: str) -> None:
    """Step by step the kept state equals a fresh build, and every cycle
    decides on it as on a fresh build: the same placements, reservations,
    preemptions and answers, in the same order. A step may end with a cycle
    (most do something), so cycles meet what several steps changed too."""
    with tempfile.TemporaryDirectory() as tmp:
        s = build(Settings(data_dir=Path(tmp), database_url=None, admin_token=None,
                           config_file=None, strategy=strategy))
        clock = [1000.0]
        s.jobs.scheduler.clock = s.ledger.clock = s.jobs.clock = lambda: clock[0]
        with pytest.MonkeyPatch.context() as m:
            m.setattr("apportion.service.jobs.scheduling.schedule_cycle", _against_fresh(s))
            try:
                as_leader(s, lambda: _replay(s, steps, clock))
            finally:
                s.uow.close()


def test_a_preempting_cycle_decides_as_on_a_fresh_build(services: Services,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Preemptions are rare in the steps above; here a cycle preempts on the
    kept state (a victim the last cycle started), compared with a fresh one."""
    jobs, ledger = services.jobs, services.ledger
    monkeypatch.setattr("apportion.service.jobs.scheduling.schedule_cycle",
                        _against_fresh(services))

    async def scenario() -> None:
        await ledger.register_node(Node("n0", {"cpu": 4000}))
        await ledger.register_node(Node("g0", {"cpu": 4000},
                                        devices={"gpu": (Device("G0"), Device("G1"))}))
        kept = assert_level(services)
        low = [await jobs.submit({"resources": {"cpu": "2"}, "count": 4, "preemptible": True}, "a"),
               await jobs.submit({"resources": {"gpu": "2"}, "preemptible": True}, "a")]
        await jobs.run_cycle()
        assert assert_level(services) is kept
        await jobs.submit({"resources": {"cpu": "3"}, "priority": 5}, "b")
        await jobs.submit({"resources": {"gpu": "1"}, "priority": 5, "runtime_estimate": "60s"},
                          "b")
        await jobs.run_cycle()
        victims = {p.victim.split("#")[0] for p in jobs.scheduler.last_cycle.preemptions}
        assert victims == {j.id for j in low}  # two of the bag's tasks, and the GPU job
        assert assert_level(services) is kept

    as_leader(services, scenario)


def _against_fresh(s: Services) -> Any:
    """``schedule_cycle`` that decides on a fresh build first, then on the
    kept state it is given, and asserts the two decisions are the same."""
    real = schedule_cycle

    def decide(state: ClusterState, **kw: Any) -> CycleResult:
        fresh = real(s.jobs.scheduler.cluster_state(), **kw)
        kept = real(state, **kw)
        assert _decisions(kept) == _decisions(fresh)
        return kept

    return decide


def _decisions(r: CycleResult) -> tuple[Any, ...]:
    return ([(p.job_id, p.tasks) for p in r.placements], list(r.reservations),
            list(r.preemptions), list(r.unplaced.items()))


async def _replay(s: Services, steps: list[tuple[tuple[Any, ...], bool]],
                  clock: list[float]) -> None:
    jobs, ledger = s.jobs, s.ledger
    await ledger.register_node(Node("n0", {"cpu": 8000}))
    await ledger.register_node(Node("g0", {"cpu": 8000},
                                    devices={"gpu": tuple(Device(f"G{i}") for i in range(4))}))
    submitted: list[str] = []
    plain: list[str] = []
    made = 1
    for op, then_cycle in steps:
        kind = op[0]
        with _refusals():
            if kind == "submit":
                _, cpu, count, gang, priority, preemptible = op
                row = await jobs.submit({"resources": {"cpu": str(cpu)}, "count": count,
                                         "gang": gang, "priority": priority,
                                         "preemptible": preemptible}, "u")
                submitted.append(row.id)
            elif kind == "gpu":
                _, gpus, count, gang, priority, est = op
                row = await jobs.submit({"resources": {"gpu": str(gpus)}, "count": count,
                                         "gang": gang, "priority": priority, "preemptible": True,
                                         **_estimate(est)}, "v")
                submitted.append(row.id)
            elif kind == "array":
                _, cpu, n, est = op
                row = await jobs.submit({"resources": {"cpu": str(cpu)}, "array": n,
                                         **_estimate(est)}, "u")
                submitted.append(row.id)
            elif kind == "tick":
                clock[0] += op[1]
            elif kind == "cycle":
                await jobs.run_cycle()
            elif kind == "end" and submitted:
                job_id = submitted[op[1] % len(submitted)]
                if op[2]:
                    await jobs.complete(job_id, succeeded=True, exit_code=0)
                else:
                    await jobs.cancel(job_id)
            elif kind == "grant":
                plain.append((await ledger.grant({"cpu": op[1] * 1000}, owner="p")).id)
            elif kind == "release" and plain:
                await ledger.release(plain[op[1] % len(plain)], ReleaseReason.RELEASED)
            elif kind == "node":
                await ledger.register_node(Node(f"n{made}", {"cpu": op[1] * 1000}))
                made += 1
            elif kind == "state" and ledger.nodes:
                names = sorted(ledger.nodes)
                await ledger.set_node_state(names[op[1] % len(names)], op[2])
            elif kind == "delete" and ledger.nodes:
                names = sorted(ledger.nodes)
                await ledger.delete_node(names[op[1] % len(names)], force=True)
            elif kind == "leader":
                await s.leadership.stop()
                await s.leadership.campaign_round()
        assert_level(s)
        if then_cycle:
            await jobs.run_cycle()
            assert_level(s)


def _estimate(seconds: int) -> dict[str, str]:
    return {"runtime_estimate": f"{seconds}s"} if seconds else {}


class _refusals:
    """Refusals of the service (no room, an ended job) are steps too."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        return kind is not None and issubclass(kind, ApportionError)


def test_level_runs_on_the_event_loop_or_a_thread(services: Services) -> None:
    """A big cycle brings the state level in the worker thread it decides in."""
    jobs, ledger = services.jobs, services.ledger

    async def scenario() -> None:
        for i in range(40):
            await ledger.register_node(Node(f"n{i:02}", {"cpu": 4000}))
        kept = assert_level(services)
        await jobs.submit({"resources": {"cpu": "1"}, "count": 200}, "a")
        await jobs.run_cycle()  # 40 nodes x 200 tasks: past SMALL_CYCLE
        assert assert_level(services) is kept

    as_leader(services, scenario)
