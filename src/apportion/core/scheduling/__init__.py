"""The scheduling core: jobs and queues, the placement framework and its
plugins, queue policies and strategies, backfill, preemption, explain.

The server and the simulator call ``schedule_cycle`` with a ``ClusterState``
they keep up to date; see ``docs/scheduling.md``.
"""

from apportion.core.errors import JobRejected
from apportion.core.reasons import Failure
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.backfill import JobReservation
from apportion.core.scheduling.constraints import (
    Constraints,
    check_comparisons,
    parse_constraints,
)
from apportion.core.scheduling.cycle import (
    CycleResult,
    DeadlineRisk,
    Placement,
    Preemption,
    SchedulerConfig,
    schedule_cycle,
)
from apportion.core.scheduling.explain import Explanation, explain, validate_job
from apportion.core.scheduling.fragmentation import FragmentationReport, fragmentation
from apportion.core.scheduling.jobs import (
    Affinity,
    Job,
    JobState,
    Queue,
    RunningJob,
    TaskPlacement,
    TaskSpec,
    job,
)
from apportion.core.scheduling.policies import STRATEGIES, Strategy
from apportion.core.scheduling.state import ClusterState

__all__ = [
    "STRATEGIES",
    "Affinity",
    "ClusterState",
    "Constraints",
    "CycleResult",
    "DeadlineRisk",
    "Explanation",
    "Failure",
    "FragmentationReport",
    "Job",
    "JobRejected",
    "JobReservation",
    "JobState",
    "Placement",
    "Preemption",
    "Queue",
    "RunningJob",
    "RuntimeHistory",
    "SchedulerConfig",
    "Strategy",
    "TaskPlacement",
    "TaskSpec",
    "check_comparisons",
    "explain",
    "fragmentation",
    "job",
    "parse_constraints",
    "schedule_cycle",
    "validate_job",
]
