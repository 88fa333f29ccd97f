"""``./run`` without a command prints its usage (the comment at its top,
and nothing of the code after it) and installs nothing."""

from __future__ import annotations

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
