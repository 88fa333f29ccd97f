"""Answers the schemathesis run (``test_schemathesis.py``) found wrong, each
pinned with literal values: a request that is repeated, or sent in a state
few tests reach, is answered as the API documents."""

from __future__ import annotations

import httpx

from server.helpers import until


def test_cancelling_a_job_again_while_its_task_stops_answers_the_job(api: httpx.Client) -> None:
    """The first cancel asks the task to stop (no agent runs it here, so it
    stays stopping); a second cancel found nothing left to ask and answered
    500 (KeyError on the job id) instead of the cancelled job."""
    node = {
        "name": "answers-1",
        "resources": {"cpu": "4", "memory": "8Gi"},
        "labels": {"suite": "answers-1"},
    }
    registered = api.post(
        "/api/v1/agents/register", json={"node": node, "agent": {"id": "agent-answers-1"}}
    )
    assert registered.status_code == 200, registered.text
    job = api.post(
        "/api/v1/jobs",
        json={
            "name": "stops-slowly",
            "resources": {"cpu": "1"},
            "command": ["sleep", "600"],
            "constraints": ["suite=answers-1"],
        },
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    until(lambda: api.get(f"/api/v1/jobs/{job_id}").json()["tasks"], what="the task")

    first = api.post(f"/api/v1/jobs/{job_id}/cancel")
    again = api.post(f"/api/v1/jobs/{job_id}/cancel")

    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["state"], again.json()["reason"]) == (
        job_id,
        "cancelled",
        "cancelled",
    )
    assert [t["node"] for t in again.json()["tasks"]] == ["answers-1"]


def test_a_method_not_allowed_lists_every_method_of_the_path(api: httpx.Client) -> None:
    """Starlette's 405 named only the first route matching the path:
    ``Allow: GET`` for /api/v1/nodes, which takes POST as well."""
    nodes = api.request("OPTIONS", "/api/v1/nodes")
    node = api.patch("/api/v1/nodes/answers-1", json={})
    alloc = api.put("/api/v1/allocations")

    assert (nodes.status_code, nodes.headers["allow"]) == (405, "GET, POST")
    assert (node.status_code, node.headers["allow"]) == (405, "GET, PUT, DELETE")
    assert (alloc.status_code, alloc.headers["allow"]) == (405, "GET, POST")
    assert nodes.json() == {"error": "http_error", "message": "Method Not Allowed"}


def test_true_and_false_are_not_numbers(api: httpx.Client) -> None:
    """The schema says integer (or number); pydantic read ``false`` as 0 and
    ``true`` as 1, so a queue got ``max_priority: 0`` from ``false``."""
    queue = api.post("/api/v1/queues", json={"name": "answers-q", "max_priority": False})
    job = api.post("/api/v1/jobs", json={"resources": {"cpu": "1"}, "priority": True})
    report = api.post(
        "/api/v1/agents/answers-1/tasks/t-none/report",
        json={"state": "exited", "exit_code": 0, "usage": {"memory": True}},
    )

    assert queue.status_code == 422, queue.text
    assert queue.json()["details"] == [
        {"field": "max_priority", "message": "Value error, expected a number, not false"}
    ]
    assert job.status_code == 422, job.text
    assert job.json()["details"] == [
        {"field": "priority", "message": "Value error, expected a number, not true"}
    ]
    assert report.status_code == 422, report.text
    assert report.json()["details"] == [
        {"field": "usage.memory", "message": "Value error, expected a number, not true"}
    ]
    assert "answers-q" not in [q["name"] for q in api.get("/api/v1/queues").json()["queues"]]
