"""Issue 17, the server's edge: bodies are not read before the caller is
known and are capped; labels are capped; wrong tokens are rate limited;
agents cannot change their node's state; tokens can be listed and revoked;
the admin token from the environment is replaced, not added to, and must be
long; the server's files are private. Real server processes on loopback."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import ServerProcess


def _raw(server: ServerProcess, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request by hand (headers, maybe no body at all); the status and
    the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            headers, _, rest = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(rest) >= length[0]:
                break
    return int(data.split(b" ", 2)[1]), data


def test_a_body_is_not_read_before_its_caller_is_known_nor_past_its_limit(
        server: ServerProcess) -> None:
    # 20 MB announced, not a byte sent: answered at once, the body unread.
    status, _ = _raw(server, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: 20000000")
    assert status == 401
    status, data = _raw(server, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
                                f"Authorization: Bearer {server.token}\r\n"
                                "Content-Type: application/json\r\nContent-Length: 20000000")
    assert status == 413 and b"body_too_large" in data
    with server.client() as api:
        # Without a length, the body is counted as it comes and cut at 1 MiB.
        chunks = (b"[" + b"1," * 700_000 + b"1]" for _ in range(1))
        r = api.post("/api/v1/jobs", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        # The grant fast path too, with a length and without one.
        r = api.post("/api/v1/allocations", content=b"{" + b" " * (2 << 20) + b"}",
                     headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = api.post("/api/v1/allocations", content=(b" " * (1 << 19) for _ in range(3)),
                     headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["message"] == ("the body is over 1048576 bytes, the most this "
                                       "endpoint takes")


def test_labels_are_capped_with_an_error_that_names_the_field(server: ServerProcess) -> None:
    labels = {f"k{i}": "v" for i in range(65)}
    with server.client() as api:
        r = api.post("/api/v1/nodes", json={"name": "n1", "resources": {"cpu": "1"},
                                            "labels": labels})
        assert r.status_code == 422, r.text
        assert r.json()["details"][0]["field"] == "labels"
        assert "at most 64" in r.json()["message"]
        r = api.post("/api/v1/jobs", json={"resources": {"cpu": "1"}, "labels": labels})
        assert (r.status_code, r.json()["details"][0]["field"]) == (422, "labels")


def test_wrong_tokens_from_one_address_are_answered_429_with_retry_after(
        server: ServerProcess) -> None:
    with server.client() as api:
        assert api.get("/api/v1/nodes").status_code == 200  # a client already at work
    with httpx.Client(base_url=server.url, timeout=30) as c:
        statuses = [c.get("/api/v1/nodes", headers={"Authorization": f"Bearer wrong-{i}"}
                          ).status_code for i in range(22)]
        assert statuses[:20] == [401] * 20 and statuses[-1] == 429
        blocked = c.get("/api/v1/nodes", headers={"Authorization": "Bearer wrong-x"})
    assert int(blocked.headers["retry-after"]) > 0
    assert blocked.json()["error"] == "too_many_failures"
    with server.client() as api:  # a token known good still passes
        assert api.get("/api/v1/nodes").status_code == 200


def test_an_agent_cannot_undo_its_nodes_cordon(server: ServerProcess) -> None:
    with server.client() as admin:
        admin.post("/api/v1/nodes", json={"name": "n1", "resources": {"cpu": "4"}})
        agent = admin.post("/api/v1/tokens", json={"name": "n1", "role": "agent"}).json()
        assert admin.post("/api/v1/nodes/n1/cordon").json()["state"] == "cordoned"
    with server.client(agent["token"]) as n1:
        r = n1.put("/api/v1/nodes/n1", json={"state": "ready"})
        assert (r.status_code, r.json()["field"]) == (403, "state"), r.text
        assert n1.put("/api/v1/nodes/n1", json={"labels": {"rack": "r1"}}).status_code == 200
    with server.client() as admin:
        assert admin.get("/api/v1/nodes/n1").json()["state"] == "cordoned"


def test_tokens_are_listed_and_revoked_from_the_cli(server: ServerProcess,
                                                    tmp_path: Path) -> None:
    env = {**os.environ, "APPORTION_SERVER": server.url, "APPORTION_TOKEN": server.token,
           "XDG_CONFIG_HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "apportion.cli.main", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    made = cli("token", "create", "--name", "ci-bot", "--role", "user")
    assert made.returncode == 0, made.stderr
    bot = made.stdout.strip()
    listed = cli("token", "list")
    assert "ci-bot" in listed.stdout and bot not in listed.stdout
    with server.client(bot) as c:
        assert c.get("/api/v1/whoami").json() == {"name": "ci-bot", "role": "user"}
    revoked = cli("token", "revoke", "ci-bot")
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "revoked 1 token(s) called ci-bot")
    with server.client(bot) as c:
        assert c.get("/api/v1/whoami").status_code == 401
    again = cli("token", "revoke", "ci-bot")
    assert again.returncode != 0 and "no token is called 'ci-bot'" in again.stderr


def test_a_changed_admin_token_replaces_the_old_one(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    old = server.token
    server.stop()
    server.token = "new-admin-token-" + "x" * 16
    server.start()
    try:
        with server.client(old) as c:
            assert c.get("/api/v1/whoami").status_code == 401
        with server.client() as c:
            assert c.get("/api/v1/whoami").json() == {"name": "admin", "role": "admin"}
            names = [t["name"] for t in c.get("/api/v1/tokens").json()["tokens"]]
        assert names.count("admin") == 1
    finally:
        server.stop()


def test_a_short_admin_token_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="APPORTION_ADMIN_TOKEN: at least 24 characters"):
        ServerProcess(tmp_path, token="short").start(timeout=60)


def test_the_servers_files_are_private(server: ServerProcess) -> None:
    with server.client() as c:
        c.post("/api/v1/nodes", json={"name": "n1", "resources": {"cpu": "1"}})
    for path in server.data_dir.iterdir():
        if path.name.startswith("apportion.db"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
