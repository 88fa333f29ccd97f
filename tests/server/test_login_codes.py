"""One-time sign-in codes for the dashboard, over loopback against a real
server: an admin or user token mints a code; the code, without any token, is
exchanged once for a session token of the same name and role; a second use,
an expired code (its row aged in the server's own database) or an unknown
one answers 401 saying which; an agent may not mint one; a session ends."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from server.helpers import make_token
from support import ServerProcess


def _age(data_dir: Path, sql: str) -> None:
    """Move a stored code or session into the past, as time would."""
    engine = sa.create_engine(f"sqlite:///{data_dir / 'apportion.db'}")
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text(sql)).rowcount == 1
    finally:
        engine.dispose()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def test_a_code_opens_one_session_as_its_maker(shared: ServerProcess) -> None:
    alice = make_token(shared, "alice", "user")
    with shared.client(alice) as c:
        made = c.post("/api/v1/auth/codes")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["code"].startswith("apc_") and len(body["code"]) == 36
    assert (body["name"], body["role"], body["expires_in_s"]) == ("alice", "user", 60.0)

    # No token: the code is the credential.
    with httpx.Client(base_url=shared.url, timeout=10) as anonymous:
        first = anonymous.post("/api/v1/auth/session", json={"code": body["code"]})
        assert first.status_code == 200, first.text
        session = first.json()
        assert (session["name"], session["role"]) == ("alice", "user")
        assert session["token"].startswith("apt_") and session["token"] != alice
        who = anonymous.get(
            "/api/v1/whoami", headers={"Authorization": f"Bearer {session['token']}"}
        )
        assert who.json() == {"name": "alice", "role": "user"}

        again = anonymous.post("/api/v1/auth/session", json={"code": body["code"]})
        assert again.status_code == 401
        assert again.json()["error"] == "unauthenticated"
        assert again.json()["message"].startswith("this sign-in code was already used (at ")
        assert again.json()["message"].endswith(
            "a code works once: run 'apportion dashboard' for a new one"
        )

        unknown = anonymous.post("/api/v1/auth/session", json={"code": "apc_nothing"})
        assert (unknown.status_code, unknown.json()["message"]) == (
            401,
            "unknown sign-in code; run 'apportion dashboard' for a new one",
        )
        missing = anonymous.post("/api/v1/auth/session", json={})
        assert missing.status_code == 422 and "code" in missing.text

    # The session is listed with its end, 12 hours after it began.
    with shared.client() as admin:
        rows = [t for t in admin.get("/api/v1/tokens").json()["tokens"] if t["name"] == "alice"]
    assert sorted(t["expires_at"] is None for t in rows) == [False, True]
    ended = next(t for t in rows if t["expires_at"])
    assert _seconds(ended["created_at"], ended["expires_at"]) == 12 * 3600


def test_an_expired_code_and_an_ended_session_are_refused(shared: ServerProcess) -> None:
    with shared.client() as admin:
        code = admin.post("/api/v1/auth/codes").json()["code"]
        fresh = admin.post("/api/v1/auth/codes").json()["code"]
    _age(
        shared.data_dir,
        f"UPDATE login_codes SET expires_at = 1000 WHERE code_hash = '{_hash(code)}'",
    )
    with httpx.Client(base_url=shared.url, timeout=10) as anonymous:
        late = anonymous.post("/api/v1/auth/session", json={"code": code})
        assert late.status_code == 401
        assert late.json()["message"] == (
            "this sign-in code expired at 1970-01-01T00:16:40Z (a code works for 60 s); "
            "run 'apportion dashboard' for a new one"
        )
        session = anonymous.post("/api/v1/auth/session", json={"code": fresh}).json()
    _age(
        shared.data_dir,
        f"UPDATE tokens SET expires_at = 1000 WHERE token_hash = '{_hash(session['token'])}'",
    )
    # A server caches a verified token for up to 10 s; this one was never used.
    with shared.client(session["token"]) as c:
        r = c.get("/api/v1/whoami")
    assert (r.status_code, r.json()["message"]) == (401, "unknown token")


def test_only_admin_and_user_tokens_mint_codes(shared: ServerProcess) -> None:
    agent = make_token(shared, "node-x", "agent")
    with shared.client(agent) as c:
        r = c.post("/api/v1/auth/codes")
    assert r.status_code == 403
    assert r.json()["message"] == (
        "this needs the admin or user role; your token (node-x) is agent"
    )
    with httpx.Client(base_url=shared.url, timeout=10) as anonymous:
        assert anonymous.post("/api/v1/auth/codes").status_code == 401


def test_refused_codes_count_as_failed_sign_ins(server: ServerProcess) -> None:
    # Its own server: the address it blocks is the tests' loopback.
    with server.client() as admin:
        assert admin.get("/api/v1/whoami").status_code == 200  # known to this server now
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        answers = [
            anonymous.post("/api/v1/auth/session", json={"code": f"apc_guess{i}"}).status_code
            for i in range(22)
        ]
        assert answers == [401] * 21 + [429]
        blocked = anonymous.post("/api/v1/auth/session", json={"code": "apc_guess"})
        assert blocked.json()["error"] == "too_many_failures"
        assert blocked.headers["retry-after"] in {str(s) for s in range(1, 31)}
    # A token this server verified before still passes from the same address.
    with server.client() as admin:
        assert admin.post("/api/v1/auth/codes").status_code == 201
