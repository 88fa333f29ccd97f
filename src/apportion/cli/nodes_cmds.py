"""CLI commands over nodes: ``nodes list|show|add|update|remove`` (the inventory)
and ``nodes drain|cordon|uncordon|rescan`` (what a node may run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for, parse_pairs
from apportion.cli.output import (
    api_errors,
    console,
    devices_text,
    emit_json,
    pct,
    show,
    table,
    vector_text,
)
from apportion.cli.units import human, human_vector
from apportion.client import ClientError

NodeArg = Annotated[str, typer.Argument(help="the node's name")]

nodes_app = typer.Typer(
    help="The inventory: list, show, add, update and remove nodes.", no_args_is_help=True
)


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
                    human(resource, n["resources"][resource]),
                    human(resource, n["allocated"].get(resource, "0")),
                    human(resource, n["available"].get(resource, "0")),
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
    type_: Annotated[str | None, typer.Option("--type", help="only nodes of this type label")]
    = None,
    facility: Annotated[str | None, typer.Option(
        "--facility", help="only nodes in this facility")] = None,
    state: Annotated[str | None, typer.Option(
        "--state", help="ready, draining, cordoned, suspect or down")] = None,
    health: Annotated[str | None, typer.Option(
        "--health", help="healthy, degraded or unhealthy")] = None,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="e.g. facility=texas-1,gpu.model=H100")
    ] = None,
) -> None:
    """Every node with total / allocated / available per resource."""
    with api_errors(as_json), client_for(server, token) as c:
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
    name: NodeArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One node: capacity, utilization and its allocations."""
    with api_errors(as_json), client_for(server, token) as c:
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
                human(r, node["resources"][r]),
                human(r, node["allocated"].get(r, "0")),
                human(r, node["available"].get(r, "0")),
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
            [a["id"], a["owner"] or "-", human_vector(a["resources"]),
             devices_text(a["devices"]), a["created_at"]]
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
    name: Annotated[str | None, typer.Argument(
        help="the node's name (or the name in --file)")] = None,
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
    with api_errors(as_json), client_for(server, token) as c:
        node = c.register_node(body)
    show(
        node,
        as_json,
        lambda n: console.print(f"registered node {n['name']}: {human_vector(n['resources'])}"),
    )


@nodes_app.command("update")
def nodes_update(
    name: NodeArg,
    resources: Annotated[str | None, typer.Option(
        "--resources", "-r", help="the node's whole capacity, replacing it: cpu=8,memory=16Gi"
    )] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="the node's labels, replacing them: facility=texas-1,type=gpu"
    )] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a node's capacity or labels; what is not given stays. Capacity
    below what is allocated is refused."""
    body: dict[str, Any] = {}
    if resources is not None:
        body["resources"] = parse_pairs(resources, "--resources")
        if not body["resources"]:
            raise typer.BadParameter("give at least one NAME=QTY", param_hint="--resources")
    if labels is not None:
        body["labels"] = parse_pairs(labels, "--labels")
    if not body:
        raise typer.BadParameter("give --resources, --labels or both")
    with api_errors(as_json), client_for(server, token) as c:
        node = c.update_node(name, body)
    show(node, as_json, lambda n: console.print(
        f"updated node {n['name']}: {human_vector(n['resources'])}"
        + (f"; labels {vector_text(n['labels'])}" if n["labels"] else "")))


@nodes_app.command("remove")
def nodes_remove(
    name: NodeArg,
    force: Annotated[bool, typer.Option("--force", help="release its allocations")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a node (refused while it has active allocations, unless --force)."""
    with api_errors(as_json), client_for(server, token) as c:
        try:
            result = c.delete_node(name, force=force)
        except ClientError as exc:
            if exc.body.get("error") != "node_has_allocations":
                raise
            # The API's advice names its query parameter; here the flag is the way.
            count = exc.body.get("active_allocations")
            raise ClientError(exc.status, {**exc.body, "message": (
                f"node {name} has {count} active allocation(s); release them or remove it "
                "with --force (which releases them)")}) from None
    show(
        result,
        as_json,
        lambda r: console.print(
            f"deleted node {r['deleted']}; released {len(r['released'])} allocation(s)"
        ),
    )


def _node_op(action: str, name: str, server: str | None, token: str | None, as_json: bool,
             **kwargs: Any) -> None:
    with api_errors(as_json), client_for(server, token) as c:
        node = getattr(c, f"{action}_node")(name, **kwargs)
    show(node, as_json, lambda n: console.print(
        f"{name}: {n.get('state', '')}" + (f", {n['running_tasks']} task(s) still running"
                                           if n.get("running_tasks") else "")))


@nodes_app.command("drain")
def nodes_drain(
    name: NodeArg,
    deadline: Annotated[str | None, typer.Option(
        "--deadline", help="preempt what still runs after this long: 10m")] = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """No new work; running tasks finish, or are preempted after --deadline."""
    _node_op("drain", name, server, token, as_json, deadline=deadline)


@nodes_app.command("cordon")
def nodes_cordon(name: NodeArg, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """No new work on the node; running tasks keep running."""
    _node_op("cordon", name, server, token, as_json)


@nodes_app.command("uncordon")
def nodes_uncordon(name: NodeArg, server: ServerOpt = None, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Let the node take work again."""
    _node_op("uncordon", name, server, token, as_json)


@nodes_app.command("rescan")
def nodes_rescan(name: NodeArg, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Ask the node's agent to discover its hardware again now."""
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.rescan_node(name)
    show(answer, as_json, lambda a: console.print(f"{name}: rescan requested"))


def register(app: typer.Typer) -> None:
    """Add ``nodes`` to the ``apportion`` command."""
    app.add_typer(nodes_app, name="nodes")
