"""Autoscaling from a terminal: ``scale plan`` (each pool's decision now and
why), ``scale pools`` (members, joining and draining nodes) and ``scale
evaluate`` (run one round now, acting for ``auto`` pools)."""

from __future__ import annotations

from typing import Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for
from apportion.cli.output import api_errors, console, show, table

scale_app = typer.Typer(help="Node pools and the autoscaler's decisions.",
                        no_args_is_help=True)


def _decision(record: dict[str, Any]) -> str:
    action = record["decision"]
    if action == "scale_up":
        return f"scale_up +{record['count']} × {record['template']}"
    if action == "scale_down":
        return f"scale_down {', '.join(record['nodes'])}"
    return "none"


def _utilization(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _render_plan(answer: dict[str, Any]) -> None:
    if not answer["pools"]:
        console.print(answer.get("message", "no node pools are configured"))
        return
    rows = [[r["pool"], f"{r['provider']} ({r['provider_kind']})",
             r["mode"],  # advice_only is true exactly when the mode is advice
             f"{r['size']} [{r['min_size']}–{r['max_size']}]",
             str(len(r["joining"])), str(len(r["draining"])), _utilization(r["utilization"]),
             str(r["pending_tasks"]), _decision(r), r["reason"]]
            for r in answer["pools"]]
    table("scaling decisions", ["pool", "provider", "mode", "size [min–max]", "joining",
                                "draining", "utilization", "pending", "decision", "reason"],
          rows)


def plan(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Each pool's scaling decision now (scale_up with count and node type,
    scale_down with the nodes to drain, or none) and its reason. Advice only
    unless the pool's mode is auto; this command never acts."""
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.request("GET", "/api/v1/scaling/evaluation")
    show(answer, as_json, _render_plan)


def evaluate(server: ServerOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Run one scaling round now: auto pools act on their decision (admin)."""
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.request("POST", "/api/v1/scaling/evaluate")
    show(answer, as_json, _render_plan)


def _render_pools(answer: dict[str, Any]) -> None:
    if not answer["pools"]:
        console.print(answer.get("message", "no node pools are configured"))
        return
    for p in answer["pools"]:
        rows = [[n["name"], n["state"], str(n["allocations"]), str(n["tasks"]),
                 "yes" if n["draining_to_terminate"] else ""] for n in p["nodes"]]
        rows += [[j["name"], "joining", "-", "-", ""] for j in p["joining"]]
        counts = ", ".join(f"{k} {v}" for k, v in p["decision_counts"].items())
        table(f"pool {p['pool']} ({p['provider']}, {p['mode']}, size {p['min_size']}–"
              f"{p['max_size']}); decisions: {counts}",
              ["node", "state", "allocations", "tasks", "to terminate"], rows)


def pools(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Pools with their members, nodes joining and draining, and decision counts."""
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.request("GET", "/api/v1/scaling/pools")
    show(answer, as_json, _render_pools)


scale_app.command("plan")(plan)
scale_app.command("pools")(pools)
scale_app.command("evaluate")(evaluate)


def register(app: typer.Typer) -> None:
    """Add ``scale plan|pools|evaluate`` to the ``apportion`` command."""
    app.add_typer(scale_app, name="scale")
