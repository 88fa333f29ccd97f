"""``cli/main.py``'s index of commands (``WHERE``): a call that names a
command imports only the module it lists, so the index must say what each
module registers, in the order ``--help`` lists them."""

from __future__ import annotations

import typer
import typer.main

from apportion.cli import main


def listed(app: typer.Typer) -> tuple[list[str | None], list[str | None]]:
    """An app's commands and groups, in the order it registered them."""
    return ([main._name_of(c) for c in app.registered_commands],
            [g.name for g in app.registered_groups])


def test_each_module_registers_exactly_the_names_listed_for_it() -> None:
    for module in dict.fromkeys(main.WHERE.values()):
        app = typer.Typer()
        main._register(module, app)
        commands, groups = listed(app)
        assert sorted(map(str, commands + groups)) == sorted(
            n for n, m in main.WHERE.items() if m == module), module


def test_the_whole_app_registers_every_name_in_the_listed_order() -> None:
    commands, groups = listed(main.app)
    assert commands == [n for n in main.WHERE if n in commands]
    assert groups == [n for n in main.WHERE if n in groups]
    assert set(commands) | set(groups) == set(main.WHERE)


def test_a_named_call_builds_the_same_command_as_the_whole_app() -> None:
    whole = typer.main.get_command(main.app)
    for name in main.WHERE:
        pruned = main.app._only(name)
        assert pruned is not None
        alone = typer.main.get_command(pruned)
        one, full = alone.commands[name], whole.commands[name]  # type: ignore[attr-defined]
        assert [p.name for p in one.params] == [p.name for p in full.params], name
        assert one.help == full.help
        assert sorted(getattr(one, "commands", {})) == sorted(getattr(full, "commands", {}))


def test_an_unknown_name_builds_the_whole_app() -> None:
    assert main.app._only("no-such-command") is None
