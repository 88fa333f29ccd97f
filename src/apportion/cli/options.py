"""What every client command shares: the ``--server``, ``--token`` and
``--json`` options, the client they build, and ``key=value`` lists."""

from __future__ import annotations

from typing import Annotated

import typer

from apportion.client import Client

ServerOpt = Annotated[str | None, typer.Option("--server", help="API URL (or APPORTION_SERVER)")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (or APPORTION_TOKEN)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


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


def with_local_offset(when: str) -> str:
    """A time the user typed without an offset (``2026-12-08T09:00``) as
    their local time, with the offset written in: the server reads a time
    without one as UTC. Epoch seconds and anything unreadable go as typed
    (the server names the field when it cannot read it)."""
    from datetime import datetime  # only a command with a time pays for it

    try:
        parsed = datetime.fromisoformat(when)
    except ValueError:
        return when
    return parsed.astimezone().isoformat() if parsed.tzinfo is None else when


def client_for(server: str | None, token: str | None) -> Client:
    return Client.from_env(server, token)
