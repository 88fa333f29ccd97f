"""``apportion top`` in a real terminal (a pseudo-terminal) against a real
server: it draws the cluster, ``q`` quits it, and the terminal's settings
are as they were before."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ServerProcess

WAIT_S = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("top")).start()
    try:
        yield proc
    finally:
        proc.stop()


def read_until(fd: int, needle: bytes, seen: bytearray) -> None:
    """Read the terminal until ``needle`` has appeared (or fail after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never appeared in {bytes(seen[-2000:])!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return


def test_q_quits_top_and_restores_the_terminal(server: ServerProcess, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env |= {"APPORTION_CONFIG": str(tmp_path / "none.toml"), "TERM": "xterm",
            "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "apportion.cli.main", "top", "--server", server.url,
         "--token", server.token, "--interval", "3600"],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    seen = bytearray()
    try:
        read_until(master, b"q quits", seen)
        assert b"apportion \xc2\xb7" in seen  # the header line was drawn
        os.write(master, b"q")
        assert proc.wait(timeout=WAIT_S) == 0, bytes(seen[-2000:])
        assert b"Traceback" not in seen
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
