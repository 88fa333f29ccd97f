"""Generated queue events for the tests of the ``adaptive`` queues: jobs
added, removed and recorded into a history, one step at a time."""

from __future__ import annotations

from typing import Protocol

from hypothesis import strategies as st

from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.jobs import Job, job

P = 1000

Drawn = tuple[float, str | None, str | None, int, float | None]
"""A job's submit time, user, name, processors and estimate."""
Step = tuple[str, Drawn, int, float]
"""What happens ("add", "remove", "record", "order"), to which job, the
pick of the job removed, and the run time over the estimate."""

jobs_drawn = st.tuples(
    st.sampled_from([0.0, 0.0, 1.0, 3.0, 10.0, 50.0, 99.0, 100.0]),
    st.sampled_from([None, "ann", "bob"]),
    st.sampled_from([None, "sim"]),
    st.integers(1, 4),
    st.one_of(st.none(), st.sampled_from([0.0, 0.5, 5.0, 60.0, 600.0, 1e5])),
)
steps = st.lists(st.tuples(st.sampled_from(["add", "add", "remove", "record", "order"]),
                           jobs_drawn, st.integers(0, 50), st.sampled_from([0.1, 1.0, 3.0])),
                 max_size=60)


class Queue(Protocol):
    def add(self, job: Job) -> None: ...

    def remove(self, job: Job) -> None: ...


def take_step(n: int, step: Step, h: RuntimeHistory, queue: Queue,
              waiting: dict[str, Job]) -> None:
    """Step ``n`` on ``queue``, ``waiting`` (the jobs it holds, as added)
    and the history."""
    what, (submit, user, name, procs, est), pick, factor = step
    if what == "add":
        j = job(f"j{n:02d}", {"cpu": P * procs}, user=user, name=name,
                submit_time=submit, runtime_estimate=est)
        waiting[j.id] = j
        queue.add(j)
    elif what == "remove" and waiting:
        j = waiting.pop(sorted(waiting)[pick % len(waiting)])
        queue.remove(j)
    elif what == "record":
        h.record(job(f"d{n}", {"cpu": P * procs}, user=user, name=name,
                     runtime_estimate=est), (est or 30.0) * factor)
