"""The agent's local side without a server: the task environment, starting,
stopping and watching real processes, memory kills, adopting processes
after an agent restart, and the fence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from apportion.agent import fence, limits, record
from apportion.agent.limits import LimitMode, LimitSupport
from apportion.agent.protocol import Assignment, devices_json, task_env, visible_devices
from apportion.agent.runner import LocalTask, Runner

WATCHDOG = LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test")


def assignment(command: list[str], *, task_id: str = "t1", memory: int | None = None,
               gpus: list[dict[str, Any]] | None = None, **extra: Any) -> Assignment:
    base: dict[str, int] = {"cpu": 1000}
    if memory:
        base["memory"] = memory
    devices = {"gpu": [g["id"] for g in gpus]} if gpus else {}
    return Assignment(task_id, "j-1", 0, 1, "alloc-1", tuple(command), {"cpu": "1"}, base,
                      devices, {"gpu": gpus} if gpus else {}, **extra)


def test_the_task_environment_names_its_grant_and_hides_the_agents_settings(
    tmp_path: Path
) -> None:
    gpus = [{"id": "0", "uuid": "GPU-aaa", "model": "H100", "memory": 80 << 30},
            {"id": "3", "uuid": "GPU-ddd", "model": "H100", "memory": 80 << 30}]
    a = assignment(["true"], gpus=gpus)
    env = task_env(a, "n1", tmp_path, tmp_path / "ckpt", None,
                   base={"PATH": "/bin", "APPORTION_TOKEN": "secret", "HOME": "/root"})
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-ddd"
    assert json.loads(env["APPORTION_DEVICES"]) == {"gpu": [
        {"id": "0", "uuid": "GPU-aaa", "model": "H100", "memory": "80Gi"},
        {"id": "3", "uuid": "GPU-ddd", "model": "H100", "memory": "80Gi"}]}
    assert json.loads(env["APPORTION_RESOURCES"]) == {"cpu": "1"}
    assert (env["APPORTION_JOB_ID"], env["APPORTION_TASK_ID"], env["APPORTION_ALLOCATION_ID"]) \
        == ("j-1", "t1", "alloc-1")
    assert env["APPORTION_CHECKPOINT_DIR"] == str(tmp_path / "ckpt")
    assert env["APPORTION_USAGE_FILE"] == str(tmp_path / "usage.json")
    assert "APPORTION_TOKEN" not in env and "APPORTION_RESUME_FROM" not in env
    assert env["PATH"] == "/bin"
    resumed = task_env(a, "n1", tmp_path, tmp_path / "ckpt", tmp_path / "resume", base={})
    assert resumed["APPORTION_RESUME_FROM"] == str(tmp_path / "resume")


def test_gpus_without_uuids_are_named_by_index_and_no_gpu_hides_them_all() -> None:
    declared = assignment(["true"], gpus=[{"id": "0"}, {"id": "1"}])
    assert visible_devices(declared) == "0,1"
    assert json.loads(devices_json(declared)) == {"gpu": [{"id": "0"}, {"id": "1"}]}
    assert visible_devices(assignment(["true"])) == ""


class Harness:
    """A runner on a real event loop, collecting the exits it reports."""

    def __init__(self, work_dir: Path, **kwargs: Any) -> None:
        self.exits: list[LocalTask] = []
        self.runner = Runner(work_dir, "n1", WATCHDOG, self.exits.append, **kwargs)

    async def until(self, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)


def _descendants(pid: int | None) -> list[str]:
    """The names of a process's descendants (the task may run under a
    launcher, so its shell is not always the pid the runner knows)."""
    names = []
    try:
        for child in psutil.Process(pid).children(recursive=True) if pid else []:
            with contextlib.suppress(psutil.Error):
                names.append(child.name())
    except psutil.Error:
        pass
    return names


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_task_runs_in_its_directory_with_its_logs_and_its_exit_code_is_kept(
    tmp_path: Path
) -> None:
    async def scenario() -> LocalTask:
        h = Harness(tmp_path)
        h.runner.open()
        task = h.runner.prepare(assignment(
            ["sh", "-c", "pwd; echo oops >&2; touch here; exit 3"]))
        h.runner.spawn(task)
        await h.until(lambda: bool(h.exits))
        h.runner.close()
        return h.exits[0]

    task = run(scenario())
    assert (task.exit_code, task.signalled, task.memory_exceeded) == (3, False, False)
    assert task.sandbox == tmp_path / "sandbox" / "t1"
    assert (task.dir / "stdout.log").read_text() == f"{tmp_path}/sandbox/t1\n"
    assert (task.dir / "stderr.log").read_text() == "oops\n"
    assert (tmp_path / "sandbox" / "t1" / "here").exists()
    assert record.read(task.dir)["exit_code"] == 3  # the shim's line in the record
    # The agent's records and the logs are the agent's alone.
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in task.dir.iterdir()} == {
        "task.json": "0o600", "stdout.log": "0o600", "stderr.log": "0o600"}
    assert oct(task.dir.stat().st_mode & 0o777) == "0o700"
    assert task.times["started_at"] <= task.times["exited_at"]
    assert task.report().exit_code == 3


class _Unread(dict[str, str]):
    """An environment that fails the test when it is read."""

    def items(self) -> Any:
        raise AssertionError("os.environ read after the runner was made")

    __iter__ = keys = values = items


def test_a_task_starts_with_the_agents_environment_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task's environment starts from the agent's as the runner read
    it when made, less the agent's own settings: ``os.environ`` is not read
    again for each task (it decodes every name and value each time)."""
    monkeypatch.setenv("APPORTION_TOKEN", "secret")
    monkeypatch.setenv("AGENT_SETTING", "kept")

    async def scenario() -> list[str]:
        h = Harness(tmp_path)
        h.runner.open()
        monkeypatch.setattr(os, "environ", _Unread(os.environ))
        for i in range(2):
            h.runner.spawn(h.runner.prepare(assignment(
                ["sh", "-c", 'echo "$AGENT_SETTING ${APPORTION_TOKEN:-none}"'],
                task_id=f"t{i}")))
        await h.until(lambda: len(h.exits) == 2)
        h.runner.close()
        return [(t.dir / "stdout.log").read_text() for t in h.exits]

    assert run(scenario()) == ["kept none\n"] * 2


def test_a_missing_command_fails_with_127_and_the_runner_never_runs_a_task_twice(
    tmp_path: Path
) -> None:
    async def scenario() -> tuple[LocalTask, bool]:
        h = Harness(tmp_path)
        h.runner.open()
        task = h.runner.prepare(assignment(["/no/such/program"]))
        h.runner.spawn(task)
        await h.until(lambda: bool(h.exits))
        h.runner.reported(task)
        h.runner.reported(task)  # said twice (a resent exit): still one mark
        return h.exits[0], h.runner.known(task.id)

    task, known = run(scenario())
    assert task.exit_code == 127
    assert known  # the directory stays: listed again, it is reported, not run again
    # The mark is a second name for the record (a link, not a new inode), and
    # an agent started again over the same records leaves the task alone.
    assert (task.dir / "reported").stat().st_ino == (task.dir / "task.json").stat().st_ino

    async def restarted() -> list[LocalTask]:
        return Harness(tmp_path).runner.open()

    assert run(restarted()) == []


def test_a_reported_task_leaves_no_checkpoint_and_its_empty_directory_is_the_next_ones(
    tmp_path: Path
) -> None:
    async def scenario() -> list[LocalTask]:
        h = Harness(tmp_path)
        h.runner.open()
        saved = h.runner.prepare(assignment(
            ["sh", "-c", 'mkdir "$APPORTION_CHECKPOINT_DIR/step" && echo 7 > '
                         '"$APPORTION_CHECKPOINT_DIR/step/n"'], task_id="saved"))
        empty = h.runner.prepare(assignment(["true"], task_id="empty"))
        for task in (saved, empty):
            h.runner.spawn(task)
        await h.until(lambda: len(h.exits) == 2)
        assert (saved.checkpoint_dir / "step" / "n").read_text() == "7\n"
        inode = empty.checkpoint_dir.stat().st_ino
        for task in (saved, empty):
            h.runner.reported(task)
        # Making and removing a directory cost more than moving one (spares.py).
        after = h.runner.prepare(assignment(["true"], task_id="after"))
        assert after.checkpoint_dir.stat().st_ino == inode
        assert list(after.checkpoint_dir.iterdir()) == []
        return [saved, empty]

    saved, empty = run(scenario())
    assert (saved.checkpoint_dir.exists(), empty.checkpoint_dir.exists()) == (False, False)


def test_stop_sends_the_signal_then_kills_the_group_after_the_grace(tmp_path: Path) -> None:
    async def scenario() -> list[LocalTask]:
        h = Harness(tmp_path)
        h.runner.open()
        polite = h.runner.prepare(assignment(["sleep", "30"], task_id="polite"))
        stubborn = h.runner.prepare(assignment(
            ["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"], task_id="stubborn"))
        for task in (polite, stubborn):
            h.runner.spawn(task)
        # The shell has set its trap once its first sleep runs.
        await h.until(lambda: "sleep" in _descendants(stubborn.pid))
        h.runner.stop("polite", "SIGTERM", 5.0, state="preempted")
        h.runner.stop("stubborn", "TERM", 0.5, state="cancelled")
        await h.until(lambda: len(h.exits) == 2)
        return sorted(h.exits, key=lambda t: t.id)

    polite, stubborn = run(scenario())
    assert (polite.exit_code, polite.signalled, polite.stop_state) == (143, True, "preempted")
    assert stubborn.exit_code == 137 and stubborn.signalled
    assert stubborn.times["exited_at"] - stubborn.times["signal_at"] >= 0.45
    # Nothing of either task survives: the whole process group was killed
    # (orphans take a moment to be reaped by init).
    for task in (polite, stubborn):
        assert task.pid is not None
        deadline = time.monotonic() + 5
        while _group_alive(task.pid):
            assert time.monotonic() < deadline, f"group of {task.id} survived"
            time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def test_a_task_over_its_memory_grant_is_killed_and_marked(tmp_path: Path) -> None:
    hog = ("b = bytearray(200 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
           "import time; time.sleep(30)")

    async def scenario() -> LocalTask:
        h = Harness(tmp_path, watchdog_s=0.05)
        h.runner.open()
        task = h.runner.prepare(assignment([sys.executable, "-c", hog], memory=50 << 20))
        h.runner.spawn(task)
        await h.until(lambda: bool(h.exits), timeout=30)
        h.runner.close()
        return h.exits[0]

    task = run(scenario())
    assert task.memory_exceeded and task.exit_code == 137
    assert task.reason is not None and "memory limit exceeded" in task.reason
    # The watchdog (no cgroup v2) says it in units a person reads, not in bytes.
    assert re.fullmatch(r"memory limit exceeded( \(cgroup OOM kill\)|: \d+(\.\d)?Mi resident, "
                        r"limit 50Mi)", task.reason), task.reason


def test_a_new_runner_adopts_running_tasks_and_learns_how_the_others_ended(
    tmp_path: Path
) -> None:
    async def first() -> None:
        h = Harness(tmp_path)
        h.runner.open()
        for task_id, command in (("long", "sleep 1; exit 5"), ("short", "exit 4")):
            task = h.runner.prepare(assignment(["sh", "-c", command], task_id=task_id))
            h.runner.spawn(task)
        await asyncio.sleep(0.3)
        # The agent dies here: no close, no reports; the processes carry on.

    async def second() -> tuple[list[str], list[LocalTask]]:
        h = Harness(tmp_path)
        ended = h.runner.open()
        running = [t.id for t in h.runner.running()]
        await h.until(lambda: bool(h.exits))
        h.runner.close()
        return running, [*ended, *h.exits]

    run(first())
    running, ended = run(second())
    assert running == ["long"]
    assert {t.id: t.exit_code for t in ended} == {"short": 4, "long": 5}


def test_the_fence_kills_a_dead_agents_tasks_once_the_server_was_away_too_long(
    tmp_path: Path
) -> None:
    task_dir = tmp_path / "tasks" / "t1"
    task_dir.mkdir(parents=True)
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    agent = subprocess.Popen(["sleep", "30"])
    try:
        (task_dir / "task.json").write_text(json.dumps(
            {"pid": victim.pid, "create_time": psutil.Process(victim.pid).create_time()}))
        (tmp_path / fence.AGENT_PID_FILE).write_text(f"{agent.pid} 0")
        (tmp_path / fence.CONTACT_FILE).write_text(str(time.time()))
        agent.kill()
        agent.wait()
        started = time.monotonic()
        assert fence.watch(tmp_path, agent.pid, None, 0.5) == 0
        assert time.monotonic() - started >= 0.3
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        for proc in (victim, agent):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_fence_steps_aside_for_a_new_agent(tmp_path: Path) -> None:
    (tmp_path / fence.AGENT_PID_FILE).write_text(f"{os.getpid()} 0")
    assert fence.watch(tmp_path, 1, None, 60) == 0  # another pid owns the directory now


def test_the_fence_also_empties_and_removes_a_dead_agents_task_cgroups(tmp_path: Path) -> None:
    parent = limits.own_cgroup()
    if isinstance(parent, str) or not os.access(parent, os.W_OK):
        pytest.skip(f"no writable cgroup v2 here: {parent}")
    cgroup = limits.create_tracking_cgroup("fence-test", parent=parent)
    task_dir = tmp_path / "tasks" / "t1"
    task_dir.mkdir(parents=True)
    # Escaped from its process group: only the cgroup still holds it.
    escaped = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs; exec sleep 30"],
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while str(escaped.pid) not in (cgroup / "cgroup.procs").read_text().split():
            assert time.monotonic() < deadline, "the process never entered its cgroup"
            time.sleep(0.02)
        (task_dir / "task.json").write_text(json.dumps({"pid": None, "cgroup": str(cgroup)}))
        assert fence.kill_tasks(tmp_path) == []
        assert escaped.wait(5) == -signal.SIGKILL
        assert not cgroup.exists()
    finally:
        if escaped.poll() is None:
            escaped.kill()
        fence.remove_cgroup(cgroup)
