"""The server's config file (``service/server_config.py``): each section
reaches the service that reads it when ``wiring.build`` makes the server,
and a typo is refused at start with the key's full name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from apportion.exceptions import InvalidInput
from apportion.service.server_config import load_server_config
from apportion.service.wiring import Services

CONFIG = """
[health.temperature]
warning = 70
critical = 85

[alerts]
queue_wait_s = 600
webhooks = ["http://127.0.0.1:9/hook"]
webhook_attempts = 3

[history]
interval_s = 30

[planning]
history_days = 14

[scaling]
join_token_ttl_s = 120
"""


def test_each_section_reaches_its_service(servers: Callable[..., Services], tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(CONFIG)
    server = servers("a", config_file=path, planning_interval_s=60)
    assert (
        server.health.thresholds.temperature.warning,
        server.health.thresholds.temperature.critical,
    ) == (70.0, 85.0)
    assert server.health.thresholds.memory.warning == 80.0  # untouched: the default
    alerts = server.alerts.settings
    assert (alerts.queue_wait_s, alerts.webhooks, alerts.webhook_attempts) == (
        600.0,
        ("http://127.0.0.1:9/hook",),
        3,
    )
    assert server.history.settings.interval_s == 30.0
    assert (server.planning.settings.history_days, server.planning.settings.interval_s) == (
        14.0,
        60.0,
    )
    assert server.join_tokens.ttl_s == 120.0
    assert server.scaling is None  # no pools


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[helth]\n", r"unknown section \[helth\]; known: \[alerts\], \[health\]"),
        (
            "[alerts]\nqueue_wait = 5\n",
            r"alerts\.queue_wait: unknown key; known: capacity_critical",
        ),
        (
            "[alerts]\ncapacity_threshold = 90\n",
            r"alerts\.capacity_threshold: a share from 0 to 1 \(0\.9 is 90 %\)",
        ),
        ('[alerts]\nwebhooks = "http://x"\n', r"alerts\.webhooks: a list of URLs"),
        ("[alerts]\nwebhook_attempts = 50\n", r"alerts\.webhook_attempts: an integer from 1 to 20"),
        ("[health.temperature]\nwarning = 95\n", r"health\.temperature: warning \(95\)"),
        ("[planning]\nhistory_days = 0\n", r"planning\.history_days: a positive number"),
        ("not toml = = 1\n", "cannot read the server config"),
    ],
)
def test_a_wrong_key_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_server_config(path)


def test_without_a_file_every_default_holds() -> None:
    config = load_server_config(None, planning_interval_s=30)
    assert (config.alerts.queue_wait_s, config.planning.interval_s) == (3600.0, 30.0)
