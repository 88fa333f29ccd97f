"""Autoscaling node pools: the server side of ``core.autoscale``.

Every ``interval_s`` (and on demand, ``POST /api/v1/scaling/evaluate``) the
service, for each configured pool:

1. finds its members: ledger nodes labelled ``pool=<name>``, plus nodes it
   asked the provider for that have not joined yet ("joining");
2. records one utilization sample of the joined, non-draining members (the
   dominant share, ``core.autoscale.pool_utilization``), kept in memory for
   the pool's window;
3. computes the pending demand that fits nowhere now (``core.pool_demand``:
   waiting tasks placed first fit into every schedulable node's free room and
   the joining nodes' room; what is left goes to the first pool that can
   hold it);
4. reads the forecast peak of the pool's allocated amount over
   ``forecast_lookahead_s`` (``PlanningService.pool_peaks``, from the
   history recorded per pool) as a share of the pool's live capacity, so
   that a peak the history says is coming is met by nodes started before it;
5. evaluates the policy (``core.autoscale.evaluate``) and keeps the answer;
   a decision that differs from the last one is an event
   (``scaling.decision``);
6. when the pool's mode is ``auto``, acts: ``scale_up`` issues one one-time
   join token per node (``service/join_tokens.py``) and calls
   ``provider.create`` for it; ``scale_down`` drains the named nodes (state
   ``draining``: no new work, what runs finishes);
7. reaps: a node this service drained, or a member that is ``down``, is
   deleted from the ledger and terminated only once it holds no allocation
   and runs no task. The ledger deletes it only if it has no active
   allocation (checked again in the same step), so a node with running work
   is never terminated. A joining node that has not registered within
   ``join_timeout_s`` is terminated and its token revoked.

A job that only a pool's node type can hold (its labels, as a job needing
``facility=burst`` where pool ``burst`` makes such nodes; or its size) is
accepted at submission and waits, its reason ``waiting for pool burst to add
a node``: ``potential_nodes`` stands in, for the submission check only, for
the nodes pools could still add. An ``auto`` pool then adds them; an
``advice`` pool advises adding them, which is its purpose (a job refused at
submission would never be advice for anyone).

Provider calls block (cloud SDKs); they run in threads. State that must
survive a restart does: the last scale-up and scale-down times and the nodes
this service drained come back from the event log, the joining nodes from
``provider.list``. Utilization samples do not (the window fills again).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.core.autoscale import (
    PoolNode,
    PoolPolicy,
    PoolState,
    ScalingDecision,
    UtilizationSample,
    evaluate,
    pool_utilization,
)
from apportion.core.model import Node, NodeState
from apportion.core.pool_demand import PendingTask, PoolShape, Room, pool_demand
from apportion.core.resources import format_vector
from apportion.exceptions import ApportionError, NodeNotFound
from apportion.providers import from_config
from apportion.providers.base import JoinSpec, NodeType, Provider, new_node_name
from apportion.providers.config import PoolConfig, ProvidersConfig, mask
from apportion.service.auth import Authenticator
from apportion.service.job_specs import AGENT_LABEL
from apportion.service.jobs import JobsService
from apportion.service.join_tokens import JoinTokens
from apportion.service.ledger_service import LedgerService
from apportion.service.scaling_settings import ScalingSettings
from apportion.service.unit_of_work import UnitOfWork
from apportion.store.schema import events as events_table

log = structlog.get_logger(__name__)

POOL_LABEL = "pool"
GONE_STATES = (NodeState.DOWN,)
"""Member states that mean the machine no longer serves: reaped once empty."""


@dataclass
class Joining:
    provider_id: str
    created_at: float


@dataclass
class Pool:
    config: PoolConfig
    policy: PoolPolicy
    node_type: NodeType
    provider: Provider
    labels: dict[str, str]
    """The labels a node of this pool registers with."""
    samples: deque[UtilizationSample] = field(default_factory=deque)
    last_up: float | None = None
    last_down: float | None = None
    joining: dict[str, Joining] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    counts: dict[str, int] = field(default_factory=lambda: {
        "scale_up": 0, "scale_down": 0, "none": 0})

    @property
    def name(self) -> str:
        return self.config.name


class ScalingService:
    def __init__(
        self,
        uow: UnitOfWork,
        ledger: LedgerService,
        jobs: JobsService,
        auth: Authenticator,
        join_tokens: JoinTokens,
        config: ProvidersConfig,
        *,
        drain: Callable[[str], Any],
        providers: Mapping[str, Provider] | None = None,
        settings: ScalingSettings | None = None,
        forecast_peaks: Callable[[float], Mapping[str, Mapping[str, float]]] | None = None,
        server_url: str = "http://127.0.0.1:8080",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.uow = uow
        self.ledger = ledger
        self.jobs = jobs
        self.auth = auth
        self.join = join_tokens
        self.config = config
        self.settings = settings or ScalingSettings()
        self.server_url = self.settings.server_url or server_url
        self.clock = clock
        self._drain = drain
        self._forecast_peaks = forecast_peaks
        """Blocking: per pool and resource, the forecast peak allocated amount
        within a look-ahead (``PlanningService.pool_peaks``)."""
        self.peaks: Mapping[str, Mapping[str, float]] = {}
        """The latest forecast peaks; ``evaluation`` reads them as they are."""
        self.providers: dict[str, Provider] = dict(providers) if providers is not None \
            else from_config(config)
        self.pools: dict[str, Pool] = {}
        for pc in config.pools:
            node_type = config.node_type_of(pc)
            provider = self.providers[pc.provider]
            labels = provider.node_labels(pc.name, node_type,
                                          JoinSpec(self.server_url, "x", pc.labels))
            # A pool's nodes run an agent: they can hold jobs with a command.
            labels = {**labels, AGENT_LABEL: "true"}
            pool = Pool(pc, pc.to_policy(node_type), node_type, provider, labels)
            pool.decisions = deque(maxlen=self.settings.keep_decisions)
            self.pools[pc.name] = pool
        self.draining: set[str] = set()
        """Nodes this service drained to scale down: terminated once empty."""
        self.ticks = 0
        self._lock = asyncio.Lock()

    # -- start and stop ---------------------------------------------------------------

    def load(self) -> None:
        """Recover what a restart would lose (blocking; call in a thread)."""
        if not self.pools:
            return
        names = list(self.pools)
        with self.uow.engine.connect() as conn:
            for kind, attr in (("scaling.scale_up", "last_up"),
                               ("scaling.scale_down", "last_down")):
                rows = conn.execute(
                    sa.select(events_table.c.subject, sa.func.max(events_table.c.at))
                    .where(events_table.c.kind == kind, events_table.c.subject.in_(names))
                    .group_by(events_table.c.subject)).all()
                for subject, at in rows:
                    setattr(self.pools[subject], attr, float(at))
            drained = conn.execute(
                sa.select(events_table.c.subject).where(
                    events_table.c.kind == "scaling.node_draining")).scalars().all()
        nodes = self.ledger.nodes
        self.draining = {n for n in drained
                         if n in nodes and nodes[n].state is NodeState.DRAINING}
        for pool in self.pools.values():
            try:
                made = pool.provider.list(pool.name)
            except ApportionError as exc:
                log.warning("scaling_list_failed", pool=pool.name, error=exc.message)
                continue
            for node in made:
                if node.node_name and node.node_name not in nodes:
                    pool.joining[node.node_name] = Joining(node.id, node.created_at)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.tick()
            except Exception as exc:
                log.exception("scaling_failed", error=repr(exc))

    # -- one round -----------------------------------------------------------------------

    async def tick(self, *, act: bool = True) -> list[dict[str, Any]]:
        """Sample, evaluate and (for ``auto`` pools) act, for every pool."""
        async with self._lock:
            now = self.clock()
            self.ticks += 1
            out = []
            demand = self._demand(now)
            await self._read_forecast()
            awaited = self._awaited(now, demand)
            for pool in self.pools.values():
                self._sample(pool, now)
                decision, state = self._evaluate(pool, demand.get(pool.name, []), now,
                                                 awaited=pool.name in awaited)
                record = self._record(pool, decision, state, now)
                await self._remember(pool, record)
                if act and pool.policy.mode == "auto":
                    await self._act(pool, decision, now)
                    await self._reap(pool, now)
                out.append(record)
            return out

    async def _read_forecast(self) -> None:
        if self._forecast_peaks is None:
            return
        try:
            self.peaks = await asyncio.to_thread(self._forecast_peaks,
                                                 self.settings.forecast_lookahead_s)
        except Exception as exc:  # a forecast that fails must not stop scaling
            log.warning("scaling_forecast_failed", error=repr(exc))

    def evaluation(self) -> list[dict[str, Any]]:
        """Each pool's decision now, from the samples so far, without acting
        or recording: what ``GET /api/v1/scaling/evaluation`` answers."""
        now = self.clock()
        demand = self._demand(now)
        awaited = self._awaited(now, demand)
        out = []
        for pool in self.pools.values():
            decision, state = self._evaluate(pool, demand.get(pool.name, []), now,
                                             awaited=pool.name in awaited)
            out.append(self._record(pool, decision, state, now))
        return out

    def describe_pools(self) -> list[dict[str, Any]]:
        out = []
        for pool in self.pools.values():
            pc = pool.config
            members = self._members(pool)
            out.append({
                "pool": pc.name,
                "provider": pc.provider,
                "provider_kind": pool.provider.kind,
                "mode": pool.policy.mode,
                "node_type": pool.node_type.to_dict(),
                "labels": dict(pool.labels),
                "min_size": pc.min_size,
                "max_size": pc.max_size,
                "policy": {k: getattr(pool.policy, k) for k in (
                    "target", "scale_up_above", "scale_down_below", "window_s",
                    "cooldown_up_s", "cooldown_down_s", "max_cost_per_hour")},
                "settings": mask(pc.settings),
                "provider_settings": mask(self.config.providers[pc.provider].settings),
                "nodes": [{"name": n.name, "state": n.state.value,
                           "allocations": len(self.ledger.allocations_on(n.name)),
                           "tasks": len(self.jobs.tasks_on(n.name)),
                           "draining_to_terminate": n.name in self.draining}
                          for n in members],
                "joining": [{"name": k, "provider_id": j.provider_id, "since": j.created_at}
                            for k, j in sorted(pool.joining.items())],
                "last_scale_up_at": pool.last_up,
                "last_scale_down_at": pool.last_down,
                "decision_counts": dict(pool.counts),
                "recent_decisions": list(pool.decisions),
            })
        return out

    def potential_nodes(self) -> list[Node]:
        """The nodes pools could still add (up to ``max_size``, less the
        members already there), with the labels and resources a new node
        registers with: stand-ins a job submission is checked against. A job
        only a pool's node can hold is accepted, stays pending, and is what
        scales an ``auto`` pool up (or what an ``advice`` pool advises). Never
        scheduled on. Named ``~<pool>-<i>``, labelled ``pool=<pool>``."""
        out = []
        for pool in self.pools.values():
            room = pool.policy.max_size - len(self._members(pool))
            out += [Node(f"~{pool.name}-{i}", dict(pool.node_type.resources),
                         labels=dict(pool.labels)) for i in range(max(0, room))]
        return out

    # -- inputs ------------------------------------------------------------------------

    def _members(self, pool: Pool) -> list[Any]:
        return [n for n in self.ledger.nodes.values()
                if n.labels.get(POOL_LABEL) == pool.name]

    def _pool_nodes(self, pool: Pool, *, awaited: bool = False) -> list[PoolNode]:
        """The pool's members and its joining nodes; ``awaited``: waiting
        work counts on the joining ones, which are then not idle."""
        ledger = self.ledger
        price = pool.node_type.price_per_hour
        nodes = []
        for node in self._members(pool):
            work = max(len(self.jobs.tasks_on(node.name)), len(ledger.allocations_on(node.name)))
            nodes.append(PoolNode(
                node.name, dict(node.resources), ledger.allocated(node.name), work, price,
                draining=node.state in (NodeState.DRAINING, *GONE_STATES),
                created_at=node.created_at))
        for name, joining in pool.joining.items():
            if name not in ledger.nodes:
                nodes.append(PoolNode(name, dict(pool.node_type.resources), {},
                                      1 if awaited else 0, price,
                                      created_at=joining.created_at))
        return nodes

    def _sample(self, pool: Pool, now: float) -> None:
        joined = [n for n in self._pool_nodes(pool) if n.name not in pool.joining]
        pool.samples.append(UtilizationSample(now, pool_utilization(joined)))
        start = now - pool.policy.window_s
        # Keep one sample at or before the window's start: the step function needs it.
        while len(pool.samples) > 1 and pool.samples[1].t <= start:
            pool.samples.popleft()

    def _awaited(self, now: float, demand: Mapping[str, list[Mapping[str, int]]]) -> set[str]:
        """Pools whose joining nodes waiting work counts on: without their
        room more of it would fit nowhere. Such a node is not idle: draining
        it before it joined would only make the work ask for a node again,
        and a machine slower to boot than the scale-down cooldown would be
        made and terminated over and over, the work never placed."""
        if not any(name not in self.ledger.nodes
                   for pool in self.pools.values() for name in pool.joining):
            return set()
        without = self._demand(now, joining=False)
        return {name for name, tasks in without.items()
                if len(tasks) > len(demand.get(name, []))}

    def _demand(self, now: float, *, joining: bool = True
                ) -> dict[str, list[Mapping[str, int]]]:
        """The waiting tasks that fit in no node's free room (nor, with
        ``joining``, in the room of nodes still joining), per pool."""
        if not self.pools:
            return {}
        ledger = self.ledger
        waiting = []
        for live in list(self.jobs.live.values()):
            for unit in live.open_units():
                if unit.id in self.jobs.switches:
                    continue
                for spec in unit.tasks:
                    waiting.extend([(unit.priority, unit.submit_time, PendingTask(
                        dict(spec.resources), unit.constraints.labels, unit.id))] * spec.count)
        if not waiting:
            return {}
        waiting.sort(key=lambda w: (-w[0], w[1]))
        rooms = [Room(ledger.free(n.name), n.labels) for n in ledger.nodes.values()
                 if n.schedulable]
        for pool in self.pools.values() if joining else ():
            rooms += [Room(dict(pool.node_type.resources), pool.labels)
                      for name in pool.joining if name not in ledger.nodes]
        shapes = [PoolShape(p.name, dict(p.node_type.resources), p.labels)
                  for p in self.pools.values()]
        return pool_demand([w[2] for w in waiting], rooms, shapes)

    def _evaluate(self, pool: Pool, pending: list[Mapping[str, int]], now: float, *,
                  awaited: bool = False) -> tuple[ScalingDecision, PoolState]:
        nodes = self._pool_nodes(pool, awaited=awaited)
        state = PoolState(nodes, tuple(pool.samples), tuple(pending), pool.last_up,
                          pool.last_down, self._forecast_share(pool, nodes),
                          self.settings.forecast_lookahead_s)
        return evaluate(pool.policy, state, now), state

    def _forecast_share(self, pool: Pool, nodes: list[PoolNode]) -> float | None:
        """The forecast peak as a share of the live capacity: of the resource
        whose share is highest, as ``pool_utilization`` measures now."""
        peaks = self.peaks.get(pool.name)
        if not peaks:
            return None
        capacity: dict[str, int] = {}
        for node in nodes:
            if not node.draining:
                for name, qty in node.resources.items():
                    capacity[name] = capacity.get(name, 0) + qty
        shares = [peak / capacity[r] for r, peak in peaks.items() if capacity.get(r, 0) > 0]
        return max(shares, default=None)

    def _record(self, pool: Pool, decision: ScalingDecision, state: PoolState,
                now: float) -> dict[str, Any]:
        live = [n for n in state.nodes if not n.draining]
        return {
            "pool": pool.name,
            "provider": pool.config.provider,
            "provider_kind": pool.provider.kind,
            "mode": pool.policy.mode,
            "decision": decision.action,
            "count": decision.count,
            "template": decision.template,
            "node_type": format_vector(pool.node_type.resources),
            "nodes": list(decision.nodes_to_drain),
            "reason": decision.reason,
            "advice_only": decision.advice_only,
            "cost_per_hour_delta": decision.cost_per_hour_delta,
            "size": len(live),
            "joining": sorted(n for n in pool.joining if n not in self.ledger.nodes),
            "draining": sorted(n.name for n in state.nodes if n.draining),
            "min_size": pool.policy.min_size,
            "max_size": pool.policy.max_size,
            "utilization": state.samples[-1].utilization if state.samples else None,
            "pending_tasks": len(state.pending),
            "forecast_peak": None if state.forecast_peak is None
            else round(state.forecast_peak, 4),
            "evaluated_at": now,
        }

    async def _remember(self, pool: Pool, record: dict[str, Any]) -> None:
        """Keep the evaluation; a decision that changed is an event."""
        before = pool.last
        pool.last = record
        pool.counts[record["decision"]] += 1
        key = (record["decision"], record["count"], tuple(record["nodes"]))
        if before is not None and key == (before["decision"], before["count"],
                                          tuple(before["nodes"])):
            return
        if record["decision"] != "none":
            pool.decisions.append(record)
        await self._event("scaling.decision", pool.name, {
            k: record[k] for k in ("decision", "count", "template", "nodes", "reason", "mode",
                                   "size", "utilization", "pending_tasks")})

    # -- acting ------------------------------------------------------------------------

    async def _act(self, pool: Pool, decision: ScalingDecision, now: float) -> None:
        if decision.action == "scale_up":
            pool.last_up = now
            await self._event("scaling.scale_up", pool.name,
                              {"count": decision.count, "template": decision.template,
                               "reason": decision.reason})
            for _ in range(decision.count):
                await self._create(pool, now)
        elif decision.action == "scale_down":
            pool.last_down = now
            await self._event("scaling.scale_down", pool.name,
                              {"nodes": list(decision.nodes_to_drain),
                               "reason": decision.reason})
            for name in decision.nodes_to_drain:
                if name in pool.joining and name not in self.ledger.nodes:
                    await self._terminate(pool, name, "not needed before it joined")
                    continue
                try:
                    await self._drain(name)
                except NodeNotFound:
                    continue
                self.draining.add(name)
                await self._event("scaling.node_draining", name, {"pool": pool.name})

    async def _create(self, pool: Pool, now: float) -> None:
        name = new_node_name(pool.name)
        while name in self.ledger.nodes or name in pool.joining:
            name = new_node_name(pool.name)
        token = await asyncio.to_thread(self.join.issue, pool.name, name, pool.labels)
        spec = JoinSpec(self.server_url, token, pool.config.labels, [name])
        try:
            made = await asyncio.to_thread(pool.provider.create, pool.name,
                                           pool.node_type.name, 1, spec)
        except ApportionError as exc:
            made = list(getattr(exc, "nodes", []))
            log.warning("scaling_create_failed", pool=pool.name, error=exc.message)
            await self._event("scaling.error", pool.name,
                              {"action": "create", "node": name, "message": exc.message})
        for node in made:
            pool.joining[node.node_name or name] = Joining(node.id, node.created_at or now)
            await self._event("scaling.node_created", node.node_name or name, {
                "pool": pool.name, "provider": pool.config.provider, "id": node.id,
                "node_type": pool.node_type.name})

    async def _reap(self, pool: Pool, now: float) -> None:
        ledger = self.ledger
        for name, joining in list(pool.joining.items()):
            if name in ledger.nodes:
                del pool.joining[name]  # joined
            elif now - joining.created_at > self.settings.join_timeout_s:
                await self._terminate(pool, name, f"did not join within "
                                      f"{self.settings.join_timeout_s:g} s")
        for node in self._members(pool):
            ours = node.name in self.draining and node.state is NodeState.DRAINING
            if not (ours or node.state in GONE_STATES):
                continue
            if ledger.allocations_on(node.name) or self.jobs.tasks_on(node.name):
                continue  # never terminate a node that runs work: wait until it is empty
            try:
                # The ledger refuses (NodeHasAllocations) if anything was granted meanwhile.
                await self.ledger.delete_node(node.name, force=False)
            except ApportionError as exc:
                log.info("scaling_delete_refused", node=node.name, error=exc.message)
                continue
            await asyncio.to_thread(self.auth.revoke_node, node.name)
            why = "drained and empty" if ours else f"{node.state.value} and empty"
            await self._terminate(pool, node.name, why)

    async def _terminate(self, pool: Pool, name: str, why: str) -> None:
        joining = pool.joining.pop(name, None)
        self.draining.discard(name)
        await asyncio.to_thread(self.join.revoke_unused, name)
        ids = [joining.provider_id] if joining else await asyncio.to_thread(
            _provider_ids, pool, name)
        detail: list[dict[str, Any]] = []
        if ids:
            try:
                done = await asyncio.to_thread(pool.provider.terminate, ids)
                detail = [n.to_dict() for n in done]
            except ApportionError as exc:
                log.warning("scaling_terminate_failed", node=name, error=exc.message)
                await self._event("scaling.error", pool.name,
                                  {"action": "terminate", "node": name, "message": exc.message})
                return
        log.info("scaling_terminated", pool=pool.name, node=name, why=why)
        await self._event("scaling.node_terminated", name,
                          {"pool": pool.name, "why": why, "provider_ids": ids,
                           "states": [d["state"] for d in detail]})

    async def _event(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        def write(conn: sa.Connection) -> None:
            self.uow.event(conn, kind, subject, data)

        await self.uow.write(write)


def _provider_ids(pool: Pool, name: str) -> list[str]:
    return [n.id for n in pool.provider.list(pool.name) if n.node_name == name]
