"""Printing for the CLI: rich tables for people, ``--json`` for programs.

Rich is imported when something is first printed through it, not when the
CLI starts: ``--json`` output and ``--help`` never need it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from apportion.client import ClientError, ConnectError, TransportError

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

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """As ``Console.print``; a line of plain text to a pipe or file is
        written as is, without importing rich (``submit``'s one line is
        most of what a short command prints, and rich's import was a fifth
        of its run time: ``bench/bench_cli.py``)."""
        stream = sys.stderr if self._stderr else sys.stdout
        if self._console is None and not kwargs and _plain(objects, stream):
            stream.write(objects[0] + "\n")
            stream.flush()
            return
        self._get().print(*objects, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


_RICH_ENV = ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
"""What makes rich colour, wrap or act as a terminal on a pipe."""


def _plain(objects: tuple[Any, ...], stream: Any) -> bool:
    """Whether rich would print ``objects`` to ``stream`` exactly as its text:
    one string with no markup (``[``), emoji code (``:``), control character
    or line end, well within the 4096 columns of a pipe, where no colour,
    no terminal and no width is asked for."""
    if len(objects) != 1 or not isinstance(objects[0], str):
        return False
    text = objects[0]
    return (len(text) < 2048 and text.isprintable() and "[" not in text and ":" not in text
            and not any(os.environ.get(k) for k in _RICH_ENV) and not stream.isatty())


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


# Exit statuses: what happened, so a script can branch without parsing text.
# 2 is click's own for a usage error; a job followed with ``submit --wait``
# exits with the job's status instead. The README's "Exit codes" lists these.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_UNAUTHORIZED = 5
EXIT_UNREACHABLE = 6


def exit_code_for(status: int, body: Mapping[str, Any]) -> int:
    """The exit status for an error answer: its HTTP status, except that a job
    refused because no node or quota could ever hold it (422 ``job_rejected``
    on ``tasks`` or ``resources.*``) is a refusal for lack of resources, as a
    409 ``insufficient_resources`` is, not an input mistake."""
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (401, 403):
        return EXIT_UNAUTHORIZED
    field = str(body.get("field") or "")
    if status == 409 or body.get("error") == "insufficient_resources" or (
        body.get("error") == "job_rejected" and (field == "tasks"
                                                  or field.startswith("resources."))):
        return EXIT_REFUSED
    return EXIT_ERROR


def error_object(code: str, message: str, status: int | None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one shape of an error under ``--json``: ``error`` (a code),
    ``message``, ``status`` (the HTTP status, null when there was no answer),
    then any other fields the server sent (``field``, ``shortages``, ...)."""
    out: dict[str, Any] = {"error": code, "message": message, "status": status}
    for key, value in (extra or {}).items():
        out.setdefault(key, value)
    return out


def fail(obj: dict[str, Any], prefix: str, text: str, code: int, as_json: bool) -> NoReturn:
    """Print an error (``obj`` on stdout under ``--json``, else the markup
    ``prefix`` and the plain ``text`` on stderr) and exit with ``code``."""
    if as_json:
        emit_json(obj)
    else:
        err_console.print(f"{prefix} {escape(text)}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def api_errors(as_json: bool = False) -> Iterator[None]:
    """Turn API and connection errors into one clear line (or, with
    ``as_json``, one JSON error object on stdout) and an exit status that
    says what happened. A lost connection or a timeout is an answer like any
    other here: never a traceback."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.body.get("error") or "error")
        fail(error_object(code, str(exc), exc.status, exc.body),
             f"[red]error ({exc.status}):[/red]", str(exc),
             exit_code_for(exc.status, exc.body), as_json)
    except TransportError as exc:
        url = exc.url or "the server"
        if isinstance(exc, ConnectError) and not isinstance(exc.__cause__, TimeoutError):
            code, message = "unreachable", f"cannot reach the server at {url} ({exc})"
            hint = "; start one with 'apportion up' or set APPORTION_SERVER"
        elif isinstance(exc.__cause__, TimeoutError):
            code, message = "timeout", f"no answer from the server at {url} in time ({exc})"
            hint = ""
        else:
            code, message = "connection_lost", f"lost the connection to {url} ({exc})"
            hint = ""
        fail(error_object(code, message, None, {"url": exc.url}),
             "[red]error:[/red]", message + hint, EXIT_UNREACHABLE, as_json)


def escape(text: str) -> str:
    """``text`` safe to print as Rich markup (a message may hold ``[...]``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


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
