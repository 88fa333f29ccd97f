"""Prometheus metrics: what ``GET /metrics`` answers.

Two kinds of numbers, kept apart on purpose:

- **State** (nodes by state and health, capacity and allocated amounts per
  node and facility, utilization, queue lengths and waits, jobs by state,
  heartbeat age, firing alerts) is read from this server's memory at scrape
  time by :class:`LiveCollector`. Nothing is updated on the hot path, and a
  scrape always tells what the ledger says at that instant.
- **Happenings** (grants, releases by reason, preemptions, finished jobs,
  queue waits, events by kind) are counted from the event log as the
  :class:`~apportion.service.events_stream.EventHub` tails it, so they count
  exactly what became durable. Counters count the events this server wrote
  (``origin``): with several servers on one database, ``sum()`` over them is
  the cluster's total. Latencies (a grant request, a scheduling cycle) are
  timed where they happen.

Units follow Prometheus conventions: seconds, bytes, ratios 0-1; CPU in
cores (the ledger counts millicores). Per-resource gauges carry a ``unit``
label (``cores``, ``bytes``, ``units``), as kube-state-metrics does, since
one metric holds several resources.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from apportion.core.model import Health, NodeState
from apportion.core.records import Event
from apportion.core.resources import Unit, unit_of
from apportion.core.scheduling import JobState

if TYPE_CHECKING:
    from apportion.service.alerts_service import AlertsService
    from apportion.service.events_stream import EventHub
    from apportion.service.jobs import JobsService
    from apportion.service.ledger_service import LedgerService

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0,
                86400.0, 7 * 86400.0)
LIVE_JOB_STATES = tuple(s.value for s in JobState
                        if s not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED))
ENDED_JOB_STATES = ("succeeded", "failed", "cancelled")
WAITING = (JobState.PENDING.value, JobState.PREEMPTED.value)
TRACKED_SUBMISSIONS = 100_000
"""Submitted, not yet placed jobs remembered for the queue-wait histogram."""

UNIT_LABEL = {Unit.MILLI: "cores", Unit.BYTES: "bytes", Unit.COUNT: "units"}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def base_value(resource: str, quantity: int) -> float:
    """A ledger quantity in Prometheus base units (cpu millicores → cores)."""
    return quantity / 1000 if unit_of(resource) is Unit.MILLI else float(quantity)


def unit_label(resource: str) -> str:
    return UNIT_LABEL[unit_of(resource)]


@dataclass
class Sources:
    """Where the live collector reads from; ``heartbeats`` gives each node
    with an agent the seconds since it was last heard from."""

    ledger: LedgerService
    jobs: JobsService
    alerts: AlertsService | None = None
    hub: EventHub | None = None
    heartbeats: Callable[[], Mapping[str, float]] = dict


class Metrics:
    """The registry behind ``/metrics`` and the instruments that feed it."""

    def __init__(self, sources: Sources, *, origin: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.origin = origin
        self.clock = clock
        # ``_created`` samples double the series count and no query needs them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        self.grant_latency = Histogram(
            "apportion_allocation_request_duration_seconds",
            "Time to answer POST /api/v1/allocations, by outcome (granted, refused: "
            "not enough free, rejected: invalid or not allowed, error).",
            ["outcome"], buckets=LATENCY_BUCKETS, registry=r)
        # Children looked up once: ``labels()`` costs more than ``observe()``
        # and runs for every grant request.
        self._grant_outcomes = {o: self.grant_latency.labels(o)
                                for o in ("granted", "refused", "rejected", "error")}
        self.granted = Counter(
            "apportion_allocations_granted", "Allocations granted (durable) by this server.",
            registry=r)
        self.released = Counter(
            "apportion_allocations_released",
            "Allocations released by this server, by reason.", ["reason"], registry=r)
        self.preemptions = Counter(
            "apportion_preemptions",
            "Allocations released because their job was preempted.", registry=r)
        self.jobs_finished = Counter(
            "apportion_jobs_finished", "Jobs that reached a final state, by state.",
            ["state"], registry=r)
        for state in ENDED_JOB_STATES:
            self.jobs_finished.labels(state)
        self.queue_wait = Histogram(
            "apportion_queue_wait_seconds",
            "Time from a job's submission to its first placement, by queue.",
            ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.cycle_duration = Histogram(
            "apportion_scheduling_cycle_duration_seconds",
            "Duration of scheduling cycles that had pending work.",
            buckets=CYCLE_BUCKETS, registry=r)
        self.collection_duration = Histogram(
            "apportion_scheduling_collection_duration_seconds",
            "Duration of the garbage collection run right after a cycle, when"
            " one was owed (also inside that cycle's duration).",
            buckets=CYCLE_BUCKETS, registry=r)
        self.events = Counter(
            "apportion_events", "State-change events recorded by this server, by kind.",
            ["kind"], registry=r)
        self._submitted: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.live = LiveCollector(sources, clock)

    # -- scraping -----------------------------------------------------------------

    def snapshot(self) -> list[Family]:
        """The live gauges, read from memory (call on the event loop: it is
        the thread that changes what they read)."""
        return list(self.live.collect())

    def render(self, families: Iterable[Family]) -> bytes:
        """The whole scrape as text (may run in a worker thread)."""
        return generate_latest(self.registry) + format_families(families).encode()

    # -- instruments ------------------------------------------------------------

    def observe_grant_request(self, seconds: float, status: int) -> None:
        if 200 <= status < 300:
            outcome = "granted"
        elif status == 409:
            outcome = "refused"
        elif status < 500:
            outcome = "rejected"
        else:
            outcome = "error"
        self._grant_outcomes[outcome].observe(seconds)

    def time_cycles(self, jobs: JobsService) -> None:
        """Time the scheduling cycles that had work, and the collections
        run right after them."""
        jobs.scheduler.cycle_listeners.append(self.cycle_duration.observe)
        jobs.scheduler.collection_listeners.append(
            lambda collection: self.collection_duration.observe(collection.wall_s))

    def on_event(self, event: Event) -> None:
        """Count one event from the log (an EventHub listener)."""
        kind, data = event.kind, event.data if isinstance(event.data, dict) else {}
        if kind == "job.submitted":
            self._remember_submission(event, data)
        own = event.origin == self.origin
        if not own:
            return
        self.events.labels(kind).inc()
        if kind == "allocation.granted":
            self.granted.inc()
        elif kind == "allocation.released":
            reason = str(data.get("reason") or "released")
            self.released.labels(reason).inc()
            if reason == "preempted":
                self.preemptions.inc()
        elif kind == "job.placed":
            submitted = self._submitted.pop(event.subject, None)
            if submitted is not None:
                queue, at = submitted
                self.queue_wait.labels(queue).observe(max(0.0, event.at - at))
        elif kind == "job.state":
            state = data.get("state")
            if state in ENDED_JOB_STATES:
                self._submitted.pop(event.subject, None)
                if event.subject not in self._ended:  # a job ends once
                    self._ended[event.subject] = None
                    if len(self._ended) > TRACKED_SUBMISSIONS:
                        self._ended.popitem(last=False)
                    self.jobs_finished.labels(state).inc()

    def _remember_submission(self, event: Event, data: Mapping[str, Any]) -> None:
        self._submitted[event.subject] = (str(data.get("queue") or "default"), event.at)
        if len(self._submitted) > TRACKED_SUBMISSIONS:
            self._submitted.popitem(last=False)


class Family:
    """One gauge family, formatted by hand: with a thousand nodes a scrape
    holds ~10,000 samples, and prometheus_client's objects took 230 ms of
    the event loop for them; plain tuples take a few, and the text is made
    in a worker thread."""

    __slots__ = ("documentation", "labels", "name", "samples")

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = (),
                 value: float | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.samples: list[tuple[Sequence[str], float]] = []
        if value is not None:
            self.samples.append(((), value))

    def add_metric(self, values: Sequence[str], value: float) -> None:
        self.samples.append((values, value))


def format_families(families: Iterable[Family]) -> str:
    """The Prometheus text format (0.0.4) of gauge families."""
    out: list[str] = []
    for f in families:
        doc = f.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {f.name} {doc}\n# TYPE {f.name} gauge\n")
        for values, value in f.samples:
            if values:
                pairs = ",".join(f'{k}="{_escape(v)}"'
                                 for k, v in zip(f.labels, values, strict=True))
                out.append(f"{f.name}{{{pairs}}} {_number(value)}\n")
            else:
                out.append(f"{f.name} {_number(value)}\n")
    return "".join(out)


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class LiveCollector:
    """Gauges computed from memory at scrape time."""

    def __init__(self, sources: Sources, clock: Callable[[], float]) -> None:
        self.sources = sources
        self.clock = clock

    def collect(self) -> Iterator[Family]:
        yield from self._nodes()
        yield from self._jobs()
        yield from self._other()

    def _nodes(self) -> Iterator[Family]:
        ledger = self.sources.ledger
        nodes = list(ledger.nodes.values())
        by_state = Family(
            "apportion_nodes", "Nodes by state and health.", labels=["state", "health"])
        counts: dict[tuple[str, str], int] = {
            (s.value, h.value): 0 for s in NodeState for h in Health}
        for node in nodes:
            counts[(node.state.value, node.health.value)] += 1
        for (state, health), n in sorted(counts.items()):
            by_state.add_metric([state, health], n)
        yield by_state

        labels = ["node", "facility", "resource", "unit"]
        capacity = Family(
            "apportion_node_capacity", "Capacity of each node per resource.", labels=labels)
        allocated = Family(
            "apportion_node_allocated", "Amount allocated on each node per resource.",
            labels=labels)
        # One pass over the nodes feeds all three levels; units looked up once
        # per resource name (a thousand nodes must not cost the loop much).
        units: dict[str, tuple[str, float]] = {}
        facilities: dict[tuple[str, str], list[int]] = {}
        cluster: dict[str, list[int]] = {}
        for node in sorted(nodes, key=lambda n: n.name):
            used = ledger.allocated(node.name)
            facility = node.labels.get("facility", "")
            for resource, total in sorted(node.resources.items()):
                unit = units.get(resource)
                if unit is None:
                    unit = units[resource] = (unit_label(resource),
                                              1000.0 if unit_label(resource) == "cores" else 1.0)
                taken = used.get(resource, 0)
                key = (node.name, facility, resource, unit[0])
                capacity.add_metric(key, total / unit[1])
                allocated.add_metric(key, taken / unit[1])
                for sums in (facilities.setdefault((facility, resource), [0, 0]),
                             cluster.setdefault(resource, [0, 0])):
                    sums[0] += total
                    sums[1] += taken
        yield capacity
        yield allocated

        labels = ["facility", "resource", "unit"]
        f_capacity = Family(
            "apportion_facility_capacity", "Capacity of each facility per resource.",
            labels=labels)
        f_allocated = Family(
            "apportion_facility_allocated", "Amount allocated in each facility per resource.",
            labels=labels)
        f_ratio = Family(
            "apportion_facility_utilization_ratio",
            "Allocated share of each facility's capacity per resource (0-1).",
            labels=["facility", "resource"])
        for (facility, resource), (total, taken) in sorted(facilities.items()):
            unit = units[resource]
            f_capacity.add_metric((facility, resource, unit[0]), total / unit[1])
            f_allocated.add_metric((facility, resource, unit[0]), taken / unit[1])
            f_ratio.add_metric((facility, resource), taken / total if total else 0.0)
        yield f_capacity
        yield f_allocated
        yield f_ratio

        c_ratio = Family(
            "apportion_cluster_utilization_ratio",
            "Allocated share of the whole cluster's capacity per resource (0-1).",
            labels=["resource"])
        for resource, (total, taken) in sorted(cluster.items()):
            c_ratio.add_metric((resource,), taken / total if total else 0.0)
        yield c_ratio

        yield Family("apportion_allocations_active", "Active allocations.",
                                value=len(ledger.active()))

        ages = Family(
            "apportion_node_heartbeat_age_seconds",
            "Seconds since each node's agent was last heard from.", labels=["node"])
        for name, age in sorted(self.sources.heartbeats().items()):
            ages.add_metric([name], max(0.0, age))
        yield ages

    def _jobs(self) -> Iterator[Family]:
        jobs = self.sources.jobs
        now = self.clock()
        by_state = dict.fromkeys(LIVE_JOB_STATES, 0)
        queues = sorted(jobs.queues)
        pending = dict.fromkeys(queues, 0)
        running = dict.fromkeys(queues, 0)
        oldest: dict[str, float] = {}
        for live in list(jobs.live.values()):
            state, queue = live.row.state, live.row.queue
            if state in by_state:
                by_state[state] += 1
            if state in WAITING:
                pending[queue] = pending.get(queue, 0) + 1
                oldest[queue] = min(oldest.get(queue, now), live.row.submit_time)
            elif state in (JobState.RUNNING.value, JobState.SCHEDULED.value):
                running[queue] = running.get(queue, 0) + 1
        family = Family("apportion_jobs", "Jobs not yet finished, by state.",
                                   labels=["state"])
        for state, n in by_state.items():
            family.add_metric([state], n)
        yield family
        yield _per_queue("apportion_queue_pending_jobs",
                         "Jobs waiting to be placed (the queue's length).", pending)
        yield _per_queue("apportion_queue_running_jobs", "Jobs placed and not finished.",
                         running)
        yield _per_queue("apportion_queue_oldest_wait_seconds",
                         "How long the oldest waiting job of each queue has waited "
                         "(0 when none waits).",
                         {q: max(0.0, now - oldest[q]) if q in oldest else 0.0
                          for q in pending})
        usage = jobs.queue_usage()
        allocated = Family(
            "apportion_queue_allocated", "Amount allocated to each queue's jobs per resource.",
            labels=["queue", "resource", "unit"])
        for queue in sorted(usage):
            for resource, amount in sorted(usage[queue].items()):
                allocated.add_metric([queue, resource, unit_label(resource)],
                                     base_value(resource, amount))
        yield allocated

    def _other(self) -> Iterator[Family]:
        alerts = self.sources.alerts
        if alerts is not None:
            firing = Family("apportion_alerts_firing", "Open alerts by rule and "
                                       "severity.", labels=["rule", "severity"])
            counts: dict[tuple[str, str], int] = {}
            for alert in alerts.book.open_alerts():
                key = (alert.rule.value, alert.severity.value)
                counts[key] = counts.get(key, 0) + 1
            for (rule, severity), n in sorted(counts.items()):
                firing.add_metric([rule, severity], n)
            yield firing
        hub = self.sources.hub
        if hub is not None:
            yield Family("apportion_event_stream_followers",
                                    "Clients following the event stream.", value=hub.followers)
            yield Family("apportion_event_log_last_id",
                                    "Id of the newest event this server has read.",
                                    value=hub.last_id)


def _per_queue(name: str, documentation: str, values: Mapping[str, float]) -> Family:
    family = Family(name, documentation, labels=["queue"])
    for queue, value in sorted(values.items()):
        family.add_metric([queue], value)
    return family


__all__ = ["CONTENT_TYPE", "Family", "Metrics", "Sources", "base_value", "format_families",
           "unit_label"]

