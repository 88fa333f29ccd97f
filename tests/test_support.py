"""The test harness's own server process: it waits for its own server, not
whichever answers on its port."""

from __future__ import annotations

from pathlib import Path

from support import ServerProcess


def test_a_server_given_a_port_another_holds_starts_on_another(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(tmp_path / "a").start()
    try:
        # As when two workers draw the same free port: the second server
        # loses the bind while the first answers /healthz on that port.
        second = ServerProcess(tmp_path / "b", port=first.port).start()
        try:
            assert second.port != first.port
            with second.client() as http:
                assert http.get("/api/v1/nodes").status_code == 200
        finally:
            second.stop()
    finally:
        first.stop()
