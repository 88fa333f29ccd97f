"""Watching the cluster from a terminal: ``events``, ``top`` and ``history``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for
from apportion.cli.output import api_errors, console, real_console, show, table
from apportion.cli.units import human, human_vector
from apportion.client import Client, ClientError, resolve

if TYPE_CHECKING:
    # Rich is imported by the commands that draw with it (see cli/output.py).
    from rich.console import RenderableType
    from rich.text import Text

KindOpt = Annotated[str | None, typer.Option(
    "--kind", help="kinds or prefixes, comma-separated: job,allocation.released")]


# -- events ------------------------------------------------------------------------------


def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")]
    = False,
    after: Annotated[int | None, typer.Option("--after", help="start after this event id")]
    = None,
    tail: Annotated[int, typer.Option("--tail", help="without --after: start this many "
                                      "events back (0 with -f: only new ones)")] = 20,
    kind: KindOpt = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """State changes: the latest ones, or followed live with -f (resumes
    by itself after a dropped connection)."""
    with api_errors(as_json), client_for(server, token) as c:
        try:
            stream = c.events(after=after, tail=None if after is not None else tail,
                              kinds=kind, follow=follow)
            for event in stream:
                if as_json:
                    print(json.dumps(event, separators=(",", ":")), flush=True)
                else:
                    console.print(_event_line(event), highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            return


def _event_line(event: dict[str, Any]) -> Text:
    from rich.text import Text

    when = datetime.fromtimestamp(event["at"], UTC).strftime("%H:%M:%S")
    data = json.dumps(event.get("data") or {}, separators=(",", ":"), sort_keys=True)
    if len(data) > 160:
        data = data[:157] + "..."
    line = Text()
    line.append(f"{when} ", style="dim")
    line.append(f"#{event['id']:<6} ", style="dim")
    line.append(f"{event['kind']:<20} ", style=_kind_style(event["kind"]))
    line.append(f"{event['subject']} ")
    line.append(data, style="dim")
    return line


def _kind_style(kind: str) -> str:
    if kind.startswith("alert."):
        return "bold red" if kind == "alert.raised" else "yellow"
    if kind.startswith("allocation."):
        return "cyan"
    if kind.startswith(("job.", "task.")):
        return "magenta"
    return "green"


# -- history --------------------------------------------------------------------------------


def history(
    metric: Annotated[str, typer.Argument(help="utilization, queue_length, queue_wait_seconds")]
    = "utilization",
    resource: Annotated[str | None, typer.Option("--resource", help="a resource, or *")]
    = None,
    facility: Annotated[str | None, typer.Option("--facility", help="a facility, or *")] = None,
    node: Annotated[str | None, typer.Option("--node", help="a node, or *")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="a queue, or *")] = None,
    window: Annotated[float, typer.Option("--window", help="seconds")] = 3600.0,
    step: Annotated[float | None, typer.Option("--step", help="seconds")] = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """A metric's recent history: latest value, range and trend per series."""
    with api_errors(as_json), client_for(server, token) as c:
        body = c.history(metric, window_seconds=window, step=step, resource=resource,
                         facility=facility, node=node, queue=queue)

    def render(b: dict[str, Any]) -> None:
        rows = []
        for s in b["series"]:
            values = [v for _, v in s["points"]]
            labels = ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items())) or "-"
            fmt = _fmt_share if metric == "utilization" else _fmt_number
            t = s["trend"]
            rows.append([labels, fmt(s["last"]),
                         f"{fmt(min(values))} – {fmt(max(values))}" if values else "-",
                         _spark(values), t["direction"], f"{t['slope_per_hour']:+.4g}/h",
                         str(len(values))])
        table(f"{metric} over {b['window_seconds']:g} s (step {b['step']:g} s, {b['source']})",
              ["series", "last", "range", "", "trend", "slope", "points"], rows)

    show(body, as_json, render)


SPARKS = "▁▂▃▄▅▆▇█"


def _spark(values: list[float], width: int = 24) -> str:
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [max(values[int(i * size):max(int(i * size) + 1, int((i + 1) * size))])
                  for i in range(width)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(7, int((v - low) / span * 7.999))] for v in values)


def _fmt_share(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _fmt_number(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


# -- top ------------------------------------------------------------------------------------


def top(
    interval: Annotated[float, typer.Option("--interval", help="seconds between refreshes "
                                            "(events refresh at once)")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="print one screen and exit")] = False,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """The dashboard's overview, live in the terminal: capacity per resource
    and facility, nodes, jobs, queues and firing alerts. q quits."""
    with api_errors(as_json), client_for(server, token) as c:
        snap = snapshot(c)
        if once or as_json:
            show(snap, as_json, lambda s: console.print(render_top(s)))
            return
        changed = threading.Event()
        conn = resolve(server, token)
        threading.Thread(target=_watch_events, args=(conn.server, conn.token, changed),
                         daemon=True).start()
        try:
            from rich.live import Live

            with _quit_key(changed) as quit_, Live(
                    _live_view(snap), console=real_console(console), auto_refresh=False,
                    screen=console.is_terminal) as live:
                while True:
                    changed.wait(interval)
                    if quit_.is_set():
                        return
                    time.sleep(0.2)  # let a burst of events settle
                    changed.clear()
                    try:
                        snap = snapshot(c)
                    except (ClientError, OSError) as exc:
                        snap = {**snap, "error": str(exc)}
                    live.update(_live_view(snap), refresh=True)
        except KeyboardInterrupt:
            return


@contextmanager
def _quit_key(changed: threading.Event) -> Iterator[threading.Event]:
    """An event set when ``q`` is pressed (``changed`` is set too, to wake
    the loop). The terminal is in cbreak mode meanwhile, as in ``top`` and
    ``less``: a key arrives without Enter and is not echoed over the screen,
    while Ctrl-C still interrupts; its settings come back on the way out."""
    quit_ = threading.Event()
    if not sys.stdin.isatty():
        yield quit_
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> None:
        while True:
            try:
                key = os.read(fd, 1)
            except OSError:
                key = b""
            if key in (b"q", b"Q", b""):
                quit_.set()
                changed.set()
                return

    threading.Thread(target=read, daemon=True).start()
    try:
        yield quit_
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _live_view(snap: dict[str, Any]) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    return Group(render_top(snap), Text("q quits", style="dim"))


def _watch_events(server: str, token: str | None, changed: threading.Event) -> None:
    while True:
        try:
            with Client(server, token) as c:
                for _ in c.events(tail=0, follow=True):
                    changed.set()
        except (ClientError, OSError):
            time.sleep(2.0)


def snapshot(c: Client) -> dict[str, Any]:
    try:
        alerts: list[Any] | None = c.alerts(state="firing")
    except ClientError as exc:
        if exc.status != 404:
            raise
        alerts = None
    return {
        "at": time.time(),
        "resources": c.capacity("resource")["groups"],
        "facilities": c.capacity("facility")["groups"],
        "nodes": c.list_nodes(),
        "running": c.list_jobs(state="running", limit=200),
        "waiting": c.list_jobs(state="pending", limit=200),
        "queues": c.list_queues(),
        "alerts": alerts,
    }


def _bar(share: float, width: int = 20) -> Text:
    from rich.text import Text

    filled = round(share * width)
    style = "red" if share >= 0.98 else "yellow" if share >= 0.85 else "blue"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    return text


def render_top(s: dict[str, Any]) -> RenderableType:
    from rich.columns import Columns
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    when = datetime.fromtimestamp(s["at"]).strftime("%H:%M:%S")
    head = Text(f"apportion · {len(s['nodes'])} nodes · {len(s['running'])} running · "
                f"{len(s['waiting'])} waiting · {when}", style="bold")
    if s.get("error"):
        head.append(f"  ({s['error']})", style="red")
    parts.append(head)

    cap = Table(title="capacity", title_justify="left", expand=False)
    for col in ("resource", "allocated", "total", "", "%"):
        cap.add_column(col)
    for g in s["resources"]:
        t = g["resources"][g["group"]]
        cap.add_row(g["group"], human(g["group"], t["allocated"]), human(g["group"], t["total"]),
                    _bar(t["allocated_share"]),
                    f"{t['allocated_share'] * 100:.0f}%")
    resources = [g["group"] for g in s["resources"]]
    fac = Table(title="facilities", title_justify="left")
    fac.add_column("facility")
    fac.add_column("nodes")
    for r in resources:
        fac.add_column(r)
    for g in s["facilities"]:
        fac.add_row(g["group"], str(g["nodes"]), *[
            f"{g['resources'][r]['allocated_share'] * 100:.0f}%" if r in g["resources"] else "-"
            for r in resources])
    parts.append(Columns([cap, fac]))

    parts.append(Panel(Columns([_node_cell(n) for n in s["nodes"]] or [Text("no nodes")]),
                       title="nodes", title_align="left"))

    jobs = Table(title="jobs", title_justify="left")
    for col in ("job", "name", "state", "owner", "queue"):
        jobs.add_column(col)
    for j in [*s["running"], *s["waiting"]][:15]:
        jobs.add_row(j["id"][:10], j.get("name") or "", j["state"], j.get("owner") or "",
                     j["queue"])
    queues = Table(title="queues", title_justify="left")
    for col in ("queue", "waiting", "running", "in use"):
        queues.add_column(col)
    for q in s["queues"]:
        name = q["name"]
        queues.add_row(name, str(sum(j["queue"] == name for j in s["waiting"])),
                       str(sum(j["queue"] == name for j in s["running"])),
                       human_vector(q.get("usage", {})) or "-")
    parts.append(Columns([jobs, queues]))

    alerts = s.get("alerts")
    if alerts is None:
        parts.append(Text("alerts: not available on this server", style="dim"))
    elif not alerts:
        parts.append(Text("alerts: nothing firing", style="green"))
    else:
        box = Table(title=f"{len(alerts)} firing alert(s)", title_justify="left",
                    title_style="bold red")
        for col in ("severity", "rule", "message"):
            box.add_column(col)
        for a in alerts:
            box.add_row(Text(a["severity"], style="red" if a["severity"] == "critical"
                             else "yellow"), a["rule"], a["message"])
        parts.append(box)
    return Group(*parts)


HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


def _node_cell(node: dict[str, Any]) -> Text:
    from rich.text import Text

    down = node["state"] in ("down", "suspect")
    color = "grey50" if down else HEALTH_STYLE.get(node["health"], "white")
    text = Text(f"{node['name']} ", style="bold")
    status = node["state"] if node["state"] != "ready" else node["health"]
    text.append(f"{status} ", style=color)
    devices = [d for ds in (node.get("devices") or {}).values() for d in ds]
    if devices:
        for d in devices:
            text.append("■" if d.get("allocation_id") else "□", style=color)
    else:
        share = max((node["allocated_base"].get(r, 0) / total
                     for r, total in node["resources_base"].items() if total), default=0.0)
        text.append(f"{share * 100:3.0f}%", style=color)
    return text


def register(app: typer.Typer) -> None:
    """Add ``events``, ``top`` and ``history`` to the ``apportion`` command."""
    commands: dict[str, Callable[..., None]] = {"events": events, "top": top, "history": history}
    for name, fn in commands.items():
        app.command(name)(fn)

