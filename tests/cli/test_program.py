"""``cli/program.py``: leaving without tearing the interpreter down keeps
what a normal exit does: the status, flushed output, ``atexit`` handlers."""

from __future__ import annotations

import subprocess
import sys
import threading

from apportion.cli.program import _threads_running


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_leave_flushes_runs_atexit_and_exits_with_the_status() -> None:
    done = run("import atexit, sys\n"
               "atexit.register(lambda: print('handler ran'))\n"
               "sys.stdout.write('buffered, no newline')\n"
               "from apportion.cli.program import leave\n"
               "leave(3)")
    assert done.returncode == 3
    assert done.stdout == "buffered, no newlinehandler ran\n"


def test_a_status_that_is_not_a_number_exits_as_python_does() -> None:
    done = run("from apportion.cli.program import leave\nleave('went wrong')")
    assert (done.returncode, done.stderr) == (1, "went wrong\n")


def test_a_running_non_daemon_thread_makes_it_exit_as_python_does() -> None:
    go = threading.Event()
    worker = threading.Thread(target=go.wait)
    worker.start()
    try:
        assert _threads_running()  # so leave() exits with sys.exit, which waits for it
    finally:
        go.set()
        worker.join()
    hold = threading.Event()
    daemon = threading.Thread(target=hold.wait, daemon=True)
    daemon.start()
    try:
        assert not _threads_running()  # a daemon thread is not waited for
    finally:
        hold.set()
        daemon.join()
