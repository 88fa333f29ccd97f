"""Printing for the CLI: rich tables for people, ``--json`` for programs.

Rich is imported when something is first printed through it, not when the
CLI starts: ``--json`` output and ``--help`` never need it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from apportion.client import ClientError, ConnectError

if TYPE_CHECKING:
    from rich.console import Console


def _width(stream: Any) -> int | None:
    """A terminal (or COLUMNS) sets the width; piped output is never cut or
    wrapped at Rich's default of 80 columns, so scripts and grep see whole ids."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 4096


class LazyConsole:
    """A rich ``Console`` made on first use (importing rich costs tens of ms),
    with the width ``width()`` gives then."""

    def __init__(self, stderr: bool, width: Callable[[], int | None]) -> None:
        self._stderr = stderr
        self._width = width
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, width=self._width())
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def real_console(c: Console) -> Console:
    """The rich ``Console`` behind ``console`` or ``err_console`` (for rich
    objects that take a console, such as ``Live``)."""
    return c._get() if isinstance(c, LazyConsole) else c


console: Console = LazyConsole(False, lambda: _width(sys.stdout))  # type: ignore[assignment]
err_console: Console = LazyConsole(True, lambda: _width(sys.stderr))  # type: ignore[assignment]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

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
    except ConnectError as exc:
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


def vector_text(v: dict[str, str]) -> str:
    return ",".join(f"{k}={q}" for k, q in v.items())


def devices_text(d: dict[str, list[str]]) -> str:
    return ",".join(f"{k}:{'+'.join(ids)}" for k, ids in d.items()) or "-"
