"""The ``apportion`` command: the app, and where each of its commands lives
(``server`` and ``up`` in ``server_cmds``, the API's in the other modules)."""

from __future__ import annotations

import copy
import importlib
import sys
from typing import TYPE_CHECKING, Any

import typer

from apportion.cli.output import emit_json, error_object

if TYPE_CHECKING:
    from typer.models import CommandInfo, TyperInfo

WHERE: dict[str, str] = {
    "nodes": "nodes_cmds",
    "allocations": "ledger_cmds", "token": "ledger_cmds", "alloc": "ledger_cmds",
    "release": "ledger_cmds", "capacity": "ledger_cmds", "alerts": "ledger_cmds",
    "servers": "cluster_cmds",
    "jobs": "jobs_cmds", "queues": "jobs_cmds", "submit": "jobs_cmds",
    "agent": "agent_cmds",
    "events": "observe_cmds", "top": "observe_cmds", "history": "observe_cmds",
    "forecast": "planning_cmds", "predict": "planning_cmds",
    "scale": "scaling_cmds",
    "simulate": "simulate",
    "dashboard": "dashboard_cmds",
    "server": "server_cmds", "up": "server_cmds",
}
"""Each command and group of ``apportion`` with the module of
``apportion.cli`` whose ``register(app)`` adds it, in the order they are
registered (``--help`` lists the commands in this order, then the groups).
A call that names one imports that module alone: importing all of them was
a good part of a short command's start (``bench/bench_cli.py``).
``tests/cli/test_main.py`` checks this against what each module registers."""


class _App(typer.Typer):
    """The main app, which imports and builds only the command a call names.

    Typer turns every registered command into a click command (signatures,
    type hints, parameter types) before it parses anything, and registering
    a command means importing its module; for this CLI's ~40 commands that
    was a large part of a short command's run time (``bench/bench_cli.py``).
    A call that names a command or group first builds an app with only that
    one registered, which parses, helps and fails the same way; anything
    else (``--help``, a typo) builds them all. Whoever reads the registered
    commands otherwise (``typer.main.get_command(app)``, a test's runner)
    sees them all: they are registered on first use.
    """

    _loaded = False
    _commands: list[CommandInfo]
    _groups: list[TyperInfo]

    @property
    def registered_commands(self) -> list[CommandInfo]:
        self._load()
        return self._commands

    @registered_commands.setter
    def registered_commands(self, value: list[CommandInfo]) -> None:
        self._commands = value

    @property
    def registered_groups(self) -> list[TyperInfo]:
        self._load()
        return self._groups

    @registered_groups.setter
    def registered_groups(self, value: list[TyperInfo]) -> None:
        self._groups = value

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in dict.fromkeys(WHERE.values()):
                _register(module, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = sys.argv[1:]
        name = argv[0] if argv and not argv[0].startswith("-") else None
        pruned = self._only(name) if name is not None else None
        options = argv[:argv.index("--")] if "--" in argv else argv  # not a job's command's
        if "--json" in options:
            return _json_errors(pruned or self, *args, **kwargs)
        return typer.Typer.__call__(pruned or self, *args, **kwargs)

    def _only(self, name: str) -> typer.Typer | None:
        if name not in WHERE:
            return None
        pruned = copy.copy(self)
        pruned._loaded = True
        pruned._commands, pruned._groups = [], []
        _register(WHERE[name], pruned)
        # A hidden second command keeps it a group: a Typer app of one
        # command would turn that command into the whole program.
        pruned._commands = [*(c for c in pruned._commands if _name_of(c) == name),
                            *_HIDDEN.registered_commands]
        pruned._groups = [g for g in pruned._groups if g.name == name]
        return pruned


def _register(module: str, app: typer.Typer) -> None:
    """Add the commands of ``apportion.cli.<module>``."""
    importlib.import_module(f"apportion.cli.{module}").register(app)


def _json_errors(app: typer.Typer, *args: Any, **kwargs: Any) -> Any:
    """Run ``app`` so that a usage error (an unknown option, a bad value) is
    the same JSON object on stdout as an API error is under ``--json``, with
    click's exit status (2). Click prints usage errors itself in standalone
    mode, so this one runs without it and does what it would do otherwise."""
    # Typer 0.29 vendors click; its exception classes live there.
    from typer._click.exceptions import ClickException, UsageError

    try:
        rv = typer.Typer.__call__(app, *args, standalone_mode=False, **kwargs)
    except ClickException as exc:
        code = "usage" if isinstance(exc, UsageError) else "error"
        emit_json(error_object(code, exc.format_message(), None))
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


_HIDDEN = typer.Typer()


@_HIDDEN.command("-", hidden=True)
def _placeholder() -> None:  # pragma: no cover - never called
    """Never listed, never called."""


def _name_of(info: Any) -> str | None:
    if info.name:
        return str(info.name)
    callback = info.callback
    return callback.__name__.lower().replace("_", "-") if callback else None


app = _App(
    name="apportion",
    help="Resource manager for heterogeneous compute clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: Rich's shows `--once <bool>` for a flag and keeps a
    # docstring's line breaks mid-sentence; click reflows to the terminal.
    rich_markup_mode=None,
)


if __name__ == "__main__":  # pragma: no cover
    from apportion.cli.program import run

    run(app)
