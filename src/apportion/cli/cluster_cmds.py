"""``apportion servers``: the servers sharing one store, and which one leads."""

from __future__ import annotations

from typing import Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for
from apportion.cli.output import api_errors, console, show, table


def servers(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The servers on this store (seen in the last hour), the leader, its epoch."""
    with api_errors(as_json), client_for(server, token) as c:
        view = c.cluster()
    show(view, as_json, _render)


def _render(view: dict[str, Any]) -> None:
    leader = view["leader"]
    rows = [[s["id"], s["url"] or "-", "leader" if s["leader"] else
             ("follower" if s["alive"] else "gone"), s["started_at"] or "-",
             s["last_seen"] or "-"] for s in view["servers"]]
    table(f"{len(rows)} server(s)", ["server", "url", "role", "started", "last seen"], rows)
    if leader["server_id"]:
        console.print(f"leader {leader['server_id']}, epoch {leader['epoch']}, "
                      f"since {leader['since']}")
    else:
        console.print(f"no leader right now (last epoch {leader['epoch']}); one is elected "
                      f"within {view.get('leader_timeout_s', 5)} s of a server starting")


def register(app: typer.Typer) -> None:
    """Add ``servers`` to the ``apportion`` command."""
    app.command("servers")(servers)
