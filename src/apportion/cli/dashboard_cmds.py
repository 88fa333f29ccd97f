"""``apportion dashboard``: a link that opens the dashboard signed in.

The link carries a one-time code, never a token, and carries it in the URL's
fragment (``/#code=...``), which a browser does not send to any server, so
it appears in no access log or proxy; the page exchanges it for a session
and removes it from the address bar and history. The code works once and
for a minute, so a link left in a terminal's scrollback is worthless."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for
from apportion.cli.output import api_errors, err_console, show
from apportion.client import resolve


def dashboard_url(server: str, code: str) -> str:
    return f"{server.rstrip('/')}/#code={code}"


def dashboard(
    open_browser: Annotated[
        bool, typer.Option("--open", help="also open it in this machine's web browser")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a link that opens the dashboard signed in as you: it holds a
    one-time code (not your token) that works once, within a minute."""
    conn = resolve(server, token)
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.create_login_code()
    url = dashboard_url(conn.server, answer["code"])
    shown = {
        "url": url,
        "name": answer["name"],
        "role": answer["role"],
        "expires_at": answer["expires_at"],
        "expires_in_s": answer["expires_in_s"],
    }
    show(shown, as_json, _print_link)
    if open_browser and not _open(url):
        err_console.print("no web browser found here: open the link above yourself")


def _open(url: str) -> bool:
    import webbrowser  # only when asked: every command imports this module

    return webbrowser.open(url)


def _print_link(shown: dict[str, Any]) -> None:
    # The link alone on stdout (for `xdg-open "$(apportion dashboard)"`), the
    # note on stderr.
    sys.stdout.write(f"{shown['url']}\n")
    err_console.print(
        f"opens the dashboard signed in as {shown['name']} ({shown['role']}); the link works "
        f"once, within {shown['expires_in_s']:g} s",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to the ``apportion`` command."""
    app.command("dashboard")(dashboard)
