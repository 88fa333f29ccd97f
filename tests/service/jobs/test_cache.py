"""This server's picture of the live jobs (``service/jobs/cache.py``): loaded
at start with what still runs (an ended job whose processes are stopping
too), indexed by node for the agents, telling the agents' polls only about
changes to what a node must run, and placing a bag's tasks one by one."""

from __future__ import annotations

from collections.abc import Callable

from apportion.core.model import Node
from apportion.service.jobs import TaskReport
from apportion.service.wiring import Services
from service.builders import AGENT, as_leader


def test_a_restarted_server_loads_what_still_runs(servers: Callable[..., Services]) -> None:
    first = servers("first")
    ids: dict[str, str] = {}

    async def scenario() -> None:
        jobs = first.jobs
        await first.agents.register(Node("n1", {"cpu": 8000}), AGENT)
        running = await jobs.submit({"command": ["sleep", "1d"], "resources": {"cpu": "1"}}, "a")
        stopping = await jobs.submit({"command": ["sleep", "1d"], "resources": {"cpu": "1"}}, "a")
        done = await jobs.submit({"resources": {"cpu": "1"}}, "a")
        waiting = await jobs.submit({"resources": {"cpu": "8"}}, "a")  # no room now
        ids.update(running=running.id, stopping=stopping.id, done=done.id, waiting=waiting.id)
        await jobs.run_cycle()
        await jobs.complete(done.id, succeeded=True, exit_code=0)
        await jobs.cancel(stopping.id)  # its process has not exited yet

    as_leader(first, scenario)
    again = servers("again")
    cache = again.jobs.cache
    assert sorted(cache.jobs) == sorted([ids["running"], ids["stopping"], ids["waiting"]])
    assert cache.jobs[ids["stopping"]].state == "cancelled"
    on_n1 = sorted(live.id for live, _ in cache.tasks_on("n1"))
    assert on_n1 == sorted([ids["running"], ids["stopping"]])
    [(_, task)] = [(lj, t) for lj, t in cache.tasks_on("n1") if lj.id == ids["stopping"]]
    assert (task.stop_state, cache.job_of_task(task.id)) == ("cancelled", ids["stopping"])
    assert [lj.id for lj in cache.waiting()] == [ids["waiting"]]


def test_polls_hear_only_of_changes_to_what_a_node_must_run(services: Services) -> None:
    heard: list[set[str]] = []
    services.jobs.cache.node_listeners.append(lambda nodes: heard.append(set(nodes)))

    async def scenario() -> None:
        jobs = services.jobs
        await services.agents.register(Node("n1", {"cpu": 8000}), AGENT)
        job = await jobs.submit({"command": ["sleep", "1d"], "resources": {"cpu": "1"}}, "a")
        assert heard == []  # nothing placed yet
        await jobs.run_cycle()
        assert heard == [{"n1"}]
        _, [task] = await jobs.get(job.id)
        await jobs.task_report("n1", task.id, TaskReport("running"))
        assert heard == [{"n1"}]  # the agent knows already: no change to tell
        await jobs.cancel(job.id)
        assert heard == [{"n1"}, {"n1"}]  # a stop to hear
        await jobs.task_report("n1", task.id, TaskReport("exited", signalled=True))
        assert heard == [{"n1"}, {"n1"}]  # its own agent reported the end: nothing to tell
        assert jobs.cache.tasks_on("n1") == []
        assert job.id not in jobs.cache.jobs

    as_leader(services, scenario)


def test_a_reported_end_that_stops_a_sibling_still_wakes_the_node(services: Services) -> None:
    heard: list[set[str]] = []
    services.jobs.cache.node_listeners.append(lambda nodes: heard.append(set(nodes)))

    async def scenario() -> None:
        jobs = services.jobs
        await services.agents.register(Node("n1", {"cpu": 8000}), AGENT)
        job = await jobs.submit({"command": ["sleep", "1d"], "resources": {"cpu": "1"},
                                 "count": 2, "gang": True}, "a")
        await jobs.run_cycle()
        _, [first, second] = await jobs.get(job.id)
        heard.clear()
        await jobs.task_report("n1", first.id, TaskReport("exited", exit_code=3))
        assert heard == [{"n1"}]  # the gang's other task must stop
        _, tasks = await jobs.get(job.id)
        assert [(t.id, t.stop_state) for t in tasks if t.state in ("scheduled", "running")] \
            == [(second.id, "cancelled")]

    as_leader(services, scenario)


def test_a_bags_tasks_are_placed_as_room_comes(services: Services) -> None:
    async def scenario() -> None:
        jobs = services.jobs
        await services.ledger.register_node(Node("n1", {"cpu": 2000}))
        job = await jobs.submit({"resources": {"cpu": "1"}, "count": 3}, "a")
        live = jobs.cache.jobs[job.id]
        assert [u.id for u in live.open_units()] == [f"{job.id}#0", f"{job.id}#1", f"{job.id}#2"]
        await jobs.run_cycle()
        assert [u.id for u in live.open_units()] == [f"{job.id}#2"]
        assert sorted(t.index for t in live.active()) == [0, 1]
        await services.ledger.register_node(Node("n2", {"cpu": 1000}))
        await jobs.run_cycle()
        assert jobs.cache.jobs[job.id].open_units() == []
        assert [lj.id for lj, _ in jobs.cache.tasks_on("n2")] == [job.id]

    as_leader(services, scenario)
