"""The cluster as the core sees it: ``ClusterView``, what a ``ClusterState``
is built from (copied on the event loop, so that it can be built in a worker
thread), and ``KeptCluster``, the leader's state kept from one cycle to the
next.

Why keep it: building the state afresh for every cycle was 16 % of the
server's CPU in ``bench_e2e.py`` (bench/README.md, h27-e2e), and it threw
away what the core learns about a state between cycles (class verdicts and
shape keys in ``state.cache``). The simulator has always kept one state.

How it stays true to the ledger: the ledger's memory and the job cache stay
the source (they in turn are a cache of the database). Before each cycle the
kept state is brought level with them unit by unit: a unit whose inputs
(``UnitKey``: its job, its allocations, its start and whether it is being
stopped) are the ones it was started from, and that the state still holds as
that very ``RunningJob``, stays; every other unit is finished, and started
again as a fresh build starts it. So whatever the last cycle did to the state
(its placements, held as the cycle's own ``RunningJob``; its victims; a
learning strategy's re-estimates) is undone or replaced, and allocations
granted or released anywhere else (another server's, read back by
``sync_from_store``) are taken as they are. The state is built afresh
instead when the ledger's nodes changed (the ledger makes a new mapping
then; a fresh build numbers node classes in node order, which orders the
placement walk's ties), when the leader's epoch is another, and after a cycle
that failed or was abandoned (its state is never handed back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from apportion.core.model import Allocation, Node
from apportion.core.scheduling import ClusterState, Job, RunningJob, TaskPlacement, TaskSpec
from apportion.service.jobs.cache import LiveJob
from apportion.service.jobs.model import JOB_LABEL, LEASE_QUEUE, TASK_LABEL, unit_job_id

UnitKey = tuple[Job | None, tuple[Allocation, ...], float, bool]
"""What a running unit is built from: its job (None: a plain allocation,
shown as a lease), its active allocations, its start, and whether its
processes are being stopped."""


@dataclass(frozen=True)
class ClusterView:
    """What the core's ``ClusterState`` is built from, copied on the event
    loop so that it can be built elsewhere: nodes (and ``extra`` nodes that
    are not in the ledger: a pool's nodes to come, never placed on), the
    active allocations, the live jobs, and the allocations whose processes
    are being stopped. ``nodes_key`` is the ledger's node mapping the nodes
    were read from (None with extra nodes): the same mapping means the same
    nodes."""

    nodes: list[Node]
    allocations: list[Allocation]
    jobs: dict[str, LiveJob]
    stopping: frozenset[str]
    nodes_key: Mapping[str, Node] | None = None

    def units(self) -> dict[str, UnitKey]:
        """Every active allocation as part of a running unit (plain
        allocations as units of their own), by unit id."""
        by_unit: dict[str, list[Allocation]] = {}
        out: dict[str, UnitKey] = {}
        jobs = self.jobs
        for alloc in self.allocations:
            job_id = alloc.labels.get(JOB_LABEL)
            live = jobs.get(job_id) if job_id else None
            if live is None:
                out[f"allocation:{alloc.id}"] = (None, (alloc,), alloc.created_at, False)
                continue
            unit_id = live.unit_id(int(alloc.labels.get(TASK_LABEL, "0")))
            held = by_unit.get(unit_id)
            if held is None:
                by_unit[unit_id] = [alloc]
            else:
                held.append(alloc)
        stopping = self.stopping
        for unit_id, allocs in by_unit.items():
            live = jobs[unit_job_id(unit_id)]
            start = live.row.started_at or min(a.created_at for a in allocs)
            out[unit_id] = (live.unit(unit_id), tuple(allocs), start,
                            bool(stopping) and any(a.id in stopping for a in allocs))
        return out

    def state(self) -> ClusterState:
        """A state built afresh: every unit as ``running_unit`` shows it."""
        return ClusterState(self.nodes, [running_unit(u) for u in self.units().values()])


def running_unit(key: UnitKey) -> RunningJob:
    """A unit as the core sees it running. Plain allocations are units no one
    may preempt; a unit whose processes are being stopped is shown ending
    now and not preemptible, so no second victim is chosen for what it frees."""
    unit, allocs, start, stopping = key
    if unit is None:
        alloc = allocs[0]
        lease = Job(f"allocation:{alloc.id}", (TaskSpec(dict(alloc.resources)),),
                    queue=LEASE_QUEUE, submit_time=alloc.created_at, user=alloc.owner)
        return RunningJob(lease, start,
                          (TaskPlacement(alloc.node, alloc.resources, alloc.devices),))
    tasks = tuple(TaskPlacement(a.node, a.resources, a.devices) for a in allocs)
    estimate = unit.runtime_estimate
    if stopping:
        unit, estimate = replace(unit, preemptible=False), 0.0
    return RunningJob(unit, start, tasks, estimate)


@dataclass
class Kept:
    """A state and what it was made level with."""

    state: ClusterState
    nodes_key: Mapping[str, Node] | None
    epoch: int | None
    built: dict[str, tuple[UnitKey, RunningJob]]
    """Unit id -> the inputs it was started from and the ``RunningJob`` the
    state made of them."""


def level(kept: Kept | None, view: ClusterView, epoch: int | None) -> Kept:
    """``kept`` brought level with ``view``, or a state built afresh where it
    cannot be (see the module's docstring). Pure work on ``kept`` and the view:
    it may run in a worker thread."""
    units = view.units()
    if kept is None or view.nodes_key is None or kept.nodes_key is not view.nodes_key \
            or kept.epoch != epoch:
        return _fresh(view, units, epoch)
    state = kept.state
    running = state.running
    built = kept.built
    # Every finish before any start: a start may need what a finish frees.
    for unit_id, rj in [(u, rj) for u, rj in running.items()
                        if not _same(built.get(u), units.get(u), rj)]:
        key = units.get(unit_id)
        if key is not None:
            fresh = running_unit(key)
            if fresh.tasks == rj.tasks and fresh.job.id == unit_id:
                # Most often a unit the last cycle started, on the tasks its
                # grants hold: only its start and estimate are the cycle's.
                state.replace_running(fresh)
                built[unit_id] = (key, fresh)
                continue
        state.finish(unit_id)
        built.pop(unit_id, None)
    try:
        for unit_id, key in units.items():
            if unit_id not in running:
                rj = running_unit(key)
                built[unit_id] = (key, state.start(rj.job, rj.tasks, rj.start, rj.estimate))
    except Exception:
        # Does not fit: a fresh build meets the same and says so.
        return _fresh(view, units, epoch)
    if len(built) > len(units):
        for unit_id in [u for u in built if u not in units]:
            del built[unit_id]
    return kept


def _same(was: tuple[UnitKey, RunningJob] | None, key: UnitKey | None, rj: RunningJob) -> bool:
    return was is not None and was[1] is rj and was[0] == key


def _fresh(view: ClusterView, units: dict[str, UnitKey], epoch: int | None) -> Kept:
    state = ClusterState(view.nodes, [running_unit(key) for key in units.values()])
    running = state.running
    built = {unit_id: (key, running[unit_id]) for unit_id, key in units.items()}
    return Kept(state, view.nodes_key, epoch, built)


class KeptCluster:
    """The leader's state between cycles. A cycle takes it (``take``), brings
    it level (``level``), decides on it and hands it back (``keep``); a cycle
    that fails or is abandoned never hands it back, so a worker thread still
    deciding on it after a cancel cannot share it with the next cycle, which
    builds afresh."""

    def __init__(self) -> None:
        self._kept: Kept | None = None

    def take(self) -> Kept | None:
        kept, self._kept = self._kept, None
        return kept

    def keep(self, kept: Kept) -> None:
        self._kept = kept
