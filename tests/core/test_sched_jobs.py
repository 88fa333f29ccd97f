"""The scheduler's values (``core/scheduling/jobs.py``): what a job refuses,
what it derives (total, task count, shape, FIFO key, whether a failure can
be cached), how a bag of tasks splits, a queue's priority bounds and a
running job's expected end. Literal values, written for the mutants of
``jobs.py`` (docs/testing.md).
"""

from __future__ import annotations

import pytest

from apportion.core.errors import InvalidInput
from apportion.core.labels import parse_selector
from apportion.core.scheduling import Affinity, Job, Queue, RunningJob, TaskSpec, job
from apportion.core.scheduling.jobs import NO_CONSTRAINTS


def refusal(make: object) -> tuple[str, dict[str, object]]:
    assert callable(make)
    with pytest.raises(InvalidInput) as caught:
        make()
    return caught.value.message, caught.value.data


def test_an_affinity_targets_nodes_or_jobs_only() -> None:
    sel = parse_selector("rack=r1")
    assert Affinity(sel).target == "node"
    assert Affinity(sel, target="job").target == "job"
    assert refusal(lambda: Affinity(sel, target="rack")) == (
        "affinity.target: use 'node' or 'job'", {"field": "affinity.target"})


def test_a_job_needs_tasks_each_asking_for_a_positive_amount() -> None:
    no_tasks = ("tasks: a job needs at least one task", {"field": "tasks"})
    no_amount = ("tasks: every task asks for at least one resource, with positive amounts",
                 {"field": "tasks"})
    assert refusal(lambda: Job("j", ())) == no_tasks
    assert refusal(lambda: Job("j", (TaskSpec({"cpu": 1}, 1), TaskSpec({"cpu": 1}, 0)))) == (
        no_tasks)
    assert refusal(lambda: Job("j", (TaskSpec({}),))) == no_amount
    # Every count is checked before any resources (main's order of checks).
    assert refusal(lambda: Job("j", (TaskSpec({}), TaskSpec({"cpu": 1}, 0)))) == no_tasks
    assert refusal(lambda: Job("j", (TaskSpec({"cpu": 1, "gpu": 0}),))) == no_amount
    # The smallest job there is: one task of one unit.
    assert Job("j", (TaskSpec({"gpu": 1}, 1),)).task_count == 1


def test_a_job_sums_its_groups_and_counts_its_tasks() -> None:
    j = Job("j", (TaskSpec({"cpu": 1000, "memory": 2}, 3), TaskSpec({"cpu": 500}, 2)))
    assert j.total == {"cpu": 4000, "memory": 6}
    assert j.task_count == 5


def test_the_shape_is_the_sorted_groups_constraints_and_node_rules() -> None:
    a = Job("a", (TaskSpec({"memory": 2, "cpu": 1000}, 3),), submit_time=5.0)
    b = Job("b", (TaskSpec({"cpu": 1000, "memory": 2}, 3),), queue="other", priority=9)
    assert a.shape == ((((("cpu", 1000), ("memory", 2)), 3),), NO_CONSTRAINTS, ())
    assert (b.shape, b.shape_hash) == (a.shape, a.shape_hash)
    assert a.shape_hash == hash(a.shape)
    assert (a.fifo_key, b.fifo_key) == ((5.0, "a"), (0.0, "b"))
    rule = Affinity(parse_selector("rack=r1"), required=True)
    wish = Affinity(parse_selector("rack=r2"))
    ruled = Job("r", a.tasks, affinity=(wish,), anti_affinity=(rule,))
    assert ruled.shape == (a.shape[0], NO_CONSTRAINTS, (), (rule,))
    assert Job("w", a.tasks, affinity=(wish,)).shape == a.shape
    drawn = Job("d", a.tasks, affinity=(rule,))
    assert drawn.shape == (a.shape[0], NO_CONSTRAINTS, (rule,))
    assert drawn.shape != ruled.shape


def test_only_a_required_job_affinity_makes_a_failure_uncacheable() -> None:
    sel = parse_selector("name=db")
    tasks = (TaskSpec({"cpu": 1}),)
    assert Job("j", tasks).cacheable is True
    needs_db = Affinity(sel, target="job", required=True)
    assert Job("j", tasks, affinity=(needs_db,)).cacheable is False
    assert Job("j", tasks, affinity=(Affinity(sel, target="job"),)).cacheable is True
    assert Job("j", tasks, affinity=(Affinity(sel, required=True),)).cacheable is True
    assert Job("j", tasks, anti_affinity=(
        Affinity(sel, target="job", required=True),)).cacheable is True


def test_a_bag_of_tasks_splits_into_one_job_per_task() -> None:
    bag = Job("bag", (TaskSpec({"cpu": 2}, 2), TaskSpec({"gpu": 1}, 1)), queue="q", priority=3)
    units = bag.units()
    assert [(u.id, u.tasks, u.queue, u.priority, u.gang) for u in units] == [
        ("bag#0", (TaskSpec({"cpu": 2}, 1),), "q", 3, False),
        ("bag#1", (TaskSpec({"cpu": 2}, 1),), "q", 3, False),
        ("bag#2", (TaskSpec({"gpu": 1}, 1),), "q", 3, False),
    ]
    gang = Job("g", bag.tasks, gang=True)
    assert gang.units() == (gang,)
    single = Job("s", (TaskSpec({"cpu": 2}),))
    assert single.units() == (single,)


def test_the_job_shorthand_makes_a_gang_of_more_than_one_task() -> None:
    one = job("one", {"cpu": 2})
    assert (one.id, one.tasks, one.gang) == ("one", (TaskSpec({"cpu": 2}, 1),), False)
    two = job("two", {"cpu": 2}, count=2, queue="q")
    assert (two.id, two.tasks, two.gang, two.queue) == (
        "two", (TaskSpec({"cpu": 2}, 2),), True, "q")
    bag = job("bag", {"cpu": 2}, count=2, gang=False)
    assert (bag.gang, len(bag.units())) == (False, 2)


def test_a_queue_clamps_priorities_into_its_bounds() -> None:
    q = Queue("q", min_priority=1, max_priority=5)
    assert [q.clamp(p) for p in (-3, 0, 1, 3, 5, 6, 100)] == [1, 1, 1, 3, 5, 5, 5]
    assert [Queue("open").clamp(p) for p in (-100, 0, 100)] == [-100, 0, 100]
    assert [Queue("floor", min_priority=2).clamp(p) for p in (1, 9)] == [2, 9]
    assert [Queue("cap", max_priority=2).clamp(p) for p in (-9, 3)] == [-9, 2]


def test_a_running_job_ends_at_its_start_plus_estimate_or_now_if_overdue() -> None:
    j = job("j", {"cpu": 1})
    assert RunningJob(j, 10.0, ()).expected_end(12.0) is None
    assert RunningJob(j, 10.0, (), 5.0).expected_end(12.0) == 15.0
    assert RunningJob(j, 10.0, (), 5.0).expected_end(20.0) == 20.0
