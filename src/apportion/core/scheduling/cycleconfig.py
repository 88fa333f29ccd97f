"""What a scheduling cycle is asked (``SchedulerConfig``, the run-time
``estimator``) and what it answers (``CycleResult`` and its parts, ``deadline_risks``); the
cycle itself is ``cycle.schedule_cycle``, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, is_not

from apportion.core.errors import InvalidInput
from apportion.core.frozen import quick_init
from apportion.core.reasons import Failure
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.backfill import JobReservation
from apportion.core.scheduling.jobs import Job, TaskPlacement
from apportion.core.scheduling.policies import Strategy, strategy

BACKFILL_MODES = ("none", "easy", "conservative")
INF = float("inf")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    strategy: str = "fifo"
    backfill: str = "easy"
    aging_rate: float = 1.0 / 600
    """Priority points a pending job gains per second waited (priority policy)."""
    aging_bound_s: float = 3 * 86400.0
    """``adaptive`` with backfilling: a job that has waited this long goes
    ahead of every job that has waited less, in submit order."""
    preemption: bool = True
    preemption_grace_s: float = 30.0
    """How long victims take to stop; a job that known running-job ends
    would start within this time waits instead of evicting anyone."""
    max_preemption_attempts: int = 16
    """Preemption plans tried per cycle (each is a what-if over the cluster)."""
    default_estimate: float | None = None
    """Run time assumed for a job with no given or learned estimate (None:
    unknown, so its end cannot be planned on)."""
    max_placements: int | None = None
    """Starts per cycle (None: no limit); the rest wait for the next cycle."""
    reservation_depth: int | None = 100
    """Conservative backfilling: how many waiting jobs get a reservation per
    cycle (as Slurm's ``bf_max_job_test``). Jobs deeper in the queue may
    still start now if the plan has room for them at once, but get no
    reservation of their own. None: every waiting job."""
    queue_required: bool = False
    """Hold jobs whose queue is not in ``queues`` (the server refuses them at
    submission already; the simulator creates queues as it meets them)."""

    def __post_init__(self) -> None:
        if self.backfill not in BACKFILL_MODES:
            raise InvalidInput(
                f"backfill: unknown {self.backfill!r}; use none, easy or conservative",
                field="backfill",
            )
        strategy(self.strategy)


@quick_init
@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    tasks: tuple[TaskPlacement, ...]
    start: float
    estimate: float | None
    backfilled: bool = False
    preempted: tuple[str, ...] = ()
    """Victims evicted to make room (also listed in ``CycleResult.preemptions``)."""


@dataclass(frozen=True, slots=True)
class Preemption:
    victim: str
    by: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeadlineRisk:
    job_id: str
    deadline: float
    expected_end: float
    certain: bool
    """True when even starting now it ends too late; False when it misses
    only if it starts no earlier than its reservation."""


@quick_init
@dataclass(frozen=True, slots=True)
class CycleResult:
    placements: tuple[Placement, ...]
    reservations: tuple[JobReservation, ...]
    preemptions: tuple[Preemption, ...]
    unplaced: Mapping[str, Failure]
    """Why each job that did not start waits (``explain`` gives the detail)."""
    deadline_risks: tuple[DeadlineRisk, ...] = ()


def estimator(
    strat: Strategy, history: RuntimeHistory | None, default: float | None
) -> Callable[[Job], float | None]:
    """The run time a strategy plans with for a job."""

    learned = history.estimate if strat.learns and history is not None else None
    if learned is not None and default is None:
        return learned  # its answer stands as it is (asked for every waiting job)
    if learned is None and default is None:
        return given_estimate  # what ``estimate`` below comes to, without a closure per cycle

    def estimate(job: Job) -> float | None:
        if learned is not None:
            guess = learned(job)
            return default if guess is None else guess
        if job.runtime_estimate is not None:
            return job.runtime_estimate
        return default

    return estimate


def given_estimate(job: Job) -> float | None:
    """The run time the job was submitted with (None: unknown)."""
    return job.runtime_estimate


_deadline = attrgetter("deadline")


def deadline_risks(
    ordered: Sequence[Job],
    reservations: Sequence[JobReservation],
    placements: Sequence[Placement],
    now: float,
    estimate: Callable[[Job], float | None],
) -> tuple[DeadlineRisk, ...]:
    """The jobs of ``ordered`` with a deadline that their start now (if the
    cycle placed them or planned none) or their reservation would miss."""
    # Filtered in C: every waiting job, every cycle, and most have none.
    with_deadline = list(compress(ordered, map(is_not, map(_deadline, ordered), repeat(None))))
    if not with_deadline:
        return ()  # most traces: no deadlines, no lookups to build
    starts = {r.job_id: r.start for r in reservations}
    started = {pl.job_id for pl in placements}
    out: list[DeadlineRisk] = []
    for job in with_deadline:
        assert job.deadline is not None
        est = estimate(job) or 0.0
        if job.id in started or job.id not in starts:
            end = now + est
            if end > job.deadline:
                out.append(DeadlineRisk(job.id, job.deadline, end, True))
            continue
        end = starts[job.id] + est
        if end > job.deadline:
            out.append(DeadlineRisk(job.id, job.deadline, end, now + est > job.deadline))
    return tuple(out)
