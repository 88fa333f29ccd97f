"""Alert webhooks end to end (issue 15): a real ``apportion server`` posts to
real HTTP receivers on loopback that answer 2xx, 4xx, 5xx or hang.

Each receiver hears an alert's changes in the order they happened, each
change under one ``Idempotency-Key`` however often it is tried, with the
try's number in ``X-Apportion-Delivery-Attempt``; 5xx answers, timeouts and
a server that dies mid-request are tried again, a 4xx is not. No test reads
the wall clock: retries and backoff show in the attempt numbers the
receiver recorded, and an answer's effect in what the receiver hears next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.cluster import wait_for
from server.helpers import add_node, config_env, grant
from support import BACKENDS, HOLD, Received, ServerProcess, WebhookReceiver

RAISED, RESOLVED = "alert.raised", "alert.resolved"

CONFIG = """
[alerts]
interval_s = 0.2
capacity_threshold = 0.5
capacity_critical = 0.99
webhooks = {urls}
webhook_attempts = {attempts}
webhook_timeout_s = {timeout}
"""


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, WebhookReceiver]]:
    pair = WebhookReceiver(), WebhookReceiver()
    try:
        yield pair
    finally:
        for r in pair:
            r.close()


def _server(
    tmp_path: Path,
    *receivers: WebhookReceiver,
    attempts: int,
    timeout: float = 1.0,
    database_url: str | None = None,
) -> ServerProcess:
    text = CONFIG.format(
        urls=json.dumps([r.url for r in receivers]), attempts=attempts, timeout=timeout
    )
    return ServerProcess(tmp_path, database_url=database_url, extra_env=config_env(tmp_path, text))


def _fill(api: httpx.Client) -> str:
    """75 % of the cluster's cpu granted: the capacity alert (threshold 50 %) fires."""
    return str(grant(api, resources={"cpu": "3"})["id"])


def _trace(receiver: WebhookReceiver) -> list[tuple[str, int, int | None]]:
    return [(r.event, r.attempt, r.status) for r in receiver.requests()]


def _heard(receiver: WebhookReceiver, event: str, status: int = 200) -> list[Received]:
    return [r for r in receiver.requests() if r.event == event and r.status == status]


def _keys(requests: list[Received]) -> list[str]:
    return [r.headers["idempotency-key"] for r in requests]


def test_each_receiver_hears_changes_in_order_and_a_failing_one_holds_up_only_itself(
    tmp_path: Path, receivers: tuple[WebhookReceiver, WebhookReceiver]
) -> None:
    down, up = receivers
    down.answers = [HOLD]  # hangs (the timeout is longer than the test), then
    down.otherwise = 503  # fails until the test says so
    server = _server(tmp_path, down, up, attempts=20, timeout=120).start()
    try:
        with server.client() as api:
            add_node(api, {"name": "n1", "resources": {"cpu": "4"}, "labels": {"facility": "f1"}})
            alloc = _fill(api)
            wait_for("the raise at the healthy receiver", lambda: _heard(up, RAISED), 30)
            api.delete(f"/api/v1/allocations/{alloc}")
            wait_for("the resolve at the healthy receiver", lambda: _heard(up, RESOLVED), 30)
        # The hung receiver's resolve waits behind its raise, still on its first try.
        assert [(r.event, r.status) for r in down.requests()] == [(RAISED, None)]
        down.release()  # the try ends without an answer: tried again, and fails
        wait_for("a 503 after the hang", lambda: _heard(down, RAISED, 503), 30)
        down.otherwise = 200
        wait_for("the resolve at the recovered receiver", lambda: _heard(down, RESOLVED), 60)
    finally:
        server.stop()
    assert _trace(up) == [(RAISED, 1, 200), (RESOLVED, 1, 200)]
    heard = down.requests()
    tries = len(heard) - 1
    assert [(r.event, r.attempt) for r in heard] == [(RAISED, n) for n in range(1, tries + 1)] + [
        (RESOLVED, 1)
    ]
    assert [r.status for r in heard] == [None] + [503] * (tries - 2) + [200, 200]
    assert len(set(_keys(heard[:tries]))) == 1  # one key for every try of one change
    assert len({r.body for r in heard[:tries]}) == 1  # byte-identical retries
    raised, resolved = (r.json() for r in up.requests())
    assert (raised["event"], raised["alert"]["rule"], raised["alert"]["status"]) == (
        RAISED,
        "capacity_utilization",
        "firing",
    )
    assert (resolved["alert"]["fingerprint"], resolved["alert"]["status"]) == (
        raised["alert"]["fingerprint"],
        "resolved",
    )
    assert [r.body for r in up.requests()] == [heard[0].body, heard[-1].body]
    assert {(r.path, r.headers["content-type"]) for r in heard + up.requests()} == {
        ("/hook", "application/json")
    }
    # A key names a change and a receiver: none is shared.
    assert len(set(_keys(up.requests())) | {_keys(heard)[0], _keys(heard)[-1]}) == 4


def test_a_4xx_ends_a_delivery_and_timeouts_and_5xx_are_retried_until_attempts_run_out(
    tmp_path: Path, receivers: tuple[WebhookReceiver, WebhookReceiver]
) -> None:
    receiver = receivers[0]
    # raise: 404; resolve: hangs past webhook_timeout_s, then three 5xx; then 200.
    receiver.answers = [404, HOLD, 500, 503, 502]
    server = _server(tmp_path, receiver, attempts=4).start()
    try:
        with server.client() as api:
            add_node(api, {"name": "n1", "resources": {"cpu": "4"}, "labels": {"facility": "f1"}})
            alloc = _fill(api)
            wait_for("the raise", lambda: _heard(receiver, RAISED, 404), 30)
            api.delete(f"/api/v1/allocations/{alloc}")
            wait_for("the resolve's first try", lambda: len(receiver.requests()) == 2, 30)
            _fill(api)  # raised again: its delivery queues behind the resolve's tries
            wait_for("the second raise", lambda: _heard(receiver, RAISED), 60)
    finally:
        server.stop()
    heard = receiver.requests()
    assert _trace(receiver) == [
        (RAISED, 1, 404),  # not tried again: the resolve comes next
        (RESOLVED, 1, None),  # hung past the timeout: tried again
        (RESOLVED, 2, 500),
        (RESOLVED, 3, 503),
        (RESOLVED, 4, 502),  # 4 of 4: given up
        (RAISED, 1, 200),
    ]
    assert len(set(_keys(heard[1:5]))) == 1
    assert len(set(_keys(heard))) == 3
    assert heard[0].json()["alert"]["fingerprint"] == heard[5].json()["alert"]["fingerprint"]
    assert heard[0].json()["id"] != heard[5].json()["id"]  # a new alert, not a retry


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the server's own SQLite file; else a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_a_delivery_cut_short_by_a_crash_is_sent_again_by_the_restarted_server(
    tmp_path: Path,
    receivers: tuple[WebhookReceiver, WebhookReceiver],
    database_url: str | None,
) -> None:
    receiver = receivers[0]
    receiver.answers = [503, 503, HOLD]
    # The timeout outlasts the test: the third try is cut short by the crash only.
    server = _server(
        tmp_path, receiver, attempts=20, timeout=120, database_url=database_url
    ).start()
    try:
        with server.client() as api:
            add_node(api, {"name": "n1", "resources": {"cpu": "4"}, "labels": {"facility": "f1"}})
            _fill(api)
            wait_for("the third try, held open", lambda: len(receiver.requests()) == 3, 30)
        server.kill9()
        receiver.release()
        restarted = _server(tmp_path, receiver, attempts=20, timeout=120, database_url=database_url)
        restarted.port, restarted.token = server.port, server.token
        server = restarted.start()
        wait_for("the delivery by the restarted server", lambda: _heard(receiver, RAISED), 60)
        with server.client() as api:
            firing = api.get("/api/v1/alerts", params={"state": "firing"}).json()["alerts"]
    finally:
        server.stop()
    heard = receiver.requests()
    # The crash left the third try unrecorded, so it is sent again as the third.
    assert _trace(receiver) == [
        (RAISED, 1, 503),
        (RAISED, 2, 503),
        (RAISED, 3, None),
        (RAISED, 3, 200),
    ]
    assert len(set(_keys(heard))) == 1 and len({r.body for r in heard}) == 1
    assert [a["fingerprint"] for a in firing] == [heard[0].json()["alert"]["fingerprint"]]
