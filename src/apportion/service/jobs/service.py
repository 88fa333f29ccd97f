"""Jobs and queues as users and agents see them, on any server.

Submit, cancel, complete, agent reports and the reads all go to the store:
a job submitted to one server can be cancelled through another, and an
agent may report to whichever server it reaches. This server's cache of the
live jobs (``cache.py``) follows its own transitions at once and the other
servers' through their events (``follow``). The scheduling loop itself
(``scheduling.py``) runs on the leader only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.core.errors import JobRejected
from apportion.core.gpu_shares import splits_offered
from apportion.core.labels import matches
from apportion.core.model import Device, Node, ReleaseReason
from apportion.core.records import JobRow, QueueRow, TaskRow
from apportion.core.resources import fits, format_vector
from apportion.core.scheduling import (
    ClusterState,
    CycleResult,
    Explanation,
    Job,
    JobState,
    Queue,
    RuntimeHistory,
    SchedulerConfig,
    check_comparisons,
    explain,
    validate_job,
)
from apportion.core.scheduling.explain_nodes import NODES_SHOWN, NodeTable, explain_nodes
from apportion.exceptions import InvalidInput, NotFound, NotLeader
from apportion.protocol import Assignment, Stop
from apportion.service.job_specs import (
    as_checked,
    job_from_spec,
    queue_from_row,
    queue_of_stored,
    with_gpu_shares,
)
from apportion.service.jobs import transitions as t
from apportion.service.jobs.cache import JobCache, LiveJob
from apportion.service.jobs.model import (
    ACTIVE_TASK,
    DEFAULT_QUEUE,
    JOB_LABEL,
    WAITING,
    RunPolicy,
    TaskReport,
    new_job_id,
)
from apportion.service.jobs.scheduling import Scheduler, Switch
from apportion.service.jobs.writer import JobWriter
from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store import jobs_tables as jt
from apportion.store.schema import allocations, tasks

log = structlog.get_logger(__name__)


class JobsService:
    """Jobs, their tasks and queues over one store; the scheduler beside."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, config: SchedulerConfig, *,
                 epoch: Callable[[], int | None] = lambda: None,
                 potential_nodes: Callable[[], Iterable[Node]] = lambda: (),
                 clock: Callable[[], float] = time.time) -> None:
        self.uow = uow
        self.ledger = ledger
        self.clock = clock
        self.epoch = epoch
        self.cache = JobCache()
        self.writer = JobWriter(uow, ledger, self.cache)
        self.queues: dict[str, Queue] = {}
        self.scheduler = Scheduler(uow, ledger, self.cache, self.writer, config,
                                   lambda: self.queues, epoch, clock)
        self.potential_nodes = potential_nodes
        """Nodes that do not exist yet but would be made for work that needs
        them (a node pool below its maximum; from the scaling service), each
        labelled ``pool=<name>``. A submission the real nodes refuse is
        checked against them too, so a job that only a pool's nodes can hold
        waits for the pool instead of being refused; nothing is ever
        scheduled on them."""
        self._nodes_state: tuple[Mapping[str, Node], ClusterState] | None = None
        self._pools_state: tuple[Mapping[str, Node], ClusterState, tuple[Node, ...]] | None \
            = None

    # -- what others read -------------------------------------------------------------

    @property
    def live(self) -> dict[str, LiveJob]:
        return self.cache.jobs

    @property
    def history(self) -> RuntimeHistory:
        return self.scheduler.history

    @property
    def last_cycle(self) -> CycleResult | None:
        return self.scheduler.last_cycle

    @property
    def cycles(self) -> int:
        return self.scheduler.cycles

    @property
    def switches(self) -> dict[str, Switch]:
        return self.scheduler.switches

    def kick(self) -> None:
        self.scheduler.kick()

    async def run_forever(self, idle_s: float = 1.0) -> None:
        await self.scheduler.run_forever(idle_s)

    async def run_cycle(self) -> CycleResult:
        return await self.scheduler.run_cycle()

    # -- start -------------------------------------------------------------------------

    def load(self) -> None:
        with self.uow.engine.begin() as conn:
            self._load_queues(conn)
            self.cache.load(conn)

    def _load_queues(self, conn: sa.Connection) -> None:
        rows = jt.load_queues(conn)
        if not any(r.name == DEFAULT_QUEUE for r in rows):
            now = self.clock()
            default = QueueRow(DEFAULT_QUEUE, {}, 1.0, None, None, now, now)
            try:
                with conn.begin_nested():
                    jt.upsert_queue(conn, default)
            except sa.exc.IntegrityError:
                pass  # another server made it at the same moment
            rows.append(default)
        self.queues = {r.name: queue_of_stored(r) for r in rows}

    async def follow(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        """Read again what other servers changed: ``(id, kind, subject,
        origin)`` of their events."""
        jobs: set[str] = set()
        unknown: list[str] = []
        queues = False
        for _, kind, subject, _ in events:
            if kind.startswith("job."):
                jobs.add(subject)
            elif kind.startswith("task."):
                job_id = self.cache.job_of_task(subject)
                if job_id is None:
                    unknown.append(subject)
                else:
                    jobs.add(job_id)
            elif kind == "queue.updated":
                queues = True
        if not (jobs or unknown or queues):
            return

        def read(conn: sa.Connection) -> None:
            if queues:
                self._load_queues(conn)
            found = jobs | set(jt.job_ids_of_tasks(conn, unknown).values()) if unknown else jobs
            if found:
                self.cache.refresh(conn, found)

        await self.uow.read(read)

    async def release_orphans(self) -> int:
        """Release job allocations no live task holds (left by a version that
        did not commit a grant with its task); returns how many."""

        def find(conn: sa.Connection) -> list[str]:
            held = {r[0] for r in conn.execute(sa.select(tasks.c.allocation_id).where(
                tasks.c.state.in_(ACTIVE_TASK)))}
            rows = conn.execute(sa.select(allocations.c.id, allocations.c.labels).where(
                allocations.c.state == "active")).all()
            return [i for i, labels in rows if JOB_LABEL in (labels or {}) and i not in held]

        orphans: list[str] = await self.uow.read(find)
        for alloc_id in orphans:
            await self.writer.run(partial(_release_orphan, alloc_id=alloc_id))
        return len(orphans)

    # -- queues ------------------------------------------------------------------------

    async def put_queue(self, name: str, quota: Mapping[str, Any], weight: float,
                        min_priority: int | None, max_priority: int | None) -> QueueRow:
        queue = queue_from_row(name, quota, weight, min_priority, max_priority)
        if weight <= 0:
            raise InvalidInput("weight: must be greater than 0", field="weight")
        if min_priority is not None and max_priority is not None and min_priority > max_priority:
            raise InvalidInput("min_priority: must not exceed max_priority", field="min_priority")
        now = self.clock()
        old = await self.uow.read(lambda c: next(
            (r for r in jt.load_queues(c) if r.name == name), None))
        row = QueueRow(name, dict(queue.quota), weight, min_priority, max_priority,
                       old.created_at if old else now, now)

        def write(conn: sa.Connection) -> None:
            jt.upsert_queue(conn, row)
            self.uow.event(conn, "queue.updated", name, {"weight": weight})

        await self.uow.write(write)
        self.queues[name] = queue
        self.kick()
        return row

    def waiting_shapes(self, most: int = 20) -> list[dict[str, int]]:
        """The task shapes of waiting jobs, most frequent first."""
        seen: dict[tuple[tuple[str, int], ...], int] = {}
        for live in self.cache.waiting():
            for spec in live.job.tasks:
                key = tuple(sorted(spec.resources.items()))
                seen[key] = seen.get(key, 0) + spec.count
        ranked = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:most]
        return [dict(key) for key, _ in ranked]

    def queue_usage(self) -> dict[str, dict[str, int]]:
        return self.scheduler.queue_usage(self.queues)

    # -- jobs ---------------------------------------------------------------------------

    async def submit(self, spec: dict[str, Any], owner: str | None) -> JobRow:
        now = self.clock()
        job_id = new_job_id()
        # gpu: 0.25 -> gpu.shares slots of GPUs split in 4, as the nodes offer them.
        spec = with_gpu_shares(spec, _OfferedSplits(self))
        job = job_from_spec(spec, job_id=job_id, submit_time=now, owner=owner)
        # Without the agent label the scheduler adds for a command: an agent
        # that has not joined yet is no reason to refuse (the label is an
        # equality, which check_comparisons has nothing to say about).
        checked = as_checked(job, spec)
        check_comparisons(checked.constraints)  # InvalidInput (422): `gpu.memory>=lots`
        RunPolicy.of(spec)  # InvalidInput (422) for a bad restart policy or signal
        reason = self._check(checked)  # JobRejected (422) says why not
        row = JobRow(job_id, job.name, owner, job.queue, job.priority, JobState.PENDING.value,
                     spec, now, None, None, reason, None, 0, 0)
        await self.writer.run(partial(t.submit, row=row, job=job))
        self.kick()
        return row

    def _check(self, job: Job) -> str | None:
        """Refuse (JobRejected, 422) a job that no node and no pool's node
        could ever hold; None when a node could, or the reason it waits when
        only nodes a pool would add could. The real nodes first: pools are
        consulted only for a job those refuse, so the common submission pays
        for nothing more."""
        try:
            validate_job(job, self.queues, self._nodes_only())
            return None
        except JobRejected as refused:
            state, standins = self._with_pools()
            if not standins:
                raise
            try:
                validate_job(job, self.queues, state)
            except JobRejected as never:
                # Counting stand-ins as nodes would muddle the reasons; with
                # no node at all, "there are no nodes" would hide the pools.
                raise (never if not self.ledger.nodes else refused) from None
        pools = _pools_for(job, standins)
        return f"waiting for pool {' or '.join(pools)} to add a node"

    def _node_key(self) -> Mapping[str, Node]:
        # The ledger makes a new mapping when a node changes: the same one
        # means the same nodes, and no walk over them per submission.
        return self.ledger.nodes

    def _nodes_only(self) -> ClusterState:
        """The nodes as the core sees them, without what runs on them: all a
        submission's check needs. Built again only when the nodes changed."""
        key = self._node_key()
        if self._nodes_state is None or self._nodes_state[0] is not key:
            self._nodes_state = (key, ClusterState(list(self.ledger.nodes.values()), []))
        return self._nodes_state[1]

    def _with_pools(self) -> tuple[ClusterState, tuple[Node, ...]]:
        """The nodes and the pools' stand-ins; built again only when the nodes
        changed (a pool's room is its maximum less its member nodes)."""
        key = self._node_key()
        if self._pools_state is None or self._pools_state[0] is not key:
            standins = tuple(self.potential_nodes())
            if not standins:  # no pools (yet): nothing to keep
                return self._nodes_only(), ()
            state = ClusterState([*self.ledger.nodes.values(), *standins], [])
            self._pools_state = (key, state, standins)
        return self._pools_state[1], self._pools_state[2]

    async def list_jobs(self, *, states: list[str] | None, queue: str | None,
                        owner: str | None, limit: int, offset: int) -> list[JobRow]:
        """Jobs as stored, newest first."""
        rows: list[JobRow] = await self.uow.read(lambda c: jt.load_jobs(
            c, states=states, queue=queue, owner=owner, limit=limit, offset=offset))
        return rows

    async def get(self, job_id: str) -> tuple[JobRow, list[TaskRow]]:
        """A job and all its task attempts, as stored."""
        row, rows, _ = await self.get_page(job_id, limit=None)
        return row, rows

    async def get_page(self, job_id: str, *, limit: int | None,
                       offset: int = 0) -> tuple[JobRow, list[TaskRow], int]:
        """A job, a page of its task attempts (oldest first) and how many it has."""

        def read(conn: sa.Connection) -> tuple[JobRow | None, list[TaskRow], int]:
            row = jt.load_job(conn, job_id)
            if row is None:
                return None, [], 0
            rows = jt.load_tasks(conn, job_id=job_id, limit=limit, offset=offset)
            total = len(rows) if limit is None else jt.count_tasks(conn, job_id)
            return row, rows, total

        row, rows, total = await self.uow.read(read)
        if row is None:
            raise NotFound(f"job {job_id} not found", id=job_id)
        return row, rows, total

    async def cancel(self, job_id: str) -> JobRow:
        outcomes = await self.writer.run_all(partial(t.cancel, job_id=job_id))
        return outcomes[-1].rows.get(job_id) or outcomes[0].rows[job_id]

    async def complete(self, job_id: str, *, succeeded: bool, exit_code: int | None) -> JobRow:
        """End a lease job (one without a command) as its owner says."""
        outcomes = await self.writer.run_all(partial(
            t.complete, job_id=job_id, succeeded=succeeded, exit_code=exit_code))
        return outcomes[-1].rows.get(job_id) or outcomes[0].rows[job_id]

    def explain(self, job_id: str) -> Explanation:
        live = self.cache.jobs.get(job_id)
        if live is None or live.state not in WAITING:
            raise InvalidInput(f"job {job_id} is not waiting; explain answers for pending jobs",
                               field="id")
        return explain(self.scheduler.cluster_state(), live.job, now=self.clock(),
                       queues=self.queues)

    def explain_nodes(self, job_id: str, *, limit: int = NODES_SHOWN) -> NodeTable:
        """Per node, why a waiting job cannot go there now and whether it ever could."""
        live = self.cache.jobs.get(job_id)
        if live is None or live.state not in WAITING:
            raise InvalidInput(f"job {job_id} is not waiting; explain answers for pending jobs",
                               field="id")
        return explain_nodes(self.scheduler.cluster_state(), live.job, limit=limit)

    # -- what agents run and report --------------------------------------------------------

    def tasks_on(self, node: str) -> list[TaskRow]:
        return [task for _, task in self.cache.tasks_on(node)]

    def find_task(self, task_id: str) -> tuple[LiveJob, TaskRow] | None:
        return self.cache.find_task(task_id)

    async def assignments(self, node: str) -> list[Assignment]:
        """Every task ``node`` must run or stop now: the agent's desired state."""
        running = [(lj, task) for lj, task in self.cache.tasks_on(node)
                   if lj.job.command is not None]
        active = self.ledger.active()
        missing = [task.allocation_id for _, task in running if task.allocation_id not in active]
        stored = {}
        if missing:
            # Granted through another server, not yet seen here: as stored.
            from apportion.store import ledger_tables as tables

            stored = await self.uow.read(lambda c: {
                i: a for i in missing if (a := tables.load_allocation(c, i)) is not None})
        return [self._assignment(lj, task, active.get(task.allocation_id)
                                 or stored.get(task.allocation_id)) for lj, task in running]

    def _assignment(self, live: LiveJob, task: TaskRow, alloc: Any) -> Assignment:
        devices = {r: list(ids) for r, ids in alloc.devices.items()} if alloc else {}
        resources = dict(alloc.resources) if alloc else {}
        policy = RunPolicy.of(live.row.spec)
        resume = live.checkpoints.get(task.index)
        return Assignment(
            task.id, task.job_id, task.index, task.attempt, task.allocation_id,
            tuple(live.job.command or ()), format_vector(resources), resources, devices,
            self._device_info(task.node, devices), policy.stop_signal, policy.stop_grace_s,
            Stop(task.stop_state, task.stop_reason) if task.stop_state else None,
            resume if resume and resume != task.id else None,
            live.row.spec.get("array"), task.state, task.created_at)

    def _device_info(self, node: str, devices: Mapping[str, list[str]]) -> dict[str, Any]:
        known = self.ledger.nodes.get(node)
        if known is None:
            return {}
        out: dict[str, Any] = {}
        for resource, ids in devices.items():
            by_id = {d.id: d for d in known.devices.get(resource, ())}
            out[resource] = [_one_device(i, by_id.get(i)) for i in ids]
        return out

    async def task_report(self, node: str, task_id: str, report: TaskReport) -> dict[str, Any]:
        """Apply an agent's report on one task; repeating a report is harmless."""
        outcome = await self.writer.run(partial(t.report, node=node, task_id=task_id,
                                                report=report))
        await self.scheduler.start_freed_switches()
        return outcome.answer

    def _leader_epoch(self) -> int:
        """The epoch a leader's decision is fenced on. A server deposed
        meanwhile makes none: without an epoch the store could not refuse it."""
        epoch = self.epoch()
        if epoch is None:
            raise NotLeader("this server no longer leads; the new leader decides", epoch=None)
        return epoch

    async def node_lost(self, node: str) -> int:
        """The node is gone: its tasks end as ``lost`` and are requeued per
        their restart policy (the leader's decision)."""
        outcomes = await self.writer.run_all(partial(t.node_lost, node=node,
                                                     epoch=self._leader_epoch()))
        return sum(len(o.ended) for o in outcomes)

    async def stop_unclaimed(self, older_than_s: float) -> int:
        """Stop the tasks no agent picked up within ``older_than_s`` (the
        leader's decision); their jobs are placed again. Returns how many."""
        outcomes = await self.writer.run_all(partial(
            t.stop_unclaimed, before=self.clock() - older_than_s, epoch=self._leader_epoch()))
        return sum(1 for o in outcomes for task in o.tasks if task.stop_state == "cancelled"
                   or task.state == "cancelled")

    async def stop_node_tasks(self, node: str, state: str, reason: str, *,
                              by_leader: bool) -> int:
        """Ask for every process on ``node`` to stop (a drain past its
        deadline): the leader's decision when its loop finds the deadline
        passed (fenced), or an admin's drain with no time to wait (not)."""
        epoch = self._leader_epoch() if by_leader else None
        outcomes = await self.writer.run_all(partial(t.stop_node_tasks, node=node,
                                                     state=state, reason=reason, epoch=epoch))
        return sum(1 for o in outcomes for task in o.tasks if task.stop_state == state)


def _one_device(device_id: str, device: Device | None) -> dict[str, Any]:
    """What an agent is told of a granted device; a GPU share slot adds its
    GPU (``parent``) and how many shares that GPU is split in."""
    info: dict[str, Any] = {"id": device_id, "uuid": device.uuid if device else None,
                            "model": device.model if device else None,
                            "memory": device.memory if device else None}
    if device is not None and "parent" in device.attrs:
        info["parent"] = device.attrs["parent"]
        info["shares"] = device.attrs.get("shares")
    return info


def _release_orphan(c: t.Change, *, alloc_id: str) -> t.Outcome:
    held = jt.task_of_allocation(c.conn, alloc_id)
    if held is None or held.state not in ACTIVE_TASK:
        c.tx.release(alloc_id, ReleaseReason.CANCELLED)
    return c.out


def _pools_for(job: Job, standins: Sequence[Node]) -> list[str]:
    """The pools whose node would hold one of the job's tasks (labels and
    resources), in config order; every pool when none would alone (a gang
    spread over several)."""
    names = list(dict.fromkeys(n.labels.get("pool", n.name) for n in standins))
    holding = [n.labels.get("pool", n.name) for n in standins
               if matches(n.labels, job.constraints.labels)
               and any(fits(spec.resources, n.resources) for spec in job.tasks)]
    return list(dict.fromkeys(holding)) or names


class _OfferedSplits:
    """Every ``N`` a node (or a pool's node to come) splits its GPUs into,
    read only when a submission asks for a share: a walk over every node."""

    def __init__(self, jobs: JobsService) -> None:
        self.jobs = jobs

    def __iter__(self) -> Iterator[int]:
        nodes = [*self.jobs.ledger.nodes.values(), *self.jobs.potential_nodes()]
        return iter(splits_offered(nodes))
