"""The pure half of alert webhooks: retry delays and the JSON body.

Sending (HTTP, timeouts, a queue so the scheduler never waits) lives in
service/; here are only the decisions that can be tested without a network.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from datetime import UTC, datetime
from typing import Any

from apportion.core.alerts import AlertChange
from apportion.core.errors import InvalidInput

PAYLOAD_VERSION = 1

_MAX_DOUBLINGS = 60  # past this the cap has long won; keeps 2**n a sane float


def backoff_delays(attempts: int, base_s: float, cap_s: float, rng: random.Random) -> list[float]:
    """Seconds to wait before each of ``attempts`` retries (the first try is
    immediate and not counted).

    Exponential with "equal jitter": retry ``i`` waits between half and all of
    ``min(cap_s, base_s * 2**i)``. Half is fixed so a receiver that is down
    gets real breathing room (full jitter can retry almost at once); half is
    random so many servers that failed together do not retry together.
    """
    if attempts < 0:
        raise InvalidInput(f"attempts: {attempts} must be at least 0", field="attempts")
    if not (math.isfinite(base_s) and base_s > 0):
        raise InvalidInput(f"base_s: {base_s!r} must be above 0", field="base_s")
    if not (math.isfinite(cap_s) and cap_s >= base_s):
        raise InvalidInput(f"cap_s: {cap_s!r} must be at least base_s ({base_s})", field="cap_s")
    delays = []
    for i in range(attempts):
        ceiling = min(cap_s, base_s * 2.0 ** min(i, _MAX_DOUBLINGS))
        delays.append(ceiling / 2 + rng.uniform(0, ceiling / 2))
    return delays


def alert_payload(change: AlertChange, *, source: str = "apportion") -> dict[str, Any]:
    """The JSON body POSTed for one alert change.

    ``id`` is the same for every retry of one change, so a receiver can drop
    duplicates; ``fingerprint`` is the same for every change of one alert, so
    it can thread them.
    """
    alert = change.alert
    previous = change.previous_severity
    return {
        "version": PAYLOAD_VERSION,
        "id": delivery_id(change),
        "source": source,
        "event": f"alert.{change.kind.value}",
        "at": _iso(change.at),
        "alert": {
            "fingerprint": alert.fingerprint,
            "rule": alert.rule.value,
            "status": "firing" if alert.open else "resolved",
            "severity": alert.severity.value,
            "previous_severity": previous.value if previous is not None else None,
            "labels": dict(sorted(alert.labels.items())),
            "message": alert.message,
            "value": _finite(alert.value),
            "threshold": _finite(alert.threshold),
            "started_at": _iso(alert.started_at),
            "resolved_at": _iso(alert.resolved_at),
        },
    }


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, so a retried body is byte-identical
    (and can be signed)."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def delivery_id(change: AlertChange) -> str:
    text = f"{change.alert.fingerprint}|{change.kind.value}|{change.at!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _iso(ts: float | None) -> str | None:
    # Same shape as the REST API's times.
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a receiver would reject the whole body.
    return value if value is not None and math.isfinite(value) else None
