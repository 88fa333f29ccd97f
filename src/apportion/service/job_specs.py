"""A job as submitted (a JSON spec, stored as given) and as the core sees it.

The stored spec is the validated request body, so a job read back after a
restart is rebuilt by the same code that built it at submission.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from apportion.core.gpu_shares import GPU, SHARES, ShareRequest, share_request
from apportion.core.labels import parse_selector
from apportion.core.records import QueueRow
from apportion.core.resources import parse_vector
from apportion.core.scheduling import Affinity, Job, Queue, TaskSpec
from apportion.core.scheduling.constraints import Constraints, family, parse_constraints
from apportion.exceptions import InvalidInput

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_TASKS = 10_000
AGENT_LABEL = "apportion.io/agent"
"""Set on every node an agent registered: a job with a command asks for it,
so it never lands on a node where nothing would run its processes."""


def parse_duration(value: object, field: str) -> float | None:
    """Seconds from a number or text like ``90s``, ``10m``, ``2h``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: expected seconds or a duration like '10m'", field=field)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    else:
        raise InvalidInput(
            f"{field}: {value!r} is not a duration (e.g. 3600, '90s', '10m', '2h')", field=field
        )
    if not 0 < seconds <= 10 * 365 * 86400:
        raise InvalidInput(f"{field}: must be more than 0 and at most 10 years", field=field)
    return seconds


def parse_time(value: object, field: str) -> float | None:
    """Epoch seconds from a number or an ISO 8601 timestamp. A timestamp
    without an offset is UTC: the server's own zone is no business of the
    client's (``apportion submit --deadline`` adds the user's offset)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        seconds = _epoch_text(value, field)
        if seconds is not None:
            return seconds
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
    raise InvalidInput(f"{field}: {value!r} is not a time (epoch seconds or ISO 8601)", field=field)


_LATEST_EPOCH = 1e11
"""The largest epoch seconds taken (the API's bound on a number: year 5138)."""


def _epoch_text(value: str, field: str) -> float | None:
    """Epoch seconds written as text (``apportion submit --deadline
    1700000000`` sends them so), or None when ``value`` is not a number."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not 0 <= seconds <= _LATEST_EPOCH:  # NaN fails this too
        raise InvalidInput(f"{field}: {value!r} is not epoch seconds between 0 and "
                           f"{_LATEST_EPOCH:.0e}", field=field)
    return seconds


def tasks_of(spec: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    """``tasks: [{resources, count}]``, the shorthand ``resources`` + ``count``,
    or a job array: ``resources`` + ``array`` (independent tasks, never a gang)."""
    array = spec.get("array")
    raw: list[Mapping[str, Any]]
    if array is not None:
        if spec.get("tasks") or int(spec.get("count", 1)) != 1 or spec.get("gang"):
            raise InvalidInput(
                "array: a job array is `resources` and `array: N`; leave out count, tasks and gang",
                field="array",
            )
        raw = [{"resources": spec.get("resources") or {}, "count": int(array)}]
    else:
        raw = spec.get("tasks") or [
            {"resources": spec.get("resources") or {}, "count": spec.get("count", 1)}
        ]
    out = []
    for i, task in enumerate(raw):
        resources = parse_vector(task.get("resources") or {}, f"tasks[{i}].resources")
        if not resources:
            raise InvalidInput(
                f"tasks[{i}].resources: ask for at least one resource",
                field=f"tasks[{i}].resources",
            )
        out.append(TaskSpec(resources, int(task.get("count", 1))))
    if sum(t.count for t in out) > MAX_TASKS:
        raise InvalidInput(f"tasks: at most {MAX_TASKS} tasks per job", field="tasks")
    return tuple(out)


def with_gpu_shares(spec: Mapping[str, Any], splits: Iterable[int]) -> dict[str, Any]:
    """``spec`` with a share of a GPU (``gpu: 0.25``) written as the slots the
    ledger grants (``gpu.shares: 1``) and the constraint ``gpu.shares=4`` that
    keeps them on GPUs split in 4; what was asked stays in ``gpu_share``.
    Done once at submission, so a job read back means the same slots even if
    the cluster's splits change later."""
    out = dict(spec)
    if out.get("tasks"):
        out["tasks"] = [dict(t) for t in out["tasks"]]
        places = [(t, f"tasks[{i}].resources") for i, t in enumerate(out["tasks"])]
    else:
        places = [(out, "resources")]
    offered = splits  # read only for a share: a lazy iterable costs a plain job nothing
    found: list[tuple[object, ShareRequest]] = []
    whole = False
    for holder, field in places:
        resources = holder.get("resources")
        if not isinstance(resources, Mapping) or GPU not in resources:
            continue
        share = share_request(resources[GPU], offered, f"{field}.{GPU}")
        if share is None:
            whole = True
            continue
        if SHARES in resources:
            raise InvalidInput(f"{field}: ask for {GPU} or {SHARES}, not both",
                               field=f"{field}.{SHARES}")
        holder["resources"] = {**{k: v for k, v in resources.items() if k != GPU},
                               SHARES: share.shares}
        found.append((resources[GPU], share))
    if not found:
        return out
    if whole or len({s.split for _, s in found}) > 1:
        raise InvalidInput("resources.gpu: a job asks for whole GPUs or for one size of GPU "
                           "share, not both; submit them as separate jobs", field="resources.gpu")
    asked, share = found[0]
    out["constraints"] = [*(spec.get("constraints") or []), f"{SHARES}={share.split}"]
    out["gpu_share"] = {"asked": str(asked), "shares": share.shares, "split": share.split,
                        "percent": share.percent}
    return out


def _affinities(items: list[Mapping[str, Any]] | None, field: str) -> tuple[Affinity, ...]:
    return tuple(
        Affinity(
            parse_selector(a["selector"], f"{field}[{i}].selector"),
            a.get("target", "node"),
            int(a.get("weight", 1)),
            bool(a.get("required", False)),
        )
        for i, a in enumerate(items or [])
    )


def job_from_spec(
    spec: Mapping[str, Any],
    *,
    job_id: str,
    submit_time: float,
    owner: str | None,
    needs_agent: bool = True,
) -> Job:
    """The core's job; with a command it asks for a node an agent runs
    (``needs_agent``: left out when checking whether it could ever run, as
    an agent may join later)."""
    tasks = tasks_of(spec)
    command = spec.get("command")
    return Job(
        job_id,
        tasks,
        queue=spec.get("queue") or "default",
        priority=int(spec.get("priority") or 0),
        submit_time=submit_time,
        constraints=_constraints(spec, tasks, needs_agent=needs_agent),
        affinity=_affinities(spec.get("affinity"), "affinity"),
        anti_affinity=_affinities(spec.get("anti_affinity"), "anti_affinity"),
        gang=bool(spec.get("gang", False)),
        preemptible=bool(spec.get("preemptible", False)),
        deadline=parse_time(spec.get("deadline"), "deadline"),
        runtime_estimate=parse_duration(spec.get("runtime_estimate"), "runtime_estimate"),
        name=spec.get("name"),
        user=owner,
        labels=dict(spec.get("labels") or {}),
        command=tuple(command) if command else None,
    )


def _constraints(spec: Mapping[str, Any], tasks: tuple[TaskSpec, ...], *,
                 needs_agent: bool) -> Constraints:
    families = {family(r) for t in tasks for r in t.resources} | {"gpu"}
    return parse_constraints([
        *(spec.get("constraints") or []),
        *([f"{AGENT_LABEL}=true"] if spec.get("command") and needs_agent else []),
    ], families)


def as_checked(job: Job, spec: Mapping[str, Any]) -> Job:
    """``job`` (from ``spec``) as ``job_from_spec(..., needs_agent=False)``
    makes it, without reading the rest of the spec again: a submission is
    checked without the agent label, and the job kept with it."""
    if not spec.get("command"):
        return job
    return replace(job, constraints=_constraints(spec, job.tasks, needs_agent=False))


def queue_from_row(name: str, quota: Mapping[str, Any], weight: float,
                   min_priority: int | None, max_priority: int | None) -> Queue:
    """A queue as a user gives it: quantities as text (``"4"``, ``"16Gi"``)."""
    return Queue(name, parse_vector(quota, "quota"), weight, min_priority, max_priority)


def queue_of_stored(row: QueueRow) -> Queue:
    """A queue as stored: its quota is in base units already, and parsing it
    again as a user's text would read 4000 millicores as 4000 cores."""
    return Queue(row.name, {r: int(q) for r, q in row.quota.items()}, row.weight,
                 row.min_priority, row.max_priority)
