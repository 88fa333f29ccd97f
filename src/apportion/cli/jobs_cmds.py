"""CLI commands for work: submit, jobs, queues."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from apportion.cli.ledger_cmds import JsonOpt, ServerOpt, TokenOpt, client_for, parse_pairs
from apportion.cli.output import api_errors, console, show, table

jobs_app = typer.Typer(help="Jobs: list, show, explain, cancel.", no_args_is_help=True)
queues_app = typer.Typer(help="Queues (tenants): quota, fair-share weight, priority bounds.",
                         no_args_is_help=True)


def _job_rows(jobs: list[dict[str, Any]]) -> list[list[str]]:
    def what(j: dict[str, Any]) -> str:
        spec = j["spec"]
        if spec.get("array"):
            # An array is one line: its size, then how many of its tasks are where.
            shape = ",".join(f"{k}={v}" for k, v in (spec.get("resources") or {}).items())
            counts = j.get("task_counts") or {}
            where = " ".join(f"{k} {counts[k]}" for k in ("pending", "active", "succeeded",
                                                          "failed") if counts.get(k))
            return f"array {spec['array']}x {shape}" + (f" ({where})" if where else "")
        tasks = spec.get("tasks") or [{"resources": spec.get("resources", {}),
                                        "count": spec.get("count", 1)}]
        return "; ".join(f"{t.get('count', 1)}x " + ",".join(f"{k}={v}" for k, v in
                                                              t["resources"].items())
                         for t in tasks)

    return [[j["id"], j["name"] or "-", j["owner"] or "-", j["queue"], str(j["priority"]),
             j["state"], what(j), j["submitted_at"]] for j in jobs]


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option("--state")] = None,
    queue: Annotated[str | None, typer.Option("--queue")] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    with api_errors(), client_for(server, token) as c:
        jobs = c.list_jobs(state=state, queue=queue, owner=owner, limit=limit)
    show(jobs, as_json, lambda js: table(
        f"{len(js)} job(s)", ["id", "name", "owner", "queue", "prio", "state", "tasks",
                              "submitted"], _job_rows(js)))


@jobs_app.command("show")
def jobs_show(job_id: str, server: ServerOpt = None, token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """One job with its tasks."""
    with api_errors(), client_for(server, token) as c:
        job = c.get_job(job_id)

    def render(j: dict[str, Any]) -> None:
        table(None, ["id", "name", "owner", "queue", "prio", "state", "tasks", "submitted"],
              _job_rows([j]))
        if j.get("reason"):
            console.print(f"reason: {j['reason']}")
        table("tasks", ["index", "attempt", "node", "state", "exit", "allocation"], [
            [str(t["index"]), str(t["attempt"]), t["node"], t["state"],
             "-" if t["exit_code"] is None else str(t["exit_code"]), t["allocation_id"]]
            for t in j.get("tasks", [])])

    show(job, as_json, render)


@jobs_app.command("explain")
def jobs_explain(job_id: str, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Why a pending job waits, and what would let it run."""
    with api_errors(), client_for(server, token) as c:
        why = c.explain_job(job_id)

    def render(w: dict[str, Any]) -> None:
        console.print(f"{w['job']}: {w['status']} — {w['summary']}")
        for message, nodes in w["messages"].items():
            console.print(f"  {nodes} node(s): {message}")
        for hint in w["hints"]:
            console.print(f"  hint: {hint}")

    show(why, as_json, render)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Cancel a job; its resources are released."""
    with api_errors(), client_for(server, token) as c:
        job = c.cancel_job(job_id)
    show(job, as_json, lambda j: console.print(f"{j['id']}: {j['state']}"))


@queues_app.command("list")
def queues_list(server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Queues with quota, weight, priority bounds and current usage."""
    with api_errors(), client_for(server, token) as c:
        queues = c.list_queues()
    show(queues, as_json, lambda qs: table(
        f"{len(qs)} queue(s)", ["name", "weight", "priorities", "quota", "usage"],
        [[q["name"], f"{q['weight']:g}", _bounds(q),
          ",".join(f"{k}={v}" for k, v in q["quota"].items()) or "unlimited",
          ",".join(f"{k}={v}" for k, v in q["usage"].items()) or "-"] for q in qs]))


def _bounds(q: dict[str, Any]) -> str:
    lo, hi = q["min_priority"], q["max_priority"]
    if lo is None and hi is None:
        return "any"
    return f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"


def _queue_body(name: str, quota: str | None, weight: float, min_priority: int | None,
                max_priority: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "quota": parse_pairs(quota, "--quota"),
                            "weight": weight}
    if min_priority is not None:
        body["min_priority"] = min_priority
    if max_priority is not None:
        body["max_priority"] = max_priority
    return body


QuotaOpt = Annotated[str | None, typer.Option("--quota", help="cpu=64,gpu=8")]
WeightOpt = Annotated[float, typer.Option("--weight", help="fair-share weight")]
MinOpt = Annotated[int | None, typer.Option("--min-priority")]
MaxOpt = Annotated[int | None, typer.Option("--max-priority")]


@queues_app.command("create")
def queues_create(name: str, quota: QuotaOpt = None, weight: WeightOpt = 1.0,
                  min_priority: MinOpt = None, max_priority: MaxOpt = None,
                  server: ServerOpt = None, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Create a queue."""
    with api_errors(), client_for(server, token) as c:
        q = c.put_queue(_queue_body(name, quota, weight, min_priority, max_priority),
                        create=True)
    show(q, as_json, lambda q: console.print(f"queue {q['name']} created"))


@queues_app.command("update")
def queues_update(name: str, quota: QuotaOpt = None, weight: WeightOpt = 1.0,
                  min_priority: MinOpt = None, max_priority: MaxOpt = None,
                  server: ServerOpt = None, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Replace a queue's quota, weight and priority bounds."""
    with api_errors(), client_for(server, token) as c:
        q = c.put_queue(_queue_body(name, quota, weight, min_priority, max_priority),
                        create=False)
    show(q, as_json, lambda q: console.print(f"queue {q['name']} updated"))
