"""Printing for the CLI: rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from apportion.client import ClientError


def _width(stream: Any) -> int | None:
    """A terminal (or COLUMNS) sets the width; piped output is never cut or
    wrapped at Rich's default of 80 columns, so scripts and grep see whole ids."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 4096


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")  # a narrow terminal wraps, never cuts
    for row in rows:
        t.add_row(*row)
    console.print(t)


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn API and connection errors into one clear line and exit code 1."""
    try:
        yield
    except ClientError as exc:
        err_console.print(f"[red]error ({exc.status}):[/red] {exc}")
        raise typer.Exit(1) from None
    except httpx.ConnectError as exc:
        err_console.print(
            f"[red]error:[/red] cannot reach the server ({exc}); start one with "
            "'apportion up' or set APPORTION_SERVER"
        )
        raise typer.Exit(1) from None


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def show(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        emit_json(data)
    else:
        render(data)
