"""CLI commands over the ledger and the API's other records: alloc, release,
allocations, capacity, token, alerts (nodes are in ``nodes_cmds``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for, parse_pairs
from apportion.cli.output import (
    api_errors,
    console,
    devices_text,
    err_console,
    show,
    table,
)
from apportion.cli.units import human, human_vector
from apportion.client import config_path, resolve

allocations_app = typer.Typer(help="Allocations, active and released.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


# -- allocations ---------------------------------------------------------


def alloc(
    cpu: Annotated[str | None, typer.Option("--cpu", help="cores or millicores: 2, 500m")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="bytes: 4Gi, 512Mi")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPUs: 1, 2")] = None,
    resource: Annotated[
        list[str] | None, typer.Option("--resource", help="NAME=QTY, repeatable")
    ] = None,
    node: Annotated[str | None, typer.Option(
        "--node", help="on this node (default: the best fit)")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="who it is for")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v, repeatable")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant resources on a node (or let apportion pick the best fit)."""
    request: dict[str, Any] = {}
    for key, value in (("cpu", cpu), ("memory", memory), ("gpu", gpu)):
        if value is not None:
            request[key] = value
    for item in resource or []:
        request.update(parse_pairs(item, "--resource"))
    if not request:
        raise typer.BadParameter("ask for something: --cpu, --memory, --gpu or --resource")
    labels = {}
    for item in label or []:
        labels.update(parse_pairs(item, "--label"))
    with api_errors(as_json), client_for(server, token) as c:
        granted = c.allocate(request, node=node, owner=owner, labels=labels)
    show(
        granted,
        as_json,
        lambda a: console.print(
            f"granted {a['id']} on {a['node']}: {human_vector(a['resources'])}"
            + (f" devices {devices_text(a['devices'])}" if a["devices"] else "")
        ),
    )


def release(
    alloc_id: Annotated[str, typer.Argument(help="the allocation's id")],
    reason: Annotated[str | None, typer.Option("--reason", help="why, kept with it")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="admin: cancel the job whose task holds it; released once its "
        "process has exited")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Release an allocation (again is fine: it answers the released one).
    One held by a running task is refused: cancel its job instead."""
    with api_errors(as_json), client_for(server, token) as c:
        released = c.release(alloc_id, reason, force=force)
    show(
        released,
        as_json,
        lambda a: console.print(
            f"releasing {a['id']} on {a['node']}: its job is cancelled, the release follows "
            "its process's exit" if a.get("releasing") else
            f"released {a['id']} on {a['node']} ({a['reason']} at {a['released_at']})"
        ),
    )


@allocations_app.command("list")
def allocations_list(
    node: Annotated[str | None, typer.Option("--node", help="only on this node")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this owner's")] = None,
    state: Annotated[str | None, typer.Option("--state", help="active or released")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many")] = 100,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allocations, newest first."""
    with api_errors(as_json), client_for(server, token) as c:
        rows = c.list_allocations(node=node, owner=owner, state=state, limit=limit)
    show(
        rows,
        as_json,
        lambda rs: table(
            f"{len(rs)} allocation(s)",
            ["id", "node", "owner", "resources", "devices", "state", "reason"],
            [
                [
                    a["id"],
                    a["node"],
                    a["owner"] or "-",
                    human_vector(a["resources"]),
                    devices_text(a["devices"]),
                    a["state"],
                    a["reason"] or "-",
                ]
                for a in rs
            ],
        ),
    )


def capacity(
    group_by: Annotated[
        str, typer.Option("--group-by", help="facility|type|resource|zone|node")
    ] = "resource",
    fragmentation: Annotated[bool, typer.Option(
        "--fragmentation", help="how scattered the free capacity is, and what fits")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Total, allocated and available capacity per group and resource."""
    if fragmentation:
        _fragmentation(server, token, as_json)
        return
    with api_errors(as_json), client_for(server, token) as c:
        summary = c.capacity(group_by)
    show(
        summary,
        as_json,
        lambda s: table(
            f"capacity by {s['group_by']}",
            ["group", "nodes", "resource", "total", "allocated", "available", "allocated %"],
            [
                [
                    g["group"],
                    str(g["nodes"]),
                    r,
                    human(r, t["total"]),
                    human(r, t["allocated"]),
                    human(r, t["available"]),
                    f"{100 * t['allocated_share']:.1f}%",
                ]
                for g in s["groups"]
                for r, t in g["resources"].items()
            ],
        ),
    )


def _fragmentation(server: str | None, token: str | None, as_json: bool) -> None:
    with api_errors(as_json), client_for(server, token) as c:
        report = c.fragmentation()

    def render(r: dict[str, Any]) -> None:
        table("free capacity", ["resource", "free", "largest block", "nodes with free",
                                "fragmentation"],
              [[x["resource"], human(x["resource"], x["free"]),
                human(x["resource"], x["largest_block"]), str(x["nodes_with_free"]),
                f"{x['fragmentation_index']:.2f}"] for x in r["resources"]])
        table(f"what fits ({r['shapes_from']})", ["shape", "fits now", "if it were one node"],
              [[human_vector(x["shape"]), str(x["fits"]),
                str(x["fits_if_whole"])] for x in r["shapes"]])

    show(report, as_json, render)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="whose token: a person or a node")],
    role: Annotated[str, typer.Option("--role", help="admin, user or agent")] = "user",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    with api_errors(as_json), client_for(server, token) as c:
        created = c.create_token(name, role)
    show(created, as_json, lambda t: console.print(t["token"]))


@token_app.command("show")
def token_show(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
               ) -> None:
    """The token this CLI sends, found as every command finds it (--token,
    APPORTION_TOKEN, then the config file `apportion up` writes); for curl
    and the dashboard's sign-in. Asks no server."""
    conn = resolve(server, token)
    if not conn.token:
        err_console.print(
            f"[red]error:[/red] no token: none given by --token or APPORTION_TOKEN, and none "
            f"in {config_path()}; run 'apportion up' or 'apportion token create'")
        raise typer.Exit(1)
    show({"server": conn.server, "token": conn.token}, as_json, _print_token)


def _print_token(shown: dict[str, str]) -> None:
    # Plain, whole and alone on its line: `$(apportion token show)` must read it as is.
    sys.stdout.write(f"{shown['token']}\n")


@token_app.command("list")
def token_list(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
               ) -> None:
    """API tokens: name, role, when made and, for a dashboard session, when it
    ends (never the token itself)."""
    with api_errors(as_json), client_for(server, token) as c:
        rows = c.list_tokens()
    show(rows, as_json, lambda rs: table(
        f"{len(rs)} token(s)", ["name", "role", "id", "created", "ends"],
        # "ends": a dashboard session's end (`apportion dashboard`); "-": never.
        [[t["name"], t["role"], t["id"], t["created_at"], t.get("expires_at") or "-"]
         for t in rs]))


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the tokens' name")],
                 server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Revoke every token called NAME (refused on every server within seconds)."""
    with api_errors(as_json), client_for(server, token) as c:
        revoked = c.revoke_token(name)
    show(revoked, as_json, lambda r: console.print(f"revoked {r['revoked']} token(s) called "
                                                   f"{r['name']}"))


def alerts(
    state: Annotated[str | None, typer.Option("--state", help="firing or resolved")] = None,
    severity: Annotated[str | None, typer.Option("--severity", help="warning or critical")]
    = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Alerts, firing first (most severe, then oldest)."""
    with api_errors(as_json), client_for(server, token) as c:
        rows = c.alerts(state=state, severity=severity)
    show(rows, as_json, lambda rs: table(
        f"{len(rs)} alert(s)", ["status", "severity", "rule", "labels", "message", "since"],
        [[a["status"], a["severity"], a["rule"],
          ",".join(f"{k}={v}" for k, v in a["labels"].items()), a["message"],
          _when(a["started_at"])] for a in rs]))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def register(app: typer.Typer) -> None:
    """Add ``allocations``, ``token``, ``alloc``, ``release``, ``capacity``
    and ``alerts`` to the ``apportion`` command."""
    app.add_typer(allocations_app, name="allocations")
    app.add_typer(token_app, name="token")
    app.command("alloc")(alloc)
    app.command("release")(release)
    app.command("capacity")(capacity)
    app.command("alerts")(alerts)
