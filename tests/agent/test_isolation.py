"""Who tasks run as (issue 17, finding 3): the mode each host allows, and,
as root, real tasks under other uids that cannot read the agent's records,
each other's logs and directories, or each other's processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.test_agent_runner import WATCHDOG, Harness, assignment
from apportion.agent import isolation
from apportion.agent.isolation import (
    Identity,
    Isolation,
    IsolationError,
    IsolationMode,
    choose_isolation,
    make_sandbox_root,
    parse_uid_range,
    read_task_file,
    unsearchable,
)
from apportion.agent.runner import LocalTask, Runner

ROOT = os.geteuid() == 0 and shutil.which("setpriv") is not None
needs_root = pytest.mark.skipif(not ROOT, reason="running tasks as other uids needs root "
                                "and setpriv")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A work directory task uids can reach (pytest's own is 0700)."""
    work = Path(tempfile.mkdtemp(prefix="apportion-iso-", dir="/tmp"))
    work.chmod(0o711)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_an_unprivileged_agent_shares_its_uid_with_its_tasks_and_says_so() -> None:
    found = choose_isolation(None, None, euid=1000)
    assert found.spec() == {
        "mode": "shared_uid",
        "reason": "the agent does not run as root: tasks run as uid 1000, as the agent does, "
                  "and can read the agent's files (its token file included) and each other's"}
    with pytest.raises(IsolationError, match=r"^--task-uids: the agent must run as root"):
        choose_isolation(None, "61000-61009", euid=1000)
    with pytest.raises(IsolationError, match=r"^--task-user nobody: the agent must run as root"):
        choose_isolation("nobody", None, euid=1000)


def test_a_root_agent_runs_tasks_as_nobody_unless_told_and_as_root_only_when_told() -> None:
    default = choose_isolation(None, None, euid=0, which=lambda _: "/usr/bin/setpriv")
    assert (default.mode, default.user) == (
        IsolationMode.TASK_USER, Identity(65534, 65534, "nobody", "/nonexistent"))
    assert default.spec()["task_user"] == "nobody"
    as_root = choose_isolation("root", None, euid=0)
    assert as_root.spec() == {
        "mode": "shared_uid", "reason": "tasks run as root (--task-user root): nothing on the "
        "node separates a task from the agent or from other tasks"}
    per_task = choose_isolation(None, "61000-61009", euid=0, which=lambda _: "/bin/setpriv")
    assert per_task.spec() == {"mode": "per_task_uid",
                               "reason": "each task runs under its own uid from 61000-61009",
                               "task_uids": "61000-61009"}
    assert per_task.setpriv == "/bin/setpriv"


def test_bad_task_identities_are_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(IsolationError) as unknown:
        choose_isolation("no-such-user-xyz", None, euid=0, which=lambda _: "/bin/setpriv")
    assert str(unknown.value) == (
        "--task-user: no user 'no-such-user-xyz' on this host: create a dedicated "
        "unprivileged user and pass --task-user NAME (or --task-user root to run tasks as root)")
    with pytest.raises(IsolationError, match=r"^--task-user 0: that is root"):
        isolation.lookup_user("0")
    with pytest.raises(IsolationError, match=r"^--task-user and --task-uids: give one"):
        choose_isolation("nobody", "61000-61001", euid=0)
    for text in ("61000", "9-1", "100-200", "a-b"):
        with pytest.raises(IsolationError, match=r"^--task-uids"):
            parse_uid_range(text)
    assert parse_uid_range("61000-61002") == range(61000, 61003)
    monkeypatch.setattr(isolation, "SYSTEM_PATH", "/nonexistent")
    with pytest.raises(IsolationError, match=r"needs setpriv"):
        choose_isolation(None, None, euid=0, which=lambda _: None)


def test_a_directory_a_uid_cannot_search_is_named(reachable: Path) -> None:
    inner = reachable / "a" / "b"
    inner.mkdir(parents=True)
    for directory in (reachable / "a", inner):
        directory.chmod(0o711)
    assert unsearchable(inner, 4242, {4242}) is None
    (reachable / "a").chmod(0o700)
    assert unsearchable(inner, 4242, {4242}) == reachable / "a"
    (reachable / "a").chmod(0o710)
    os.chown(reachable / "a", os.getuid(), 4242)
    assert unsearchable(inner, 4242, {4242}) is None  # through its group


def test_the_sandbox_root_must_be_the_agents_alone(tmp_path: Path) -> None:
    shared = Isolation(IsolationMode.SHARED_UID, "test")
    make_sandbox_root(tmp_path / "deep" / "sandbox", shared)
    assert oct((tmp_path / "deep" / "sandbox").stat().st_mode & 0o777) == "0o700"
    squatted = tmp_path / "squatted"
    squatted.mkdir()
    squatted.chmod(0o777)
    with pytest.raises(IsolationError, match=r"no one else can write to$"):
        make_sandbox_root(squatted, shared)


def test_a_task_file_is_read_only_when_it_is_a_small_regular_file_of_the_task(
    tmp_path: Path
) -> None:
    (tmp_path / "usage.json").write_text('{"memory": 1}')
    assert read_task_file(tmp_path, "usage.json", 100, None) == b'{"memory": 1}'
    assert read_task_file(tmp_path, "usage.json", 100, os.getuid() + 1) is None
    assert read_task_file(tmp_path, "usage.json", 5, None) is None
    (tmp_path / "link.json").symlink_to(tmp_path / "usage.json")
    assert read_task_file(tmp_path, "link.json", 100, None) is None
    os.mkfifo(tmp_path / "fifo.json")
    assert read_task_file(tmp_path, "fifo.json", 100, None) is None  # and did not block
    assert read_task_file(tmp_path, "absent.json", 100, None) is None


# ---------------------------------------------------------------- as root, for real


PROBE = r"""
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name=yes"; else echo "$name=no"; fi; }
echo "uid=$(id -u) home=$HOME"
try list_sandboxes ls "$SANDBOXES"
try read_sibling_file cat "$SANDBOXES/$SIBLING/secret.txt"
try list_sibling ls "$SANDBOXES/$SIBLING"
try read_sibling_log cat "$RECORDS/$SIBLING/stdout.log"
try list_records ls "$RECORDS"
try read_agent_token cat "$WORK/agent.token"
try read_sibling_environ cat "/proc/$SIBLING_PID/environ"
try signal_sibling kill -0 "$SIBLING_PID"
try write_own_checkpoint touch "$APPORTION_CHECKPOINT_DIR/mine"
"""


def _child_named(pid: int | None, name: str) -> int | None:
    assert pid is not None
    try:
        return next((p.pid for p in psutil.Process(pid).children(recursive=True)
                     if p.name() == name), None)
    except psutil.Error:
        return None


def _processes_of(uid: int) -> list[int]:
    return [p.pid for p in psutil.process_iter(["uids", "status"])
            if p.info["uids"] and p.info["uids"].real == uid
            and p.info["status"] != psutil.STATUS_ZOMBIE]


@needs_root
def test_tasks_under_their_own_uids_cannot_reach_each_other_or_the_agent(
    reachable: Path
) -> None:
    iso = choose_isolation(None, "61700-61709")
    (reachable / "agent.token").write_text("apt_secret")
    (reachable / "agent.token").chmod(0o600)

    async def scenario() -> tuple[LocalTask, LocalTask, str]:
        h = Harness(reachable)
        h.runner = Runner(reachable, "n1", WATCHDOG, h.exits.append, isolation=iso)
        h.runner.open()
        victim = h.runner.prepare(assignment(
            ["sh", "-c", "echo private > secret.txt; echo victim-log-line; sleep 30"],
            task_id="victim"))
        h.runner.spawn(victim)
        assert victim.pid is not None
        await h.until(lambda: _child_named(victim.pid, "sleep") is not None)
        pid = _child_named(victim.pid, "sleep")
        env = {"SANDBOXES": str(reachable / "sandbox"), "RECORDS": str(reachable / "tasks"),
               "WORK": str(reachable), "SIBLING": "victim", "SIBLING_PID": str(pid)}
        prober = h.runner.prepare(assignment(
            ["env", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", PROBE],
            task_id="prober"))
        h.runner.spawn(prober)
        await h.until(lambda: any(t.id == "prober" for t in h.exits))
        out = (prober.dir / "stdout.log").read_text()
        h.runner.kill("victim")
        await h.until(lambda: len(h.exits) == 2)
        h.runner.close()
        return victim, prober, out

    victim, prober, out = asyncio.run(scenario())
    assert victim.identity is not None and prober.identity is not None
    assert (victim.identity.uid, prober.identity.uid) == (61700, 61701)
    assert out.splitlines() == [
        f"uid=61701 home={reachable}/sandbox/prober",
        "list_sandboxes=no", "read_sibling_file=no", "list_sibling=no", "read_sibling_log=no",
        "list_records=no", "read_agent_token=no", "read_sibling_environ=no",
        "signal_sibling=no", "write_own_checkpoint=yes"]
    sandbox = (reachable / "sandbox" / "victim").stat()
    assert (sandbox.st_uid, oct(sandbox.st_mode & 0o777)) == (61700, "0o700")
    assert oct((reachable / "sandbox").stat().st_mode & 0o777) == "0o711"


@needs_root
def test_what_a_task_leaves_running_under_its_uid_is_killed_before_the_uid_is_reused(
    reachable: Path
) -> None:
    iso = choose_isolation(None, "61710-61710")  # one uid: the next task must wait for it

    async def scenario() -> tuple[int, LocalTask]:
        h = Harness(reachable)
        h.runner = Runner(reachable, "n1", WATCHDOG, h.exits.append, isolation=iso)
        h.runner.open()
        # setsid: out of the task's process group, so only the uid sweep reaches it.
        first = h.runner.prepare(assignment(
            ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
            task_id="first"))
        h.runner.spawn(first)
        await h.until(lambda: bool(h.exits))
        orphan = int((first.dir / "stdout.log").read_text())
        h.runner.reported(first)
        await h.until(lambda: not psutil.pid_exists(orphan)
                      or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE)
        second = h.runner.prepare(assignment(["true"], task_id="second"))
        h.runner.spawn(second)
        await h.until(lambda: len(h.exits) == 2)
        h.runner.reported(second)
        # Nothing of either task (nor the sweep itself) is left under that uid.
        await h.until(lambda: not _processes_of(61710))
        h.runner.close()
        return orphan, second

    orphan, second = asyncio.run(scenario())
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    assert second.identity is not None and second.identity.uid == 61710
    assert not (reachable / "sandbox" / "first").exists()  # its files went with it


@contextlib.contextmanager
def throwaway_user() -> Iterator[str]:
    name = f"apt-test-{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@needs_root
@pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd")
def test_a_named_task_user_runs_every_task_with_its_groups_and_home(reachable: Path) -> None:
    with throwaway_user() as name:
        iso = choose_isolation(name, None)
        assert iso.user is not None

        async def scenario() -> str:
            h = Harness(reachable)
            h.runner = Runner(reachable, "n1", WATCHDOG, h.exits.append, isolation=iso)
            h.runner.open()
            task = h.runner.prepare(assignment(
                ["sh", "-c", 'echo "$(id -un) $(id -u) $(id -g) $HOME $USER"; umask'],
                task_id="named"))
            h.runner.spawn(task)
            await h.until(lambda: bool(h.exits))
            h.runner.close()
            return (task.dir / "stdout.log").read_text()

        out = asyncio.run(scenario())
        assert out == (f"{name} {iso.user.uid} {iso.user.gid} {reachable}/sandbox/named "
                       f"{name}\n0077\n")


@needs_root
def test_a_new_agent_adopts_a_running_task_with_its_uid_and_never_hands_that_uid_out(
    reachable: Path
) -> None:
    iso = choose_isolation(None, "61750-61759")

    async def first() -> None:
        h = Harness(reachable)
        h.runner = Runner(reachable, "n1", WATCHDOG, h.exits.append, isolation=iso)
        h.runner.open()
        h.runner.spawn(h.runner.prepare(assignment(["sleep", "30"], task_id="long")))
        # The agent dies here: no close, no reports; the task carries on.

    async def second() -> tuple[LocalTask, LocalTask]:
        h = Harness(reachable)
        h.runner = Runner(reachable, "n1", WATCHDOG, h.exits.append, isolation=iso)
        h.runner.open()
        adopted = h.runner.tasks["long"]
        fresh = h.runner.prepare(assignment(["true"], task_id="fresh"))
        h.runner.spawn(fresh)
        h.runner.kill("long")
        await h.until(lambda: len(h.exits) == 2)
        h.runner.close()
        return adopted, fresh

    asyncio.run(first())
    adopted, fresh = asyncio.run(second())
    assert adopted.identity is not None and fresh.identity is not None
    assert (adopted.state, adopted.identity.uid, fresh.identity.uid) == ("exited", 61750, 61751)
