"""The shape issue 12 asked for, checked on every run: the layer contracts
(import-linter), no source file over 600 lines, and a docstring in every
package's ``__init__`` saying what lives there and what it may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "apportion"
MAX_LINES = 600


def test_the_layer_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_source_file_is_over_600_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_says_what_lives_there() -> None:
    missing = [str(init.relative_to(SRC)) for init in SRC.rglob("__init__.py")
               if ast.get_docstring(ast.parse(init.read_text())) is None]
    assert missing == []
