"""Every command's ``--help`` as an operator reads it: each option and
argument says what it is for, a flag renders as a flag (``--once``, never
``--once <bool>``), and a description is reflowed, not broken where its
docstring's lines happen to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer._click import Context

from apportion.cli.main import app


def commands(cmd: Any, path: tuple[str, ...] = (), parent: Context | None = None
             ) -> Iterator[tuple[str, Any, Context]]:
    """Every leaf command of the app, with its name and a context as wide as
    any line of its help, so that no line is wrapped."""
    ctx = Context(cmd, info_name=" ".join(path) or "apportion", parent=parent,
                  max_content_width=10_000, terminal_width=10_000)
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield " ".join(path), cmd, ctx
        return
    for name, sub in subs.items():
        if not sub.hidden:
            yield from commands(sub, (*path, name), ctx)


ALL = list(commands(typer.main.get_command(app)))


def test_the_walk_finds_every_command() -> None:
    names = {name for name, _, _ in ALL}
    assert {"submit", "top", "nodes list", "jobs logs", "scale plan", "token revoke",
            "simulate", "up"} <= names
    assert len(names) >= 35


@pytest.mark.parametrize(("name", "cmd", "ctx"), ALL, ids=[n for n, _, _ in ALL])
def test_every_option_and_argument_has_help(name: str, cmd: Any, ctx: Context) -> None:
    missing = [p.opts[0] if p.opts else p.name for p in cmd.params
               if not getattr(p, "hidden", False) and not (getattr(p, "help", None) or "").strip()]
    assert missing == [], f"{name}: {missing} have no help text"


@pytest.mark.parametrize(("name", "cmd", "ctx"), ALL, ids=[n for n, _, _ in ALL])
def test_flags_render_as_flags(name: str, cmd: Any, ctx: Context) -> None:
    text = cmd.get_help(ctx)
    assert "<bool>" not in text, text
    for p in cmd.params:
        if getattr(p, "is_flag", False):
            line = next(x for x in text.splitlines() if x.strip().startswith(p.opts[0])
                        or f", {p.opts[0]}" in x)
            assert "<" not in line.split("  ")[0], line


@pytest.mark.parametrize(("name", "cmd", "ctx"), ALL, ids=[n for n, _, _ in ALL])
def test_descriptions_are_reflowed_not_broken(name: str, cmd: Any, ctx: Context) -> None:
    text = cmd.get_help(ctx)
    lines = [" ".join(x.split()) for x in text.splitlines()]
    for paragraph in (cmd.help or "").split("\n\n"):
        if paragraph.strip() and not paragraph.startswith("\b"):
            assert " ".join(paragraph.split()) in lines, (name, paragraph, text)


def test_top_help_reads_as_one_sentence() -> None:
    top = next(c for n, c, _ in ALL if n == "top")
    ctx = Context(top, info_name="apportion top", max_content_width=200, terminal_width=200)
    assert "capacity per resource and facility" in top.get_help(ctx)
