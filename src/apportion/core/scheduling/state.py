"""The scheduler's picture of the cluster: nodes, free capacity, running jobs.

Nodes, their classes and buckets and the indexes over free capacity are
``capacity.FreeCapacity``, which ``ClusterState`` extends with what runs
where:

* **Running jobs.** Per job, its tasks and the grants they hold; per queue,
  what its running jobs use; per priority, how many preemptible jobs run.
* **Expected ends.** A sorted index of ``(start + estimate, job id)`` over
  running jobs, for backfill plans; and, moved forward with the clock only
  when asked, the jobs past their estimate: what they hold per node
  (``past_estimate``) and their ids in order (``past_ids``).

Every change goes through ``_grant``/``_ungrant`` and running-job bookkeeping,
and inside a transaction (``mark``/``rollback``) each is logged so that a gang
that does not fit, a shadow computation for backfill or a preemption what-if
leaves the state exactly as it found it.

The state is mutable and owned by one caller (the service, or the simulator);
it reads no clock and does no I/O.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import add, sub
from typing import Any

from sortedcontainers import SortedList

from apportion.core.errors import InsufficientResources, InvalidInput, NodeExists, NodeNotFound
from apportion.core.model import Node, validated_node
from apportion.core.reasons import Code, Kind, Reason, refusal
from apportion.core.scheduling.capacity import (
    Bucket,
    FreeCapacity,
    NodeClass,
    NodeRec,
    discard_sorted,
    node_cost,
)
from apportion.core.scheduling.jobs import Job, RunningJob, TaskPlacement

__all__ = [  # the capacity types are re-exported: they lived here
    "Bucket", "ClusterState", "NodeClass", "NodeRec", "node_cost",
]

COMMIT = "Commit"
"""Who refuses a placement that no longer fits when ``start`` records it."""


@dataclass(slots=True)
class _Log:
    """Undo records, kept only while a transaction is open."""

    entries: list[tuple[Any, ...]] = field(default_factory=list)
    depth: int = 0


class ClusterState(FreeCapacity):
    """Nodes, free capacity and running jobs, with indexes for placement."""

    def __init__(self, nodes: Iterable[Node] = (), running: Iterable[RunningJob] = ()) -> None:
        super().__init__()
        self._running: dict[str, RunningJob] = {}
        self._ends = SortedList()
        """``(start + estimate, job id)`` of running jobs with an estimate:
        backfill plans read expected ends in order without sorting them."""
        self._ends_new: dict[str, float] = {}
        """Ends of jobs started since ``_ends`` was last read, not filed in it
        yet: a job that ends before anyone reads the index (every job of a
        replay that keeps up with arrivals) is never filed at all."""
        self._past_until = -math.inf
        self._past: dict[str, dict[str, int]] = {}
        """Per node, what running jobs with ``start + estimate <=
        _past_until`` hold there (see ``past_estimate``)."""
        self._ids_until = -math.inf
        self._past_ids = SortedList()
        """Ids of running jobs with ``start + estimate <= _ids_until``, in
        id order (see ``past_ids``)."""
        self._usage: dict[str, dict[str, int]] = {}
        self._preemptible: dict[int, int] = {}
        """Priority -> running preemptible jobs with it (never 0: a priority
        none run at is dropped, so the lowest is ``min`` of the keys)."""
        self._log = _Log()
        self.changes = 0
        """Bumped by every change that stays (outside a transaction, or when
        the outermost one commits): answers computed at one value still hold
        while it is unchanged."""
        for node in nodes:
            self.add_node(node)
        for rj in running:
            self.start(rj.job, rj.tasks, rj.start, rj.estimate)

    # -- running jobs: reading -------------------------------------------

    @property
    def running(self) -> Mapping[str, RunningJob]:
        return self._running

    def past_estimate(self, now: float) -> Mapping[str, Mapping[str, int]]:
        """Per node, what the running jobs past their estimate at ``now``
        (``start + estimate <= now``) hold there: what frees when they all end
        "now", as a backfill plan expects. Kept up to date as jobs start and
        end, and moved forward with ``now`` job by job (each job once), so a
        busy cluster where most jobs outran their estimates is not summed up
        again every cycle; a ``now`` earlier than the last one starts over.
        (A read-only view: it changes with the state.)"""
        if now < self._past_until:
            self._past_until = -math.inf
            self._past = {}
        if now > self._past_until:
            running = self._running
            self._catch_up(running[job_id] for job_id in self._passing(self._past_until, now))
            self._past_until = now
        return self._past

    def past_ids(self, now: float) -> SortedList:
        """The ids of the running jobs past their estimate at ``now``
        (``start + estimate <= now``), ascending: the order in which a
        backfill plan frees the nodes they run on "now". Kept up to date as
        ``past_estimate`` is, but a cohort that passes its estimate together
        costs one merge of sorted ids here, where ``past_estimate`` adds
        each job to its nodes' sums. (A read-only view.)"""
        if now < self._ids_until:
            self._ids_until = -math.inf
            self._past_ids.clear()
        if now > self._ids_until:
            self._past_ids.update(self._passing(self._ids_until, now))
            self._ids_until = now
        return self._past_ids

    def _passing(self, since: float, now: float) -> list[str]:
        """Ids of the running jobs expected to end in (``since``, ``now``],
        by (end, id)."""
        # ``irange``, not ``bisect_left`` and ``islice``: positions build the
        # list's positional index, which every end filed afterwards (some
        # 1,100 a cycle in ``bench_scheduler.py``) then walks to update
        # (bench/README.md, h29-cycle).
        ends = self.ends.irange((math.nextafter(since, math.inf),),
                                (math.nextafter(now, math.inf),), (True, False))
        return [job_id for _, job_id in ends]

    def _catch_up(self, jobs: Iterable[RunningJob]) -> None:
        """Add what ``jobs`` hold to ``_past``, in one loop: a cohort of jobs
        started together passes its estimate in one cycle (25,000 of them in
        ``bench_scheduler.py``'s cycles at 60 s and 600 s). EASY's one-task
        reservation reads ``past_ids`` first and these sums only when no
        node freed "now" holds its head."""
        past = self._past
        for rj in jobs:
            for tp in rj.tasks:
                held = past.get(tp.node)
                if held is None:
                    held = past[tp.node] = {}
                n = tp.count
                for r, q in tp.resources.items():
                    held[r] = held.get(r, 0) + n * q

    def _drop_past(self, rj: RunningJob) -> None:
        """Take back from ``_past`` what ``rj`` held there (it ended)."""
        past = self._past
        for tp in rj.tasks:
            held = past.setdefault(tp.node, {})
            n = tp.count
            for r, q in tp.resources.items():
                held[r] = held.get(r, 0) - n * q
            if not any(held.values()):
                del past[tp.node]  # nothing held there any more (the node may go)

    @property
    def ends(self) -> SortedList:
        """``(start + estimate, job id)`` of running jobs with an estimate,
        ascending (read only)."""
        new = self._ends_new
        if new:
            self._ends.update([(end, job_id) for job_id, end in new.items()])
            new.clear()
        return self._ends

    def lowest_preemptible_priority(self) -> int | None:
        """The lowest priority of any running preemptible job (None: none run)."""
        return min(self._preemptible, default=None)

    def usage(self, queue: str) -> Mapping[str, int]:
        return self._usage.get(queue, {})

    def queues_in_use(self) -> Iterable[str]:
        return self._usage.keys()

    # -- inventory -------------------------------------------------------

    def add_node(self, node: Node) -> None:
        if node.name in self._recs:
            raise NodeExists(f"node {node.name} already exists", node=node.name)
        node = validated_node(node)
        rec = NodeRec(node, self._class_for(node))
        rec.cls.size += 1
        self._recs[node.name] = rec
        if rec.cls.schedulable:
            self._totals(rec.cls, rec.cls.capacity, rec.free, +1)
            self._enter(rec, rec.free)

    def remove_node(self, name: str) -> list[RunningJob]:
        """Forget a node; jobs with tasks on it stop (and are returned) so the
        caller can requeue them."""
        rec = self.rec(name)
        lost = [self.finish(job_id) for job_id in list(rec.jobs)]
        self._leave(rec)
        if rec.cls.schedulable:
            self._totals(rec.cls, rec.cls.capacity, rec.free, -1)
        rec.cls.size -= 1
        del self._recs[name]
        self.cache.clear()
        return lost

    def update_node(self, node: Node) -> list[RunningJob]:
        """Replace a node's description (state, health, labels, capacity).
        Jobs whose tasks no longer fit on it are stopped and returned."""
        old = self.rec(node.name)
        keep = [self._running[j] for j in old.jobs]
        for rj in keep:
            self._release_running(rj)
        self._leave(old)
        if old.cls.schedulable:
            self._totals(old.cls, old.cls.capacity, old.free, -1)
        old.cls.size -= 1
        del self._recs[node.name]
        self.cache.clear()
        self.add_node(node)
        lost: list[RunningJob] = []
        for rj in keep:
            try:
                self.start(rj.job, rj.tasks, rj.start, rj.estimate)
            except (InsufficientResources, NodeNotFound, InvalidInput):
                lost.append(rj)
        return lost

    # -- grants ------------------------------------------------------------

    def grant(
        self,
        rec: NodeRec,
        aligned: tuple[int, ...],
        n: int,
        job_id: str,
        devices: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Take ``n`` tasks of ``aligned`` (a request laid out as the node's
        class vector) on ``rec`` for ``job_id``; the caller checked the fit."""
        # Copied in C for one task without devices (``_grant_one`` in
        # _freeindex_c.pyx): change both together. test_sched_pick_native's
        # test_the_same_results_state_and_index_as_the_python_walk and
        # test_the_compiled_grant_is_logged_and_rolled_back_as_the_python_one
        # compare them.
        old = rec.free
        # One task (most grants): the new vector in one C call.
        new = (tuple(map(sub, old, aligned)) if n == 1 else
               tuple([f - n * q for f, q in zip(old, aligned, strict=True)]))
        self._move(rec, old, new)
        if devices:
            for r, ids in devices.items():
                pool = rec.free_devices[r]
                k = len(ids)
                if tuple(pool[:k]) == ids:
                    # The first free ones (``devices.choose`` without links).
                    rec.free_devices[r] = pool[k:]
                    continue
                taken = set(ids)
                rec.free_devices[r] = [d for d in pool if d not in taken]
        rec.jobs[job_id] = rec.jobs.get(job_id, 0) + n
        if self._log.depth:
            self._log.entries.append(("g", rec, aligned, n, job_id, devices))
        else:
            self.changes += 1

    def ungrant(
        self,
        rec: NodeRec,
        aligned: tuple[int, ...],
        n: int,
        job_id: str,
        devices: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        old = rec.free
        new = (tuple(map(add, old, aligned)) if n == 1 else
               tuple([f + n * q for f, q in zip(old, aligned, strict=True)]))
        self._move(rec, old, new)
        if devices:
            for r, ids in devices.items():
                pool = rec.free_devices[r]
                rank = rec.device_rank[r].__getitem__
                if len(ids) == 1:
                    insort(pool, ids[0], key=rank)  # one GPU (most tasks): no sort
                else:
                    pool.extend(ids)
                    pool.sort(key=rank)
        left = rec.jobs[job_id] - n
        if left:
            rec.jobs[job_id] = left
        else:
            del rec.jobs[job_id]
        if self._log.depth:
            self._log.entries.append(("u", rec, aligned, n, job_id, devices))
        else:
            self.changes += 1

    # -- running jobs --------------------------------------------------------

    def start(
        self,
        job: Job,
        tasks: Iterable[TaskPlacement],
        start: float,
        estimate: float | None = None,
    ) -> RunningJob:
        """Record ``job`` as running on ``tasks`` (checked, never oversubscribing);
        used to restore state and by the cycle when it commits a placement."""
        if job.id in self._running:
            raise InvalidInput(f"job {job.id} is already running", field="job")
        tasks = tuple(tasks)
        done: list[tuple[NodeRec, tuple[int, ...], TaskPlacement]] = []
        try:
            for tp in tasks:
                rec = self.rec(tp.node)
                aligned = self.align(rec.cls, tp.resources)
                if aligned is None or any(
                    f < tp.count * q for f, q in zip(rec.free, aligned, strict=True)
                ):
                    raise InsufficientResources(refusal([Reason(
                        COMMIT, Code.CAPACITY, Kind.BUSY, f"cannot hold job {job.id}",
                        node=tp.node)]), nodes_considered=1)
                for r, ids in tp.devices.items():
                    if not set(ids) <= set(rec.free_devices.get(r, ())):
                        raise InsufficientResources(refusal([Reason(
                            COMMIT, Code.DEVICE, Kind.BUSY,
                            f"devices {', '.join(ids)} are not free", node=tp.node)]),
                            nodes_considered=1)
                self.grant(rec, aligned, tp.count, job.id, tp.devices or None)
                done.append((rec, aligned, tp))
        except Exception:
            for rec, aligned, tp in reversed(done):
                self.ungrant(rec, aligned, tp.count, job.id, tp.devices or None)
            raise
        rj = RunningJob(job, start, tasks, estimate)
        self.add_running(rj)
        return rj

    def finish(self, job_id: str) -> RunningJob:
        """Release a running job's resources (it ended, failed, or was preempted)."""
        rj = self._running.get(job_id)
        if rj is None:
            raise InvalidInput(f"job {job_id} is not running", field="job")
        self._release_running(rj)
        return rj

    def _release_running(self, rj: RunningJob) -> None:
        tasks = rj.tasks
        if len(tasks) == 1:
            # One placement (most jobs): what the grouping below comes to for
            # it, without building the groups.
            tp = tasks[0]
            rec = self._recs[tp.node]
            aligned = self.align(rec.cls, tp.resources)
            assert aligned is not None
            self.ungrant(rec, aligned, tp.count, rj.job.id, tp.devices or None)
            self._drop_running(rj)
            return
        # Tasks sharing a bucket, a request and a count go back in one move
        # (a 64-processor gang on one-processor nodes is one step, not 64).
        groups: dict[tuple[int, int, int], tuple[tuple[int, ...], list[NodeRec]]] = {}
        job_id = rj.job.id
        # A node holding several of the job's placements is released one by
        # one: after its first move it no longer sits in the bucket grouped on.
        single = len({tp.node for tp in rj.tasks}) != len(rj.tasks)
        for tp in rj.tasks:
            rec = self._recs[tp.node]
            aligned = self.align(rec.cls, tp.resources)
            assert aligned is not None
            if single or tp.devices or rec.bucket is None:
                self.ungrant(rec, aligned, tp.count, job_id, tp.devices or None)
                continue
            key = (rec.bucket.id, id(tp.resources), tp.count)
            group = groups.get(key)
            if group is None:
                group = groups[key] = (aligned, [])
            group[1].append(rec)
        for (_, _, count), (aligned, recs) in groups.items():
            self.bulk(recs, aligned, count, job_id, -1)
        self._drop_running(rj)

    def bulk(
        self, recs: list[NodeRec], aligned: tuple[int, ...], n: int, job_id: str, sign: int
    ) -> None:
        """Grant (``sign`` 1) or release (-1) ``n`` tasks of ``aligned`` on each
        of ``recs``, which must sit in one bucket: one free-vector computation,
        one bucket lookup and one total update for all of them."""
        if len(recs) == 1:
            if sign > 0:
                self.grant(recs[0], aligned, n, job_id)
            else:
                self.ungrant(recs[0], aligned, n, job_id)
            return
        first = recs[0]
        bucket = first.bucket
        assert bucket is not None and all(r.bucket is bucket for r in recs)
        cls = first.cls
        old = first.free
        step = sign * n
        new = tuple([f - step * q for f, q in zip(old, aligned, strict=True)])
        count = len(recs)
        fs = cls.free_sum
        ft = self._free_total
        names = cls.resources
        for i in range(len(new)):
            d = new[i] - old[i]
            if d:
                ft[names[i]] += d * count
                fs[i] += d * count
        key = (cls.id, new)
        target = self._bucket_of.get(key)
        if target is None:
            target = self._new_bucket(cls, new, key)
        nodes = bucket.nodes
        into = target.nodes
        moving = [rec.name for rec in recs]
        if len(moving) == len(nodes):
            nodes.clear()
        elif len(moving) <= 8:
            for name in moving:
                discard_sorted(nodes, name)
        else:
            gone = set(moving)
            nodes[:] = [name for name in nodes if name not in gone]
        into.extend(moving)
        into.sort()
        for rec in recs:
            rec.bucket = target
            rec.free = new
            jobs = rec.jobs
            left = jobs.get(job_id, 0) + step
            if left:
                jobs[job_id] = left
            else:
                del jobs[job_id]
        if not nodes:
            self._drop_bucket(bucket)
        if self._log.depth:
            self._log.entries.append(("b", recs, aligned, n, job_id, sign))
        else:
            self.changes += 1

    def add_running(self, rj: RunningJob) -> None:
        """Register a job whose grants were made with ``grant`` already
        (one name: the cycle calls it once a placement, without a wrapper)."""
        job = rj.job
        self._running[job.id] = rj
        if rj.estimate is not None:
            end = rj.start + rj.estimate
            self._ends_new[job.id] = end
            if end <= self._past_until:
                self._catch_up((rj,))
            if end <= self._ids_until:
                self._past_ids.add(job.id)
        if job.preemptible:
            prio = job.priority
            self._preemptible[prio] = self._preemptible.get(prio, 0) + 1
        used = self._usage.get(job.queue)
        if used is None:
            used = self._usage[job.queue] = {}
        for r, q in job.total.items():
            used[r] = used.get(r, 0) + q
        if self._log.depth:
            self._log.entries.append(("r", rj))
        else:
            self.changes += 1

    def _drop_running(self, rj: RunningJob) -> None:
        job = rj.job
        del self._running[job.id]
        if rj.estimate is not None:
            end = rj.start + rj.estimate
            if self._ends_new.pop(job.id, None) is None:
                self._ends.remove((end, job.id))
            if end <= self._past_until:
                self._drop_past(rj)
            if end <= self._ids_until:
                self._past_ids.remove(job.id)
        if job.preemptible:
            prio = job.priority
            left = self._preemptible[prio] - 1
            if left:
                self._preemptible[prio] = left
            else:
                del self._preemptible[prio]
        used = self._usage[job.queue]
        for r, q in job.total.items():
            used[r] -= q
        if self._log.depth:
            self._log.entries.append(("d", rj))
        else:
            self.changes += 1

    def reestimate(self, job_id: str, estimate: float) -> None:
        """Give a running job a new run time estimate (one that outran its
        old one): its expected end moves in the index of ends."""
        self.replace_running(replace(self._running[job_id], estimate=estimate))

    def replace_running(self, rj: RunningJob) -> None:
        """Put ``rj`` in the place of the running job with its id, whose tasks
        it holds (the caller's word: they are not compared here): the job's
        value, start and estimate change, its grants stay. The service's
        kept state turns a unit the cycle started into the one its ledger
        shows this way, instead of a release and a grant."""
        self._drop_running(self._running[rj.job.id])
        self.add_running(rj)

    # -- transactions ----------------------------------------------------------

    def mark(self) -> int:
        """Open a transaction; returns the point ``rollback`` returns to."""
        self._log.depth += 1
        return len(self._log.entries)

    def rollback(self, mark: int) -> None:
        """Undo everything since ``mark`` and close that transaction."""
        entries = self._log.entries
        while len(entries) > mark:
            entry = entries.pop()
            kind = entry[0]
            if kind == "b":
                self._undo_bulk(entry)
            elif kind == "g":
                self._undo_grant(entry)
            elif kind == "u":
                self._undo_ungrant(entry)
            elif kind == "r":
                self._undo_add_running(entry[1])
            else:
                self._undo_drop_running(entry[1])
        self._close(mark)

    def commit(self, mark: int) -> None:
        """Keep everything since ``mark`` and close that transaction."""
        if self._log.depth == 1 and len(self._log.entries) > mark:
            self.changes += 1
        self._close(mark)

    def _close(self, mark: int) -> None:
        # A nested transaction's records stay in the log: the outer one may
        # still roll back through them.
        self._log.depth -= 1
        if self._log.depth == 0:
            self._log.entries.clear()

    def _undo_bulk(self, entry: tuple[Any, ...]) -> None:
        _, recs, aligned, n, job_id, sign = entry
        depth, self._log.depth = self._log.depth, 0
        changes = self.changes
        self.bulk(recs, aligned, n, job_id, -sign)
        self._log.depth, self.changes = depth, changes

    def _undo_grant(self, entry: tuple[Any, ...]) -> None:
        _, rec, aligned, n, job_id, devices = entry
        depth, self._log.depth = self._log.depth, 0
        changes = self.changes
        self.ungrant(rec, aligned, n, job_id, devices)
        self._log.depth, self.changes = depth, changes

    def _undo_ungrant(self, entry: tuple[Any, ...]) -> None:
        _, rec, aligned, n, job_id, devices = entry
        depth, self._log.depth = self._log.depth, 0
        changes = self.changes
        self.grant(rec, aligned, n, job_id, devices)
        self._log.depth, self.changes = depth, changes

    def _undo_add_running(self, rj: RunningJob) -> None:
        depth, self._log.depth = self._log.depth, 0
        changes = self.changes
        self._drop_running(rj)
        self._log.depth, self.changes = depth, changes

    def _undo_drop_running(self, rj: RunningJob) -> None:
        depth, self._log.depth = self._log.depth, 0
        changes = self.changes
        self.add_running(rj)
        self._log.depth, self.changes = depth, changes

    # -- copies ----------------------------------------------------------------

    def copy(self) -> ClusterState:
        """An independent state with the same nodes and running jobs."""
        return ClusterState(
            (rec.node for rec in self._recs.values()), list(self._running.values())
        )
