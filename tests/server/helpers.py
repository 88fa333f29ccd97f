"""What the server tests share besides fixtures: calls that must succeed,
waiting on a condition, a server config file.

Imported as ``server.helpers`` (``tests`` is on the path, as for
``e2e.cluster``); the fixtures that start servers are in ``conftest.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from e2e.cluster import wait_for
from support import ServerProcess

# ``serve`` (conftest.py): start a fresh server with these extra environment variables.
Serve = Callable[..., ServerProcess]

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
          every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (the server's loops
    run in the background) and return that; fail naming ``what``."""
    return wait_for(what, check, timeout, every)


def add_node(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Register a node; the test is about something else, so it must work."""
    r = api.post("/api/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def grant(api: httpx.Client, **body: Any) -> dict[str, Any]:
    """``POST /api/v1/allocations`` with ``body``, which must be granted."""
    r = api.post("/api/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def make_token(server: ServerProcess, name: str, role: str) -> str:
    """A new token of ``role``, created by the server's admin."""
    with server.client() as admin:
        r = admin.post("/api/v1/tokens", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def config_env(data_dir: Path, text: str) -> dict[str, str]:
    """Write ``text`` as the server's config file in ``data_dir``; the
    environment that points a server at it."""
    config = data_dir / "server.toml"
    config.write_text(text)
    return {"APPORTION_CONFIG_FILE": str(config)}


def cycles(api: httpx.Client) -> float:
    """Scheduling cycles run with work pending, as /metrics counts them."""
    text = api.get("/metrics").text
    found = re.search(
        r"^apportion_scheduling_cycle_duration_seconds_count(?:\{\})? (\S+)$", text, re.MULTILINE
    )
    assert found, "no scheduling cycle count in /metrics"
    return float(found.group(1))


def after_cycles(api: httpx.Client, n: int = 2) -> None:
    """Wait until ``n`` more scheduling cycles have run: whatever is pending
    now has been considered (and, if still pending, refused) since."""
    start = cycles(api)
    until(lambda: cycles(api) >= start + n, what=f"{n} scheduling cycles")
