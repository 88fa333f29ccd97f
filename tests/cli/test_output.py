"""``cli/output.py``: a plain line printed without rich is exactly what rich
would have printed; anything rich would change still goes through it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from apportion.cli.output import LazyConsole


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


LINES = ["submitted j-0123456789ab (pending) to queue default", "a  b   ", "  lead",
         "é — ü 中文 😀", "100% done", "quote's \"x\" <tag> & {} a\\b", "x" * 2000, ""]


@pytest.mark.parametrize("text", LINES)
def test_a_plain_line_is_what_rich_prints(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    for key in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(key, raising=False)
    expected = Pipe()
    Console(file=expected, width=4096).print(text)
    got = Pipe()
    monkeypatch.setattr("sys.stdout", got)
    lazy = LazyConsole(False, lambda: 4096)
    lazy.print(text)
    assert got.getvalue() == expected.getvalue()
    assert lazy._console is None  # rich was not needed


@pytest.mark.parametrize("text", ["[red]error:[/red] x", "tab\there", "a\nb", ":smile:"])
def test_markup_emoji_and_control_characters_go_through_rich(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdout", Pipe())
    lazy = LazyConsole(False, lambda: 4096)
    lazy.print(text)
    assert lazy._console is not None


def test_a_width_or_forced_colour_goes_through_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", Pipe())
    monkeypatch.setenv("FORCE_COLOR", "1")
    lazy = LazyConsole(False, lambda: 4096)
    lazy.print("plain")
    assert lazy._console is not None
