"""The node model's decisions on a fleet of identical GPU nodes, from free
counts, for as long as every job starts the cycle it arrives in.

Philly's replay runs on 300 nodes of 8 GPUs, and at its load no job ever
waits: each cycle starts every pending job. What ``schedule_cycle`` then
decides is where each task goes, and on identical one-resource nodes with
plain devices that follows from each node's free count: the walk takes the
bucket with the least free room that fits (a packing strategy's first
bucket, unscored), its first node by name, and the first free devices in
the node's order (``lone.take_lone``; ``framework.Placer._take`` for the
tasks of a gang, one node's share of the bucket's fit at a time, the
hardest group first). ``GpuFleet`` keeps free counts, free devices as bit
masks and buckets of node numbers (numbered in name order), and places each
job as the walk would, in the order the strategy gives (``order`` on a view
of the queues' use, as the cycle calls it).

The first time a job would not start (no bucket fits it), the cycle leaves
everything as it was, and ``handover`` writes the running jobs into the
replay's ``ClusterState`` (same nodes, same devices, same estimates): from
that cycle on the node model decides, EASY's reservation, backfilling and
all. Which is exact because the state after the handover holds what the
node model's would hold, and every decision reads only that.

``eligible`` says when a replay may start here; ``tests/core/test_gpufleet.py``
checks on generated GPU traces that every job starts at the same instant as
on the node model alone, waits and handovers included.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Mapping, Sequence
from typing import Any

from sortedcontainers import SortedList

from apportion.core.model import Health, Node, NodeState
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.cycleconfig import INF, SchedulerConfig, estimator
from apportion.core.scheduling.jobs import Job, Queue, TaskPlacement
from apportion.core.scheduling.policies import FairShare, OrderContext, strategy
from apportion.core.scheduling.state import ClusterState

Grant = tuple[int, int, int]
"""One task's grant: (node number, GPUs, device bits)."""


def eligible(nodes: Sequence[Node], jobs: Sequence[Job], config: SchedulerConfig,
             queues: Mapping[str, Queue]) -> tuple[str, int] | None:
    """(resource, per-node amount) when the replay may start on a ``GpuFleet``:
    identical ready nodes of one resource whose devices (one per unit, no
    attributes) are all it has; jobs of that resource alone, each task
    within a node, no constraints, affinity, deadline or preemption; a
    packing strategy; no conservative plan, quota or cycle limit."""
    if (not nodes or config.backfill == "conservative" or config.max_placements is not None
            or config.queue_required or any(q.quota for q in queues.values())):
        return None
    strat = strategy(config.strategy)
    if not strat.options.first_is_best or not strat.options.pack:
        return None
    first = nodes[0]
    if len(first.resources) != 1:
        return None
    ((resource, amount),) = first.resources.items()
    devices = first.devices.get(resource, ())
    if (set(first.devices) != {resource} or len(devices) != amount
            or any(d.attrs for d in devices) or len({d.id for d in devices}) != amount):
        return None
    for node in nodes:
        if (node.resources != first.resources or node.labels != first.labels
                or node.devices != first.devices or node.specs != first.specs
                or node.state is not NodeState.READY or node.health is not Health.HEALTHY):
            return None
    for job in jobs:
        if (job.constraints or job.affinity or job.anti_affinity or job.preemptible
                or job.deadline is not None):
            return None
        for spec in job.tasks:
            q = spec.resources.get(resource, 0)
            if len(spec.resources) != 1 or not 0 < q <= amount or spec.count < 1:
                return None
    return resource, amount


class _View:
    """What queue policies read of the state (fair share: capacity, each
    queue's use), answered from the fleet's counts."""

    def __init__(self, fleet: GpuFleet) -> None:
        self._fleet = fleet

    def capacity_total(self) -> dict[str, int]:
        return {self._fleet.resource: self._fleet.total}

    def usage(self, queue: str) -> Mapping[str, int]:
        return self._fleet.usage.get(queue, {})


class GpuFleet:
    """Free GPUs and devices per node, running jobs' grants, the queues' use."""

    def __init__(self, nodes: Sequence[Node], resource: str, amount: int,
                 config: SchedulerConfig, queues: Mapping[str, Queue],
                 history: RuntimeHistory | None) -> None:
        self.resource, self.amount = resource, amount
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.total = amount * len(nodes)
        self.free_total = self.total
        self.free = [amount] * len(nodes)
        self.masks = [(1 << amount) - 1] * len(nodes)
        """Free devices by their place in the node's device order."""
        self.buckets: list[list[int]] = [[] for _ in range(amount + 1)]
        """Node numbers (name order) by free count, ascending."""
        self.buckets[amount] = list(range(len(nodes)))
        self.config, self.queues = config, queues
        self.strat = strategy(config.strategy)
        self.estimate = estimator(self.strat, history, config.default_estimate)
        self.history = history if self.strat.learns else None
        self._bound = config.aging_bound_s if config.backfill != "none" else INF
        self.running: dict[str, list[Any]] = {}
        """Job id -> [job, start, estimate, grants]."""
        self.ends = SortedList()
        """Learning strategies: (start + estimate, job id), for the correction."""
        self.usage: dict[str, dict[str, int]] = {}
        """Each queue's use, kept for the one order that reads it (fair share)."""
        self._fair = isinstance(self.strat.order, FairShare)
        self._view = _View(self)

    # -- one cycle ---------------------------------------------------------------

    def cycle(self, pending: list[Job], now: float) -> list[tuple[str, float | None]] | None:
        """(job id, estimate) of every job, in the order the cycle starts
        them; None, with nothing changed, when one would not start now (the
        node model decides that cycle and the rest: ``handover``)."""
        if self.history is not None:
            self._correct(now)  # as the cycle does, before anything is planned
        if len(pending) > 1:
            strat = self.strat
            hist = self.history
            ctx = OrderContext(now, self.queues, self._view, self.estimate,
                               self.config.aging_rate, self._bound,
                               None if hist is None else hist.rank,
                               None if hist is None else hist.ranks)
            pending = strat.order.order(pending, ctx)
        started: list[tuple[str, float | None]] = []
        for job in pending:
            grants = self._place(job)
            if grants is None:
                for job_id, _ in reversed(started):
                    self.finish(job_id)
                return None
            est = self.estimate(job)
            self._begin(job, now, est, grants)
            started.append((job.id, est))
        return started

    def _place(self, job: Job) -> list[Grant] | None:
        """The grants the walk makes for ``job``, made; None with none made."""
        tasks = job.tasks
        r = self.resource
        grants: list[Grant] = []
        if len(tasks) == 1:
            spec = tasks[0]
            if spec.count == 1:
                return self._one(spec.resources[r], grants)
            order: Sequence[int] = (0,)
        else:
            # ``framework._hardness``: the largest share of free room first
            # (stable among equals), all computed before the first grant.
            free = max(1, self.free_total)
            order = sorted(range(len(tasks)),
                           key=lambda i: -(tasks[i].resources[r] * tasks[i].count / free))
        for i in order:
            spec = tasks[i]
            if not self._group(spec.resources[r], spec.count, grants):
                self._release(grants)
                return None
        return grants

    def _one(self, q: int, grants: list[Grant]) -> list[Grant] | None:
        buckets = self.buckets
        f = q
        while not buckets[f]:
            f += 1
            if f > self.amount:
                return None
        node = buckets[f][0]
        grants.append((node, q, self._take(node, f, q)))
        return grants

    def _group(self, q: int, count: int, grants: list[Grant]) -> bool:
        """``Placer._place_group`` on the fleet: the first bucket that fits a
        task, as many tasks a node as it fits, over as many of the bucket's
        first nodes as the rest needs; again until all are placed."""
        buckets = self.buckets
        remaining = count
        while remaining:
            f = q
            while not buckets[f]:
                f += 1
                if f > self.amount:
                    return False
            per = min(f // q, remaining)
            chosen = buckets[f][:min(len(buckets[f]), -(-remaining // per))]
            taken = 0
            for node in chosen:
                n = min(per, remaining - taken)
                for _ in range(n):  # one grant a task, each with its devices
                    grants.append((node, q, self._take(node, self.free[node], q)))
                taken += n
                if taken == remaining:
                    break
            remaining -= taken
        return True

    def _take(self, node: int, f: int, q: int) -> int:
        """Take ``q`` of the ``f`` free GPUs of ``node``: the first free
        devices (``devices.choose``); returns their bits."""
        mask = self.masks[node]
        if q == f:
            bits = mask
        else:
            bits = 0
            left = mask
            for _ in range(q):
                low = left & -left
                bits |= low
                left ^= low
        self.masks[node] = mask ^ bits
        self._move(node, f, f - q)
        return bits

    def _move(self, node: int, old: int, new: int) -> None:
        buckets = self.buckets
        b = buckets[old]
        if b[0] == node:
            del b[0]
        else:
            b.remove(node)
        self.free[node] = new
        self.free_total += new - old
        insort(buckets[new], node)

    def _release(self, grants: Sequence[Grant]) -> None:
        free, masks = self.free, self.masks
        for node, q, bits in grants:
            masks[node] |= bits
            f = free[node]
            self._move(node, f, f + q)

    # -- running jobs ------------------------------------------------------------

    def _begin(self, job: Job, now: float, est: float | None, grants: list[Grant]) -> None:
        self.running[job.id] = [job, now, est, grants]
        if est is not None and self.history is not None:
            self.ends.add((now + est, job.id))
        if not self._fair:
            return
        used = self.usage.get(job.queue)
        if used is None:
            used = self.usage[job.queue] = {}
        for r, q in job.total.items():
            used[r] = used.get(r, 0) + q

    def finish(self, job_id: str) -> None:
        """Release a running job's grants."""
        job, start, est, grants = self.running.pop(job_id)
        self._release(grants)
        if est is not None and self.history is not None:
            self.ends.remove((start + est, job_id))
        if not self._fair:
            return
        used = self.usage[job.queue]
        for r, q in job.total.items():
            used[r] -= q

    def _correct(self, now: float) -> None:
        """``RuntimeHistory.correct``: every running job past its planned end
        at ``now`` gets the estimate its history extends it to (and, as
        ``ClusterState.reestimate`` does, goes to the end of the running jobs)."""
        assert self.history is not None
        ends = self.ends
        cut = int(ends.bisect_left((math.nextafter(now, math.inf),)))
        if not cut:
            return
        running = self.running
        for end, job_id in list(ends.islice(0, cut)):
            rec = running.pop(job_id)
            job, start, est = rec[0], rec[1], rec[2]
            new = self.history.extend_run(job, start, est, now)
            ends.remove((end, job_id))
            ends.add((start + new, job_id))
            rec[2] = new
            running[job_id] = rec

    def handover(self, state: ClusterState) -> None:
        """Write the running jobs into ``state`` (the replay's, with no job
        running yet) as the node model would hold them."""
        r = self.resource
        nodes = self.nodes
        ids = [d.id for d in self.nodes[0].devices[r]] if nodes else []
        for job, start, est, grants in self.running.values():
            specs = {q: spec.resources for spec in job.tasks
                     for q in (spec.resources[r],)}
            tasks = tuple(
                TaskPlacement(nodes[node].name, specs[q],
                              {r: tuple(ids[k] for k in range(len(ids)) if bits >> k & 1)}, 1)
                for node, q, bits in grants)
            state.start(job, tasks, start, est)
