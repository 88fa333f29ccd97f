"""``./run`` without a command prints its usage (the comment at its top,
and nothing of the code after it) and installs nothing; a first run says
what it installs and how long it took."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

RUN = Path(__file__).parents[2] / "run"


def test_run_without_arguments_prints_its_usage() -> None:
    bare = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2  # a usage error, as for `apportion` without a command
    assert bare.stderr == ""
    lines = bare.stdout.splitlines()
    assert lines[0].startswith("One entry point for a fresh machine.")
    assert "  ./run up      start apportion on this machine (server + SQLite + this node)" in lines
    assert lines[-1] == "  ./run help    this text"
    assert not any(line.startswith(("#", "set ", "cd ")) for line in lines), lines
    helped = subprocess.run(["bash", str(RUN), "help"], capture_output=True, text=True,
                            timeout=60)
    assert (helped.returncode, helped.stdout) == (0, bare.stdout)


FAKE_PYTHON = """#!/bin/sh
# Stands in for python3.11 -m venv .venv: a .venv whose python and pip only
# note what they were asked, and whose apportion says how it was called.
[ "$1 $2 $3" = "-m venv .venv" ] || exit 9
mkdir -p .venv/bin
printf '#!/bin/sh\\necho "pip $*" >> .venv/pip.log\\n' > .venv/bin/python
printf '#!/bin/sh\\necho "apportion $*"\\n' > .venv/bin/apportion
chmod +x .venv/bin/python .venv/bin/apportion
"""


def test_the_first_run_says_what_it_installs_and_how_long(tmp_path: Path) -> None:
    # A copy of the script beside a pyproject.toml, with a stand-in Python:
    # what it says is real, the installing is not (no network here).
    (tmp_path / "run").write_text(RUN.read_text())
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake)}

    def run_up() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(tmp_path / "run"), "up", "--port", "9"], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    first = run_up()
    assert (first.returncode, first.stdout) == (0, "apportion up --port 9\n"), first.stderr
    lines = first.stderr.splitlines()
    assert lines[:2] == [
        f"first run: creating a virtual environment in .venv ({fake})",
        "installing apportion and its dependencies into .venv (pip, about a minute; only "
        "this once)",
    ]
    assert len(lines) == 3 and re.fullmatch(r"installed in \d+ s", lines[2]), lines
    # First the Python's headers are looked for (the compiled free index);
    # this one says nothing, so nothing is asked of apt.
    assert (tmp_path / ".venv" / "pip.log").read_text() == (
        'pip -c import sys, sysconfig\nprint(sysconfig.get_paths()["include"],'
        ' "%d.%d" % sys.version_info[:2])\n'
        "pip -m pip install -q --upgrade pip\npip -m pip install -q -e .[dev]\n")

    # Installed: the next run says nothing and starts at once.
    again = run_up()
    assert (again.returncode, again.stdout, again.stderr) == (0, "apportion up --port 9\n", "")

    # A changed pyproject.toml: an update, said as such.
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    changed = run_up()
    assert changed.stderr.splitlines()[0] == (
        "pyproject.toml or the compiled free index changed: updating .venv (pip, about a"
        " minute)")
