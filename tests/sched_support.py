"""Recounts of what ``ClusterState`` keeps incrementally, for the scheduler's tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st
from sortedcontainers import SortedList

from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskPlacement, job
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.jobs import RunningJob

P = 1000  # one processor
GI = 2**30


def zoned(running: list[tuple[int, int, float]]) -> ClusterState:
    """Four nodes (4 processors, 8 GiB) of two zones, with the running jobs
    ``(node, cpu, end)`` (each also holding 1 GiB) that fit."""
    state = ClusterState([
        Node(f"n{i}", {"cpu": 4 * P, "memory": 8 * GI}, labels={"zone": f"z{i % 2}"})
        for i in range(4)
    ])
    for k, (node, cpu, end) in enumerate(running):
        name = f"n{node}"
        if state.free(name)["cpu"] < cpu:
            continue
        j = job(f"r{k}", {"cpu": cpu, "memory": GI}, runtime_estimate=end)
        state.start(j, [TaskPlacement(name, {"cpu": cpu, "memory": GI})], 0.0, end)
    return state


def looked_at(monkeypatch: Any, module: Any) -> list[str]:
    """The ids of the jobs ``module._backfill`` is called with, from now on."""
    looked: list[str] = []
    backfill = module._backfill

    def counted(p: Any, j: Job) -> None:
        looked.append(j.id)
        backfill(p, j)

    monkeypatch.setattr(module, "_backfill", counted)
    return looked


def nodes(n: int, cpu: int = 2 * P) -> ClusterState:
    """``n`` nodes of ``cpu`` alone."""
    return ClusterState([Node(f"n{i}", {"cpu": cpu}) for i in range(n)])


def hold(state: ClusterState, job_id: str, where: list[str], start: float,
         est: float | None, cpu: int = P) -> None:
    """A job of one task on each of ``where`` started at ``start``."""
    j = job(job_id, {"cpu": cpu}, count=len(where), runtime_estimate=est)
    state.start(j, [TaskPlacement(n, {"cpu": cpu}) for n in where], start, est)


def past_recounted(state: ClusterState, now: float) -> dict[str, dict[str, int]]:
    """Per node, what the running jobs past their estimate at ``now`` hold
    (``ClusterState.past_estimate``), summed from the running jobs."""
    out: dict[str, dict[str, int]] = {}
    for rj in state.running.values():
        if rj.estimate is None or rj.start + rj.estimate > now:
            continue
        for tp in rj.tasks:
            held = out.setdefault(tp.node, {})
            for r, q in tp.resources.items():
                held[r] = held.get(r, 0) + q * tp.count
    return out


def replay_steps(state: ClusterState, placer: Placer,
                 steps: Sequence[tuple[bool, Any, int, int]],
                 make: Callable[[int, Any, int, int], Job]) -> list[object]:
    """Place ``make(n, what, count, pick)`` for each step (or, where it says
    so and jobs run, end the ``pick``-th running job) and say what happened."""
    seen: list[object] = []
    for n, (place, what, count, pick) in enumerate(steps):
        if not place and state.running:
            seen.append(end_one(state, pick))
            continue
        j = make(n, what, count, pick)
        result = placer.place(j)
        if result.tasks is not None:
            state.add_running(RunningJob(j, float(n), result.tasks, 10.0))
        seen.append((j.id, result.tasks, result.failure))
    return seen


def end_one(state: ClusterState, pick: int) -> tuple[str, str]:
    """End the ``pick``-th running job by id (modulo their number) and say so."""
    victim = sorted(state.running)[pick % len(state.running)]
    state.finish(victim)
    return ("end", victim)


def free_index(slots: Mapping[str, Any]) -> dict[str, SortedList]:
    """The ledger's index of ``(free amount, node name)`` per resource, built
    from scratch from slots (anything with a ``free`` mapping)."""
    index: dict[str, SortedList] = {}
    for name, slot in slots.items():
        for r, q in slot.free.items():
            index.setdefault(r, SortedList()).add((q, name))
    return index


def books(state: ClusterState) -> object:
    """What a placement path leaves in ``state``: per node its free vector,
    free devices, jobs and bucket; the running jobs, free totals, change
    count and the buckets (two paths held to each other compare these)."""
    return (
        {n: (r.free, dict(r.free_devices), dict(r.jobs), r.bucket and r.bucket.free)
         for n, r in state.nodes.items()},
        dict(state.running), dict(state.free_totals), state.changes,
        sorted((b.cls.id, b.free, tuple(b.nodes)) for b in state.buckets()),
    )


def past_ids_recounted(state: ClusterState, now: float) -> list[str]:
    """The ids of the running jobs past their estimate at ``now``, ascending
    (``ClusterState.past_ids``), from the running jobs."""
    return sorted(job_id for job_id, rj in state.running.items()
                  if rj.estimate is not None and rj.start + rj.estimate <= now)


@st.composite
def mixed_fleets(draw: st.DrawFn, most: int = 12, cpus: Sequence[int] = (2000, 4000, 8000),
                 memories: Sequence[int] = (4, 8, 16), gpus: Sequence[int] = (0, 0, 2, 4)
                 ) -> list[Node]:
    """Up to ``most`` nodes of cpu and memory, some with GPUs (of a model, or
    one of another model: a device check per node), in two zones, a few not
    ready: what the one-task placement paths are held to each other on."""
    out = []
    for i in range(draw(st.integers(1, most))):
        resources = {"cpu": draw(st.sampled_from(cpus)), "memory": draw(st.sampled_from(memories))}
        devices = {}
        labels = {"zone": draw(st.sampled_from(["a", "b"]))}
        n_gpus = draw(st.sampled_from(gpus))
        if n_gpus:
            model = draw(st.sampled_from(["A100", "H100"]))
            mixed = draw(st.integers(0, 5)) == 0
            devices = {"gpu": tuple(Device(f"GPU-{k}", "V100" if mixed and k == 0 else model)
                                    for k in range(n_gpus))}
            resources["gpu"] = n_gpus
            labels["gpu.model"] = model
        state = NodeState.READY if draw(st.integers(0, 9)) else NodeState.DRAINING
        out.append(Node(f"n{i:02d}", resources, devices=devices, labels=labels, state=state))
    return out
