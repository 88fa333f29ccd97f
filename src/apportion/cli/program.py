"""The ``apportion`` program (``[project.scripts]`` and ``python -m
apportion.cli.main``): runs the app of ``cli/main.py`` and leaves as soon as
the command is done.

A short command's own work takes a few milliseconds; the process around it
took most of its time (``bench/bench_cli.py``). Two parts of that are cut
here. The cyclic garbage collector is held off while the CLI's modules are
imported, then told that what they made is permanent (``gc.freeze``): those
objects are never garbage, and it went over them again and again. And once
the command has run and its output is flushed, the process ends with
``os._exit`` after the ``atexit`` handlers, instead of tearing the
interpreter down module by module with a last full collection. Where that
could lose work it exits as Python does: for the commands that run a server
or an agent in this process, while a non-daemon thread still runs, when the
output cannot be flushed (a closed pipe), or for an exit status that is not
a number.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable

LONG_RUNNING = frozenset({"server", "up", "agent"})
"""Commands that serve in this process until stopped: they exit as Python does."""


def main() -> NoReturn:
    """The installed ``apportion`` command."""
    gc.disable()
    from apportion.cli.main import app

    gc.freeze()
    gc.enable()
    run(app)


def run(app: Callable[[], Any]) -> NoReturn:
    """Run ``app`` (which parses ``sys.argv``) and exit with its status."""
    name = sys.argv[1] if len(sys.argv) > 1 else None
    if name in LONG_RUNNING:
        sys.exit(app())
    try:
        app()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    leave(code)


def leave(code: Any) -> NoReturn:
    """Exit with ``code`` without tearing the interpreter down, where nothing
    is lost by that; otherwise as ``sys.exit`` does."""
    if code is None:
        code = 0
    if not isinstance(code, int) or _threads_running():
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        # Python reports the failed flush, and exits, as it always has.
        sys.exit(code)
    atexit._run_exitfuncs()
    os._exit(code & 0xFF)


def _threads_running() -> bool:
    """Whether a non-daemon thread (which Python would wait for) still runs."""
    threading = sys.modules.get("threading")
    if threading is None:
        return False
    main_thread = threading.main_thread()
    return any(t is not main_thread and not t.daemon and t.is_alive()
               for t in threading.enumerate())
