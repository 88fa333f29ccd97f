"""CLI commands for work: submit, jobs, queues.

Without ``from __future__ import annotations``: typer reads a command's
annotations several times while it builds the command, and string ones are
evaluated anew each time (a few milliseconds of ``submit``'s start,
``bench/bench_cli.py``).
"""

import sys
import time
from typing import Annotated, Any

import typer

from apportion.cli.options import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client_for,
    parse_pairs,
    with_local_offset,
)
from apportion.cli.output import api_errors, console, err_console, show, table
from apportion.cli.units import human_vector
from apportion.client import Client, ClientError

JobArg = Annotated[str, typer.Argument(help="the job's id")]
QueueArg = Annotated[str, typer.Argument(help="the queue's name")]

jobs_app = typer.Typer(help="Jobs: list, show, explain, cancel.", no_args_is_help=True)
queues_app = typer.Typer(help="Queues (tenants): quota, fair-share weight, priority bounds.",
                         no_args_is_help=True)


def _job_rows(jobs: list[dict[str, Any]]) -> list[list[str]]:
    def what(j: dict[str, Any]) -> str:
        spec = j["spec"]
        if spec.get("array"):
            # An array is one line: its size, then how many of its tasks are where.
            shape = human_vector(spec.get("resources") or {})
            counts = j.get("task_counts") or {}
            where = " ".join(f"{k} {counts[k]}" for k in ("pending", "active", "succeeded",
                                                          "failed") if counts.get(k))
            return f"array {spec['array']}x {shape}" + (f" ({where})" if where else "")
        tasks = spec.get("tasks") or [{"resources": spec.get("resources", {}),
                                        "count": spec.get("count", 1)}]
        return "; ".join(f"{t.get('count', 1)}x " + human_vector(t["resources"])
                         for t in tasks)

    return [[j["id"], j["name"] or "-", j["owner"] or "-", j["queue"], str(j["priority"]),
             j["state"], what(j), j["submitted_at"]] for j in jobs]


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(
        "--state", help="pending, scheduled, running, succeeded, failed, cancelled")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="only this queue's")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this owner's")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many")] = 100,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    with api_errors(as_json), client_for(server, token) as c:
        jobs = c.list_jobs(state=state, queue=queue, owner=owner, limit=limit)
    show(jobs, as_json, lambda js: table(
        f"{len(js)} job(s)", ["id", "name", "owner", "queue", "prio", "state", "tasks",
                              "submitted"], _job_rows(js)))


@jobs_app.command("show")
def jobs_show(job_id: JobArg, server: ServerOpt = None, token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """One job with its tasks."""
    with api_errors(as_json), client_for(server, token) as c:
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
def jobs_explain(
    job_id: JobArg,
    nodes: Annotated[bool, typer.Option(
        "--nodes", help="List each node with why it cannot take the job now and whether "
                        "it ever could (the first 50; the rest counted by reason).")] = False,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Why a pending job waits, and what would let it run."""
    with api_errors(as_json), client_for(server, token) as c:
        why = c.explain_job(job_id, nodes=nodes)

    def render(w: dict[str, Any]) -> None:
        console.print(f"{w['job']}: {w['status']} — {w['summary']}")
        for message, count in w["messages"].items():
            console.print(f"  {count} node(s): {message}")
        for hint in w["hints"]:
            console.print(f"  hint: {hint}")
        if "nodes" in w:
            _node_table(w)

    show(why, as_json, render)


def _node_table(w: dict[str, Any]) -> None:
    table(f"{w['nodes_shown']} of {w['nodes_total']} node(s)", ["node", "now", "ever", "reason"],
          [[n["node"], n["now"], "yes" if n["ever"] else "no", _why(n)] for n in w["nodes"]])
    if w["nodes_more"]:
        counts = ", ".join(f"{n} {group}" for group, n in w["nodes_more_counts"].items())
        console.print(f"  and {w['nodes_more']} more node(s): {counts}")


def _why(n: dict[str, Any]) -> str:
    # A cordoned node that is also too small: both, or the operator uncordons it in vain.
    if n["ever"] or n["never"] == n["reason"]:
        return str(n["reason"] or "-")
    return f"{n['reason']}; never: {n['never']}"


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobArg, server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Cancel a job; its resources are released."""
    with api_errors(as_json), client_for(server, token) as c:
        job = c.cancel_job(job_id)
    show(job, as_json, lambda j: console.print(f"{j['id']}: {j['state']}"))


@queues_app.command("list")
def queues_list(server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Queues with quota, weight, priority bounds and current usage."""
    with api_errors(as_json), client_for(server, token) as c:
        queues = c.list_queues()
    show(queues, as_json, lambda qs: table(
        f"{len(qs)} queue(s)", ["name", "weight", "priorities", "quota", "usage"],
        [[q["name"], f"{q['weight']:g}", _bounds(q),
          human_vector(q["quota"]) or "unlimited",
          human_vector(q["usage"]) or "-"] for q in qs]))


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
MinOpt = Annotated[int | None, typer.Option("--min-priority", help="lowest priority allowed")]
MaxOpt = Annotated[int | None, typer.Option("--max-priority", help="highest priority allowed")]


@queues_app.command("create")
def queues_create(name: QueueArg, quota: QuotaOpt = None, weight: WeightOpt = 1.0,
                  min_priority: MinOpt = None, max_priority: MaxOpt = None,
                  server: ServerOpt = None, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Create a queue."""
    with api_errors(as_json), client_for(server, token) as c:
        q = c.put_queue(_queue_body(name, quota, weight, min_priority, max_priority),
                        create=True)
    show(q, as_json, lambda q: console.print(f"queue {q['name']} created"))


@queues_app.command("update")
def queues_update(name: QueueArg, quota: QuotaOpt = None, weight: WeightOpt = 1.0,
                  min_priority: MinOpt = None, max_priority: MaxOpt = None,
                  server: ServerOpt = None, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Replace a queue's quota, weight and priority bounds."""
    with api_errors(as_json), client_for(server, token) as c:
        q = c.put_queue(_queue_body(name, quota, weight, min_priority, max_priority),
                        create=False)
    show(q, as_json, lambda q: console.print(f"queue {q['name']} updated"))


# -- submit and follow a job's output -----------------------------------

TERMINAL = ("succeeded", "failed", "cancelled")


def submit(
    command: Annotated[list[str] | None, typer.Argument(help="-- command to run (optional)")]
    = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="cores or millicores: 2, 500m")]
    = None,
    memory: Annotated[str | None, typer.Option("--memory", help="bytes: 4Gi, 512Mi")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPUs: 1, or a share: 0.25, 1/3")]
    = None,
    resource: Annotated[list[str] | None, typer.Option("--resource", help="NAME=QTY")] = None,
    resources_: Annotated[str | None, typer.Option(
        "--resources", help="'auto' (cpu and memory predicted from past runs) or "
        "cpu=2,memory=auto")] = None,
    count: Annotated[int, typer.Option("--count", help="number of tasks")] = 1,
    gang: Annotated[bool, typer.Option("--gang", help="place all tasks at once or none")]
    = False,
    array: Annotated[int | None, typer.Option(
        "--array", help="a job array of N independent tasks (APPORTION_ARRAY_INDEX)")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="a name; predictions learn from runs of the same name")] = None,
    queue: Annotated[str, typer.Option("--queue", help="the queue (tenant) to run in")]
    = "default",
    priority: Annotated[int, typer.Option("--priority", help="higher runs first")] = 0,
    constraint: Annotated[list[str] | None, typer.Option(
        "--constraint", "-c", help="facility=texas-1, gpu.model in (A100,H100), repeatable")]
    = None,
    preemptible: Annotated[bool, typer.Option(
        "--preemptible", help="may be stopped to make room for higher priority work")]
    = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="estimate: 3600, 90m")]
    = None,
    deadline: Annotated[str | None, typer.Option(
        "--deadline", help="ISO 8601 (local time unless it has an offset) or epoch seconds")]
    = None,
    restart: Annotated[str | None, typer.Option(
        "--restart", help="never or on-failure")] = None,
    max_retries: Annotated[int | None, typer.Option(
        "--max-retries", help="retries after a failure (with --restart on-failure)")] = None,
    backoff: Annotated[str | None, typer.Option("--backoff", help="first retry delay: 5s")]
    = None,
    stop_signal: Annotated[str | None, typer.Option(
        "--stop-signal", help="signal asking a task to stop (default SIGTERM)")] = None,
    stop_grace: Annotated[str | None, typer.Option(
        "--stop-grace", help="then SIGKILL after this long (default 10s)")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="follow the job, stream its log, exit with its exit code")] = False,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Submit a job; without a command it is a pure resource lease."""
    resources: dict[str, Any] = {k: v for k, v in (("cpu", cpu), ("memory", memory),
                                                   ("gpu", gpu)) if v is not None}
    for item in resource or []:
        resources.update(parse_pairs(item, "--resource"))
    asked: dict[str, Any] | str = resources
    if resources_ is not None:
        if resources_.strip() == "auto":
            # Everything predicted, except what --cpu/--memory/--gpu pin.
            asked = {"cpu": "auto", "memory": "auto", **resources}
        else:
            asked = {**resources, **parse_pairs(resources_, "--resources")}
    if not asked:
        raise typer.BadParameter("ask for something: --cpu, --memory, --gpu, --resource or "
                                 "--resources auto")
    body: dict[str, Any] = {"resources": asked, "count": count, "gang": gang,
                            "queue": queue, "priority": priority,
                            "constraints": list(constraint or []), "preemptible": preemptible}
    if array is not None:
        body["array"] = array
    if deadline is not None:
        deadline = with_local_offset(deadline)
    for key, value in (("name", name), ("runtime_estimate", runtime), ("deadline", deadline),
                       ("stop_signal", stop_signal), ("stop_grace", stop_grace)):
        if value is not None:
            body[key] = value
    if restart is not None or max_retries is not None or backoff is not None:
        body["restart"] = {k: v for k, v in (("policy", restart or "on-failure"),
                                             ("max_retries", max_retries),
                                             ("backoff", backoff)) if v is not None}
    if command:
        body["command"] = list(command)
    with api_errors(as_json), client_for(server, token) as c:
        job = c.submit_job(body)
        if not wait:
            show(job, as_json, lambda j: console.print(
                f"submitted {j['id']} ({j['state']}) to queue {j['queue']}"))
            return
        err_console.print(f"submitted {job['id']} to queue {job['queue']}; following it")
        final = follow(c, job["id"], follow_job=True)
    raise typer.Exit(exit_code_of(final))


def exit_code_of(job: dict[str, Any]) -> int:
    """The job's exit code as a process exit status."""
    if job["state"] == "succeeded":
        return 0
    code = job.get("exit_code")
    return int(code) % 256 if isinstance(code, int) and code else 1


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobArg,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="until the job ends")] = False,
    task: Annotated[str | None, typer.Option("--task", help="task index or id (default 0)")]
    = None,
    attempt: Annotated[int | None, typer.Option(
        "--attempt", min=1, help="that attempt of the task, not its latest (1 is the first)"
    )] = None,
    server: ServerOpt = None, token: TokenOpt = None,
) -> None:
    """A job's output: stdout to stdout, stderr to stderr."""
    with api_errors(), client_for(server, token) as c:
        follow(c, job_id, task=task, attempt=attempt, follow_job=follow_)


def follow(c: Client, job_id: str, *, task: str | None = None, attempt: int | None = None,
           follow_job: bool, poll_s: float = 0.25) -> dict[str, Any]:
    """Print a job's logs (moving on to newer attempts, unless ``attempt``
    names one) until it ends; returns the job as it ended (or as it is,
    without ``follow_job``)."""
    reader = _LogReader(c, job_id, task, attempt)
    while True:
        state, printed = reader.round()
        if printed:
            continue
        if not follow_job or state in TERMINAL or reader.attempt_over:
            # Agents ship a task's last bytes before they report its exit, so
            # a quiet round that began after the end has read everything.
            job: dict[str, Any] = c.get_job(job_id)
            return job
        time.sleep(poll_s)


class _LogReader:
    """Reads a job's two log streams from where it left off."""

    def __init__(self, c: Client, job_id: str, task: str | None,
                 attempt: int | None = None) -> None:
        self.c, self.job_id, self.task, self.attempt = c, job_id, task, attempt
        self.offsets: dict[tuple[str, str], int] = {}
        self.current: str | None = None
        self.attempt_over = False
        """A named attempt has ended: nothing more will come (the job may go
        on in a newer one)."""

    def round(self) -> tuple[str | None, bool]:
        """Print what is new; (the job's state when the round began, printed?)."""
        state: str | None = None
        printed = False
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            page = self._page(self.task, stream)
            if page is None:
                state = state or self.c.get_job(self.job_id)["state"]
                continue
            state = state or page["job_state"]
            if self.attempt is not None:
                self.attempt_over = not page["task_active"]
            if page["task"] != self.current:
                if self.current is not None:
                    printed |= self._drain(self.current)
                    err_console.print(f"--- attempt {page['attempt']} on {page['node']} ---")
                self.current = page["task"]
                page = self._page(self.current, stream)
            printed |= self._emit(page, stream, out)
        return state, printed

    def _page(self, task: str | None, stream: str) -> dict[str, Any] | None:
        offset = self.offsets.get((task or self.current or "", stream), 0)
        try:
            page: dict[str, Any] = self.c.job_logs(self.job_id, task=task, stream=stream,
                                                   offset=offset, attempt=self.attempt)
        except ClientError as exc:
            if exc.status == 404 and "has not run yet" in str(exc):
                return None
            raise
        return page

    def _emit(self, page: dict[str, Any] | None, stream: str, out: Any) -> bool:
        if page is None:
            return False
        if page["data"]:
            out.write(page["data"])
            out.flush()
        self.offsets[(page["task"], stream)] = page["next_offset"]
        return bool(page["data"])

    def _drain(self, task_id: str) -> bool:
        """Print the rest of an earlier attempt before moving on."""
        printed = False
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            while self._emit(self._page(task_id, stream), stream, out):
                printed = True
        return printed


def register(app: typer.Typer) -> None:
    """Add ``jobs``, ``queues`` and ``submit`` to the ``apportion`` command."""
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(queues_app, name="queues")
    app.command("submit")(submit)
