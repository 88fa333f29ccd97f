"""CLI commands over the inventory and the ledger: nodes, alloc, release,
allocations, capacity, token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.output import api_errors, console, emit_json, pct, show, table
from apportion.client import Client

ServerOpt = Annotated[str | None, typer.Option("--server", help="API URL (or APPORTION_SERVER)")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (or APPORTION_TOKEN)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

nodes_app = typer.Typer(
    help="The inventory: list, show, add and remove nodes.", no_args_is_help=True
)
allocations_app = typer.Typer(help="Allocations, active and released.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """``a=1,b=2`` into a dict, with an error naming the bad part."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{what}: expected key=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def client_for(server: str | None, token: str | None) -> Client:
    return Client.from_env(server, token)


# -- nodes ---------------------------------------------------------------


def _node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for n in nodes:
        for i, resource in enumerate(sorted(n["resources"])):
            rows.append(
                [
                    n["name"] if i == 0 else "",
                    n["state"] if i == 0 else "",
                    n["health"] if i == 0 else "",
                    resource,
                    n["resources"][resource],
                    n["allocated"].get(resource, "0"),
                    n["available"].get(resource, "0"),
                ]
            )
        if not n["resources"]:
            rows.append([n["name"], n["state"], n["health"], "-", "-", "-", "-"])
    return rows


@nodes_app.command("list")
def nodes_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    facility: Annotated[str | None, typer.Option("--facility")] = None,
    state: Annotated[str | None, typer.Option("--state")] = None,
    health: Annotated[str | None, typer.Option("--health")] = None,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="e.g. facility=texas-1,gpu.model=H100")
    ] = None,
) -> None:
    """Every node with total / allocated / available per resource."""
    with api_errors(), client_for(server, token) as c:
        nodes = c.list_nodes(
            type=type_, facility=facility, state=state, health=health, selector=selector
        )
    show(
        nodes,
        as_json,
        lambda ns: table(
            f"{len(ns)} node(s)",
            ["node", "state", "health", "resource", "total", "allocated", "available"],
            _node_rows(ns),
        ),
    )


@nodes_app.command("show")
def nodes_show(
    name: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One node: capacity, utilization and its allocations."""
    with api_errors(), client_for(server, token) as c:
        node = c.get_node(name)
    if as_json:
        emit_json(node)
        return
    console.print(
        f"[bold]{node['name']}[/bold]  state={node['state']} health={node['health']}  "
        f"labels={json.dumps(node['labels'])}"
    )
    table(
        "resources",
        ["resource", "total", "allocated", "available", "used"],
        [
            [
                r,
                node["resources"][r],
                node["allocated"].get(r, "0"),
                node["available"].get(r, "0"),
                pct(node["allocated_base"].get(r, 0), node["resources_base"][r]),
            ]
            for r in sorted(node["resources"])
        ],
    )
    devices = [d for ds in node["devices"].values() for d in ds]
    if devices:
        table(
            "devices",
            ["resource", "id", "model", "memory", "allocation"],
            [
                [
                    d["resource"],
                    d["id"],
                    d["model"] or "-",
                    d["memory"] or "-",
                    d["allocation_id"] or "free",
                ]
                for d in devices
            ],
        )
    table(
        "allocations",
        ["id", "owner", "resources", "devices", "since"],
        [
            [a["id"], a["owner"] or "-", _vec(a["resources"]), _devs(a["devices"]), a["created_at"]]
            for a in node.get("allocations", [])
        ],
    )


def _read_body(file: Path) -> dict[str, Any]:
    """A JSON object from ``file``, or a usage error saying what is wrong with it."""
    try:
        body = json.loads(file.read_text())
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {file}: {exc.strerror}", param_hint="--file"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{file} is not JSON: {exc}", param_hint="--file") from None
    if not isinstance(body, dict):
        raise typer.BadParameter(f"{file} must hold a JSON object (the API's node body)",
                                 param_hint="--file")
    return body


@nodes_app.command("add")
def nodes_add(
    name: Annotated[str | None, typer.Argument()] = None,
    resources: Annotated[
        str | None, typer.Option("--resources", "-r", help="cpu=8,memory=16Gi,gpu=2")
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="facility=texas-1,type=gpu")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="node JSON body")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a node from flags or a JSON file (the API's node body)."""
    body = _read_body(file) if file else {}
    if name:
        body["name"] = name
    if resources:
        body["resources"] = parse_pairs(resources, "--resources")
    if labels:
        body["labels"] = parse_pairs(labels, "--labels")
    if "name" not in body:
        raise typer.BadParameter("give a node NAME or a --file with a name")
    with api_errors(), client_for(server, token) as c:
        node = c.register_node(body)
    show(
        node,
        as_json,
        lambda n: console.print(f"registered node {n['name']}: {_vec(n['resources'])}"),
    )


@nodes_app.command("remove")
def nodes_remove(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="release its allocations")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a node (refused while it has active allocations, unless --force)."""
    with api_errors(), client_for(server, token) as c:
        result = c.delete_node(name, force=force)
    show(
        result,
        as_json,
        lambda r: console.print(
            f"deleted node {r['deleted']}; released {len(r['released'])} allocation(s)"
        ),
    )


# -- allocations ---------------------------------------------------------


def _vec(v: dict[str, str]) -> str:
    return ",".join(f"{k}={q}" for k, q in v.items())


def _devs(d: dict[str, list[str]]) -> str:
    return ",".join(f"{k}:{'+'.join(ids)}" for k, ids in d.items()) or "-"


def alloc(
    cpu: Annotated[str | None, typer.Option("--cpu", help="cores or millicores: 2, 500m")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="bytes: 4Gi, 512Mi")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu")] = None,
    resource: Annotated[
        list[str] | None, typer.Option("--resource", help="NAME=QTY, repeatable")
    ] = None,
    node: Annotated[str | None, typer.Option("--node")] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
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
    with api_errors(), client_for(server, token) as c:
        granted = c.allocate(request, node=node, owner=owner, labels=labels)
    show(
        granted,
        as_json,
        lambda a: console.print(
            f"granted {a['id']} on {a['node']}: {_vec(a['resources'])}"
            + (f" devices {_devs(a['devices'])}" if a["devices"] else "")
        ),
    )


def release(
    alloc_id: str,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="admin: cancel the job whose task holds it; released once its "
        "process has exited")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Release an allocation (again is fine: it answers the released one).
    One held by a running task is refused: cancel its job instead."""
    with api_errors(), client_for(server, token) as c:
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
    node: Annotated[str | None, typer.Option("--node")] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    state: Annotated[str | None, typer.Option("--state", help="active or released")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allocations, newest first."""
    with api_errors(), client_for(server, token) as c:
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
                    _vec(a["resources"]),
                    _devs(a["devices"]),
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
    with api_errors(), client_for(server, token) as c:
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
                    t["total"],
                    t["allocated"],
                    t["available"],
                    f"{100 * t['allocated_share']:.1f}%",
                ]
                for g in s["groups"]
                for r, t in g["resources"].items()
            ],
        ),
    )


def _fragmentation(server: str | None, token: str | None, as_json: bool) -> None:
    with api_errors(), client_for(server, token) as c:
        report = c.fragmentation()

    def render(r: dict[str, Any]) -> None:
        table("free capacity", ["resource", "free", "largest block", "nodes with free",
                                "fragmentation"],
              [[x["resource"], x["free"], x["largest_block"], str(x["nodes_with_free"]),
                f"{x['fragmentation_index']:.2f}"] for x in r["resources"]])
        table(f"what fits ({r['shapes_from']})", ["shape", "fits now", "if it were one node"],
              [[",".join(f"{k}={v}" for k, v in x["shape"].items()), str(x["fits"]),
                str(x["fits_if_whole"])] for x in r["shapes"]])

    show(report, as_json, render)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name")],
    role: Annotated[str, typer.Option("--role", help="admin, user or agent")] = "user",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    with api_errors(), client_for(server, token) as c:
        created = c.create_token(name, role)
    show(created, as_json, lambda t: console.print(t["token"]))


@token_app.command("list")
def token_list(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
               ) -> None:
    """API tokens: name, role, when made (never the token itself)."""
    with api_errors(), client_for(server, token) as c:
        rows = c.list_tokens()
    show(rows, as_json, lambda rs: table(
        f"{len(rs)} token(s)", ["name", "role", "id", "created"],
        [[t["name"], t["role"], t["id"], t["created_at"]] for t in rs]))


@token_app.command("revoke")
def token_revoke(name: str, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Revoke every token called NAME (refused on every server within seconds)."""
    with api_errors(), client_for(server, token) as c:
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
    with api_errors(), client_for(server, token) as c:
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
