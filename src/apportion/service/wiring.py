"""The one composition root: every service and background loop of a server.

``build`` opens the store, migrates it, rebuilds memory and constructs each
service in dependency order, handing collaborators in as arguments. ``start``
runs the loops every server runs (following the others, agents' heartbeats,
the event stream) and the leader's loops whenever this server leads; the
leader's loops stop the moment it is deposed. Routes receive these services;
they never build one.

Loops, and who runs them:

| loop | servers | why |
|---|---|---|
| leadership campaign | every | wins or keeps the lock; notes the server as seen |
| follow | every | other servers' events into this server's caches |
| heartbeat flush | every | agents heard here, written for the leader to judge |
| event hub | every | ``GET /api/v1/events`` streams from any server |
| scheduling cycle | leader | one placer, fenced by its epoch |
| lost-node sweep | leader | one judge of silence |
| alerts and webhooks | leader | one alert book, one delivery per change |
| scaling, history, planning, NATS | leader | decided or recorded once per cluster |
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from apportion.core.scheduling import SchedulerConfig
from apportion.service.agent_state import AgentSettings
from apportion.service.agents_service import AgentsService
from apportion.service.alerts_service import AlertsService
from apportion.service.allocations import AllocationsService
from apportion.service.auth import Authenticator, check_admin_token
from apportion.service.events_stream import EventHub
from apportion.service.following import EventFollower
from apportion.service.health_service import HealthService
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.service.jobs import JobsService
from apportion.service.join_tokens import JoinTokens
from apportion.service.leadership import Leadership, leader_lock_for
from apportion.service.ledger_service import LedgerService
from apportion.service.metrics import Metrics, Sources
from apportion.service.nats_publisher import NatsPublisher, NatsSettings
from apportion.service.planning_service import PlanningService
from apportion.service.scaling_service import ScalingService
from apportion.service.scaling_settings import load_scaling
from apportion.service.server_config import load_server_config
from apportion.service.settings import Settings
from apportion.service.task_files import FileLimits, TaskFiles
from apportion.service.tokens_service import TokensService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store.blobs import BlobStore, DatabaseBlobs, S3Blobs
from apportion.store.database import create_engine, migrate

log = structlog.get_logger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Services:
    """Everything one server process runs."""

    settings: Settings
    uow: UnitOfWork
    ledger: LedgerService
    auth: Authenticator
    leadership: Leadership
    jobs: JobsService
    allocations: AllocationsService
    health: HealthService
    alerts: AlertsService
    agents: AgentsService
    files: TaskFiles
    join_tokens: JoinTokens
    hub: EventHub
    metrics: Metrics
    history: HistoryService
    planning: PlanningService
    follower: EventFollower
    tokens: TokensService
    scaling: ScalingService | None = None
    nats: NatsPublisher | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _leading: list[asyncio.Task[None]] = field(default_factory=list)

    def every_server_loops(self) -> list[Loop]:
        return [self.leadership.run_forever, self.follower.run_forever,
                self.agents.flush_forever, self.hub.run_forever,
                # Each waits while this server does not lead:
                self.jobs.run_forever, self.agents.sweep_forever,
                self.alerts.run_forever, self.alerts.deliver_forever]

    def leader_loops(self) -> list[Loop]:
        loops: list[Loop] = [self.history.run_forever, self.planning.run_forever]
        if self.scaling is not None:
            loops.append(self.scaling.run_forever)
        if self.nats is not None:
            loops.append(self.nats.run_forever)
        return loops

    async def start(self) -> None:
        self.leadership.listeners.append(self._leader_changed)
        # Leadership first, before anything decides: on SQLite this server
        # almost always leads, and wins at once.
        await self.leadership.campaign_round()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(run()) for run in self.every_server_loops()]

    async def _leader_changed(self, epoch: int | None) -> None:
        for task in self._leading:
            task.cancel()
        self._leading = []
        if epoch is None:
            return
        self.alerts.load_later()
        with contextlib.suppress(Exception):
            await self.follower.sync()  # the freshest picture before deciding
        with contextlib.suppress(Exception):
            released = await self.jobs.release_orphans()
            if released:
                log.warning("orphans_released", count=released)
        loop = asyncio.get_running_loop()
        self._leading = [loop.create_task(run()) for run in self.leader_loops()]
        self.jobs.kick()

    def begin_stop(self) -> None:
        """Called from the signal handler's thread-safe hop: answer held polls."""
        self.agents.stop_polls()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._leading]:
            task.cancel()
        for task in [*self._tasks, *self._leading]:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self.agents.flush()
        with contextlib.suppress(Exception):
            await self.leadership.stop()
        if self.scaling is not None:
            self.scaling.close()
        self.uow.close()


def blob_store(settings: Settings, engine: Any) -> tuple[BlobStore, FileLimits]:
    """The database, or the bucket ``APPORTION_BLOB_URL`` names."""
    if settings.blob_url:
        blobs: BlobStore = S3Blobs(settings.blob_url, endpoint=settings.blob_endpoint)
        default_cap = 1 << 30
    else:
        blobs = DatabaseBlobs(engine)
        default_cap = 256 << 20
    return blobs, FileLimits(settings.log_max or 16 << 20,
                             settings.checkpoint_max or default_cap)


def build(settings: Settings) -> Services:
    """Open the store, migrate it, rebuild memory, and build every service."""
    engine = create_engine(settings.url, sqlite_synchronous=settings.sqlite_synchronous)
    migrate(engine)
    uow = UnitOfWork(engine, origin=settings.server_id, batch_max=settings.batch_max)
    ledger = LedgerService(uow)
    ledger.load()
    auth = Authenticator(engine)
    if settings.admin_token:
        check_admin_token(settings.admin_token)
        auth.ensure("admin", "admin", settings.admin_token)
    leadership = Leadership(engine, leader_lock_for(engine, settings.leader_timeout_s),
                            server_id=settings.server_id, url=settings.server_url,
                            timeout_s=settings.leader_timeout_s)
    scaling: list[ScalingService] = []  # made last: it needs the others
    jobs = JobsService(uow, ledger, SchedulerConfig(strategy=settings.strategy,
                                               backfill=settings.backfill),
                       epoch=lambda: leadership.epoch,
                       potential_nodes=lambda: scaling[0].potential_nodes() if scaling else ())
    jobs.load()
    config = load_server_config(settings.config_file,
                                planning_interval_s=settings.planning_interval_s)
    health = HealthService(ledger, config.health)
    alerts = AlertsService(uow, ledger, jobs, health, config.alerts,
                           is_leader=lambda: leadership.is_leader)
    scaling_settings, pools = load_scaling(settings.config_file, settings.providers_file)
    join_tokens = JoinTokens(engine, ttl_s=scaling_settings.join_token_ttl_s)
    blobs, limits = blob_store(settings, engine)
    files = TaskFiles(uow, jobs, blobs, limits, settings.data_dir / "spool")
    agents = AgentsService(uow, ledger, jobs, health, server_id=settings.server_id,
                           epoch=lambda: leadership.epoch, auth=auth, join_tokens=join_tokens,
                           files=files,
                           leader_since=lambda: leadership.since,
                           settings=AgentSettings.of(settings.node_down_after_s,
                                                     settings.node_sweep_interval_s,
                                                     settings.poll_hold_s,
                                                     settings.pickup_deadline_s))
    agents.load()
    hub = EventHub(engine)
    hub.start_at_end()
    metrics = Metrics(Sources(ledger, jobs, alerts, hub, agents.silences),
                      origin=uow.origin)
    metrics.time_cycles(jobs)
    hub.listeners.append(metrics.on_event)
    history = HistoryService(engine, ledger, jobs, HistorySettings.load(settings.config_file, {
        "interval_s": settings.history_interval_s, "raw_s": settings.history_raw_s,
        "rollup_step_s": settings.history_rollup_step_s, "rollup_s": settings.history_rollup_s,
        "max_points": settings.history_max_points}))
    planning = PlanningService(ledger, jobs, history, alerts, config.planning).install()
    nats_settings = NatsSettings.of(settings.nats_url, settings.nats_subject_prefix)
    nats = NatsPublisher(hub, nats_settings, origin=uow.origin) if nats_settings else None
    tokens = TokensService(auth, uow)
    follower = EventFollower(uow, ledger,
                             [jobs.follow, agents.follow, alerts.follow, tokens.follow],
                             interval_s=settings.sync_interval_s)
    services = Services(settings, uow, ledger, auth, leadership, jobs,
                        AllocationsService(uow, ledger, jobs), health, alerts, agents, files,
                        join_tokens, hub, metrics, history, planning, follower, tokens,
                        nats=nats)
    if pools is not None and pools.pools:
        services.scaling = _scaling(services, scaling_settings, pools)
        scaling.append(services.scaling)
    return services


def _scaling(s: Services, settings: Any, pools: Any) -> ScalingService:
    agents = s.agents

    async def drain(node: str) -> None:
        await agents.drain(node, None)

    service = ScalingService(s.uow, s.ledger, s.jobs, s.auth, s.join_tokens, pools, drain=drain,
                             settings=settings, forecast_peaks=s.planning.pool_peaks,
                             server_url=s.settings.server_url or "http://127.0.0.1:8080")
    service.load()
    return service
