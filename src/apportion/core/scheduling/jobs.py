"""Jobs, queues and where a running job's tasks sit: the scheduler's values.

Times are float seconds on the caller's clock (the server's epoch seconds, or
the simulator's virtual clock); core never reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from apportion.core.errors import InvalidInput
from apportion.core.frozen import quick_init
from apportion.core.labels import LabelRequirement
from apportion.core.resources import Vector
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, Constraints


class JobState(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """``count`` identical tasks, each asking for ``resources``."""

    resources: Mapping[str, int]
    count: int = 1


@dataclass(frozen=True, slots=True)
class Affinity:
    """A preference (or with ``required``, a rule) about where a job goes.

    ``target="node"`` matches node labels; ``target="job"`` matches the labels
    of jobs already running on the node (``name``, ``user``, ``queue`` and
    ``job`` are always among a job's labels). In ``Job.affinity`` it attracts,
    in ``Job.anti_affinity`` it repels.
    """

    selector: tuple[LabelRequirement, ...]
    target: str = "node"
    weight: int = 1
    required: bool = False

    def __post_init__(self) -> None:
        if self.target not in ("node", "job"):
            raise InvalidInput("affinity.target: use 'node' or 'job'", field="affinity.target")


def _sum_tasks(tasks: Iterable[TaskSpec]) -> dict[str, int]:
    total: dict[str, int] = {}
    for spec in tasks:
        for name, qty in spec.resources.items():
            total[name] = total.get(name, 0) + qty * spec.count
    return total


@dataclass(frozen=True, slots=True)
class Job:
    """A request for resources, run as one or more tasks.

    A gang's tasks are placed all at once or not at all. A job with several
    tasks that is not a gang is a bag of independent tasks: ``units()`` splits
    it so each task is scheduled on its own.
    """

    id: str
    tasks: tuple[TaskSpec, ...]
    queue: str = "default"
    priority: int = 0
    submit_time: float = 0.0
    constraints: Constraints = NO_CONSTRAINTS
    affinity: tuple[Affinity, ...] = ()
    anti_affinity: tuple[Affinity, ...] = ()
    gang: bool = False
    preemptible: bool = False
    deadline: float | None = None
    runtime_estimate: float | None = None
    name: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    total: Mapping[str, int] = field(init=False, repr=False, compare=False)
    task_count: int = field(init=False, repr=False, compare=False)
    shape: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    shape_hash: int = field(init=False, repr=False, compare=False)
    fifo_key: tuple[float, str] = field(init=False, repr=False, compare=False)
    cacheable: bool = field(init=False, repr=False, compare=False)
    """Whether a failure to place this job stays a failure for the rest of
    a cycle: placements only take capacity away, except that they may
    bring a job this one must run beside."""

    def __post_init__(self) -> None:
        # Plain loops, not ``any`` over generators: a replay builds every
        # job of its trace (28,000 for KTH), and the generators showed.
        tasks = self.tasks
        if not tasks:
            raise InvalidInput("tasks: a job needs at least one task", field="tasks")
        task_count = 0
        for s in tasks:
            if s.count < 1:
                raise InvalidInput("tasks: a job needs at least one task", field="tasks")
            task_count += s.count
        for s in tasks:
            if not s.resources or min(s.resources.values()) <= 0:
                raise InvalidInput(
                    "tasks: every task asks for at least one resource, with positive amounts",
                    field="tasks",
                )
        object.__setattr__(self, "total", _sum_tasks(tasks))
        object.__setattr__(self, "task_count", task_count)
        # Jobs with equal shapes pass and fail the same node checks, so one
        # failure in a cycle answers for all of them (an equivalence class).
        sig = tuple([(tuple(sorted(s.resources.items())), s.count) for s in tasks])
        # A required rule attracts in ``affinity`` and repels in
        # ``anti_affinity``: the same rule on either side is another verdict,
        # so the two stay apart (a fourth part only where a job repels, so
        # the other jobs' shapes and hashes stay what they were).
        affinity, anti = self.affinity, self.anti_affinity
        attract = tuple([a for a in affinity if a.required]) if affinity else ()
        repel = tuple([a for a in anti if a.required]) if anti else ()
        shape = (sig, self.constraints, attract, repel) if repel else (
            sig, self.constraints, attract)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "shape_hash", hash(shape))
        object.__setattr__(self, "fifo_key", (self.submit_time, self.id))
        cacheable = True
        for a in affinity:
            if a.required and a.target == "job":
                cacheable = False
                break
        object.__setattr__(self, "cacheable", cacheable)

    @property
    def job_labels(self) -> dict[str, str]:
        """Labels other jobs' (anti-)affinity terms see."""
        out = dict(self.labels)
        out["job"] = self.id
        out["queue"] = self.queue
        if self.name is not None:
            out["name"] = self.name
        if self.user is not None:
            out["user"] = self.user
        return out

    def units(self) -> tuple[Job, ...]:
        """The jobs the scheduler places: the job itself, or one per task when
        it has several tasks and is not a gang (ids ``<id>#<n>``)."""
        if self.gang or self.task_count == 1:
            return (self,)
        out: list[Job] = []
        for spec in self.tasks:
            for _ in range(spec.count):
                unit_id = f"{self.id}#{len(out)}"
                out.append(replace(self, id=unit_id, tasks=(TaskSpec(spec.resources),)))
        return tuple(out)


def job(
    id: str,
    resources: Vector,
    *,
    count: int = 1,
    **kwargs: Any,
) -> Job:
    """Shorthand for a job of ``count`` identical tasks (a gang when count > 1
    unless ``gang=False`` is given)."""
    kwargs.setdefault("gang", count > 1)
    return Job(id, (TaskSpec(dict(resources), count),), **kwargs)


@dataclass(frozen=True, slots=True)
class Queue:
    """A tenant's share: quota per resource (a missing resource is unlimited),
    fair-share weight, and the priorities its jobs may ask for."""

    name: str
    quota: Mapping[str, int] = field(default_factory=dict)
    weight: float = 1.0
    min_priority: int | None = None
    max_priority: int | None = None

    def clamp(self, priority: int) -> int:
        if self.min_priority is not None and priority < self.min_priority:
            return self.min_priority
        if self.max_priority is not None and priority > self.max_priority:
            return self.max_priority
        return priority


@quick_init
@dataclass(frozen=True, slots=True)
class TaskPlacement:
    """``count`` identical tasks of a job on one node, with the devices they
    hold (device-holding tasks always have ``count == 1``, one per task)."""

    node: str
    resources: Mapping[str, int]
    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    count: int = 1


@quick_init
@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job holding resources: where its tasks are and when it started.

    ``estimate`` is the run time expected when it started (the user's, or a
    learned one); None when nothing is known, so its end cannot be planned on.
    """

    job: Job
    start: float
    tasks: tuple[TaskPlacement, ...]
    estimate: float | None = None

    def expected_end(self, now: float) -> float | None:
        if self.estimate is None:
            return None
        return max(now, self.start + self.estimate)
