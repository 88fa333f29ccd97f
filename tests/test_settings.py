"""Every ``APPORTION_*`` setting is a field of one model, and the README's
table is that model's (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

from apportion import protocol
from apportion.service.settings import Settings, settings_table, variables

ROOT = Path(__file__).parents[1]
TASK_CONTRACT = {value for name, value in vars(protocol).items()
                 if name.endswith("_ENV") and isinstance(value, str)}


def test_the_readme_table_is_the_models() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings:start -->\n")[1].split("\n<!-- settings:end -->")[0]
    assert table == settings_table()


def test_every_apportion_variable_the_code_names_is_a_setting_or_the_task_contract() -> None:
    named = set()
    for path in (ROOT / "src" / "apportion").rglob("*.py"):
        named |= set(re.findall(r"\bAPPORTION_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    unknown = named - set(variables()) - TASK_CONTRACT - {"APPORTION_EOF"}
    assert unknown == set()


def test_a_variable_reads_into_its_field(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("APPORTION_LEADER_TIMEOUT", "3")
        mp.setenv("APPORTION_LOG_MAX", "64Ki")
        mp.setenv("APPORTION_SQLITE_SYNCHRONOUS", "normal")
        s = Settings.from_env()
        assert (s.leader_timeout_s, s.log_max, s.sqlite_synchronous) == (3.0, 65536, "NORMAL")
    finally:
        mp.undo()
