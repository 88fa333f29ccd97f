"""A task's sandbox and logs handed on to the next task (``task_dirs.py``,
``spares.py``): a task run on what an earlier task left sees and leaves
the same as one run on new directories and files; only what is empty, the
agent's own and held by no process is handed on; what a task wrote stays."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest

from apportion.agent import spares
from apportion.agent.config import AgentConfig
from apportion.agent.limits import LimitMode, LimitSupport
from apportion.agent.local_task import LocalTask
from apportion.agent.main import Agent
from apportion.agent.protocol import Assignment, TaskUpdate
from apportion.agent.runner import Runner
from apportion.agent.spares import Spares, bare_sandbox, empty_own_log, idle_empty_log
from support import wait_until

WATCHDOG = LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test")

# Commands whose whole outcome the tests compare: what they print, exit
# with, see of their directories and leave behind.
COMMANDS = [
    ["true"],
    ["sh", "-c", "exit 3"],
    ["sh", "-c", "echo out; echo err >&2"],
    ["sh", "-c", "echo only-err >&2; exit 1"],
    ["sh", "-c", 'pwd; ls -A; ls -A "$APPORTION_CHECKPOINT_DIR"; umask; touch left'],
    ["sh", "-c", 'stat -c %a . "$APPORTION_CHECKPOINT_DIR"; echo 1 >"$APPORTION_CHECKPOINT_DIR/f"'],
    ["sh", "-c", "readlink /proc/$$/fd/1 /proc/$$/fd/2"],
    ["/no/such/program"],
]


def _assignment(command: list[str], task_id: str) -> Assignment:
    return Assignment(task_id, "j-" + task_id, 0, 1, "a-" + task_id, tuple(command),
                      {"cpu": "1"}, {"cpu": 1000}, {})


class _Harness:
    def __init__(self, work_dir: Path) -> None:
        self.exits: list[LocalTask] = []
        self.runner = Runner(work_dir, "n1", WATCHDOG, self.exits.append)
        # These tests run without cgroups: the hand-on itself is under test.
        self.runner.dirs.sandbox_needs_cgroup = False
        self.work_dir = work_dir

    async def run(self, command: list[str], task_id: str) -> LocalTask:
        before = len(self.exits)
        task = self.runner.prepare(_assignment(command, task_id))
        self.runner.spawn(task)
        await wait_until("the task's exit", lambda: len(self.exits) > before, 60.0)
        return self.exits[-1]


def _outcome(task: LocalTask, root: Path) -> dict[str, Any]:
    """What a task saw and left, with its own directory names made alike."""

    def text(path: Path) -> str | None:
        return path.read_text().replace(task.id, "ID").replace(str(root), "ROOT") \
            if path.exists() else None

    sandbox = task.sandbox
    assert sandbox is not None
    return {"exit": task.exit_code, "stdout": text(task.dir / "stdout.log"),
            "stderr": text(task.dir / "stderr.log"),
            "modes": {p.name: oct(p.stat().st_mode & 0o777)
                      for p in [task.dir, *task.dir.iterdir()]},
            "left": sorted(p.name for p in sandbox.iterdir())}


def _compare(root: Path, recycled: bool) -> tuple[list[dict[str, Any]], int]:
    """Each command's outcome on a fresh runner, after ``true`` tasks left
    their sandboxes and logs to be handed on (``recycled``) or not; and how
    many of the commands' sandboxes and logs an earlier task had."""

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        h = _Harness(root)
        h.runner.open()
        warm: set[int] = set()
        if recycled:  # as many at once as there are commands: as many spares
            started = [h.runner.prepare(_assignment(["true"], f"warm{i}"))
                       for i in range(len(COMMANDS))]
            for task in started:
                h.runner.spawn(task)
            await wait_until("the warm tasks' exits", lambda: len(h.exits) == len(started), 60.0)
            for task in started:
                assert task.sandbox is not None
                warm.update(p.stat().st_ino for p in (
                    task.sandbox, task.dir / "stdout.log", task.dir / "stderr.log"))
                h.runner.reported(task)
        outcomes, reused = [], 0
        for i, command in enumerate(COMMANDS):
            task = h.runner.prepare(_assignment(command, f"t{i}"))
            assert task.sandbox is not None
            reused += task.sandbox.stat().st_ino in warm
            h.runner.spawn(task)
            await wait_until(f"{task.id}'s exit",
                             lambda t=task: bool(h.exits) and h.exits[-1] is t, 60.0)
            logs = [(task.dir / f"{s}.log").stat().st_ino for s in ("stdout", "stderr")]
            reused += sum(inode in warm for inode in logs)
            if recycled:  # what this one leaves may be the next one's
                warm.update([task.sandbox.stat().st_ino, *logs])
            outcomes.append(_outcome(task, root))
            h.runner.reported(task)
        h.runner.close()
        return outcomes, reused

    return asyncio.run(scenario())


def test_tasks_on_handed_on_sandboxes_and_logs_see_and_leave_what_new_ones_do(
    tmp_path: Path
) -> None:
    fresh, none = _compare(tmp_path / "fresh", recycled=False)
    reused, handed_on = _compare(tmp_path / "reused", recycled=True)
    for i, (new, old) in enumerate(zip(reused, fresh, strict=True)):
        assert new == old, COMMANDS[i]
    # Every command ran on an earlier task's sandbox and logs.
    assert (none, handed_on) == (0, 3 * len(COMMANDS))
    assert list((tmp_path / "reused" / "sandbox" / spares.SANDBOX_SPARE_DIR).iterdir()) != []


def test_a_short_tasks_sandbox_and_logs_are_the_next_tasks(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = _Harness(tmp_path)
        h.runner.open()
        first = await h.run(["true"], "first")
        assert first.sandbox is not None
        inodes = _inodes(first)
        record = (first.dir / "task.json").stat().st_ino
        h.runner.reported(first)
        h.runner.reported(first)  # said twice (a resent exit): nothing more
        # Its record stays (the task is known: never run twice, and its exit
        # can be sent again), its logs and its empty sandbox went on.
        done = tmp_path / "tasks" / ".done" / "first.json"
        assert done.stat().st_ino == record and not first.dir.exists()
        assert not first.sandbox.exists() and h.runner.known("first")
        assert h.runner.dirs.record_of("first")["report"]["exit_code"] == 0
        again = Runner(tmp_path, "n1", WATCHDOG, h.exits.append)
        assert again.open() == [] and again.known("first")  # a restarted agent leaves it be
        again.close()
        second = await h.run(["sh", "-c", "echo hello"], "second")
        assert second.sandbox is not None
        assert _inodes(second) == inodes
        assert (second.dir / "stdout.log").read_text() == "hello\n"
        h.runner.reported(second)
        # What it wrote stays with its records: only the empty log goes on.
        assert sorted(p.name for p in second.dir.iterdir()) == [
            "reported", "stdout.log", "task.json"]
        assert (second.dir / "stdout.log").read_text() == "hello\n"
        h.runner.close()

    asyncio.run(scenario())


def _inodes(task: LocalTask) -> tuple[int, int, int, set[int]]:
    """The inodes of a task's sandbox, checkpoint directory, records'
    directory and logs."""
    assert task.sandbox is not None
    return (task.sandbox.stat().st_ino, task.checkpoint_dir.stat().st_ino,
            task.dir.stat().st_ino,
            {(task.dir / f"{s}.log").stat().st_ino for s in ("stdout", "stderr")})


def test_a_sandbox_with_files_stays_and_only_its_empty_checkpoint_goes_on(
    tmp_path: Path
) -> None:
    h = _Harness(tmp_path)

    async def scenario() -> None:
        h.runner.open()
        task = await h.run(["sh", "-c", "echo 1 > result"], "t1")
        assert task.sandbox is not None
        checkpoint = task.checkpoint_dir.stat().st_ino
        h.runner.reported(task)
        assert sorted(p.name for p in task.sandbox.iterdir()) == ["result"]
        after = await h.run(["true"], "t2")
        assert after.checkpoint_dir.stat().st_ino == checkpoint
        h.runner.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="needs setsid")
def test_a_log_a_process_left_behind_still_holds_is_not_handed_on(tmp_path: Path) -> None:
    """A process that left the task's group with the log as its output
    would write into the next task's log: that log stays where it is."""

    async def scenario() -> tuple[int, LocalTask]:
        h = _Harness(tmp_path)
        h.runner.open()
        first = await h.run(
            ["sh", "-c", "setsid sh -c 'echo $$ > pid; exec sleep 1000' 2>/dev/null & "
                         "while [ ! -s pid ]; do sleep 0.01; done"], "first")
        assert first.sandbox is not None
        orphan = psutil.Process(int((first.sandbox / "pid").read_text()))
        assert str(first.dir / "stdout.log") in _fd_targets(orphan)
        h.runner.reported(first)
        second = await h.run(["true"], "second")
        return orphan.pid, second

    orphan, second = asyncio.run(scenario())
    try:
        first_dir = tmp_path / "tasks" / "first"
        assert (first_dir / "stdout.log").exists()  # held: stays
        assert not (first_dir / "stderr.log").exists()  # not held (2>/dev/null): went on
        assert (second.dir / "stdout.log").stat().st_ino \
            != (first_dir / "stdout.log").stat().st_ino
    finally:
        os.killpg(orphan, signal.SIGKILL)


def _fd_targets(proc: psutil.Process) -> str:
    try:
        return " ".join(f.path for f in proc.open_files())
    except psutil.Error:
        return ""


def test_only_a_bare_sandbox_of_ours_is_handed_on(tmp_path: Path) -> None:
    def sandbox(name: str) -> Path:
        path = tmp_path / name
        (path / "checkpoint").mkdir(parents=True, mode=0o700)
        path.chmod(0o700)
        return path

    assert bare_sandbox(sandbox("bare"))
    (sandbox("file") / "left").write_text("x")
    (sandbox("saved") / "checkpoint" / "state").write_text("x")
    sandbox("loose").chmod(0o755)
    os.chmod(sandbox("loose-checkpoint") / "checkpoint", 0o755)
    (tmp_path / "nocheckpoint").mkdir(mode=0o700)
    sandbox("linked-target")
    (tmp_path / "linked").symlink_to(tmp_path / "linked-target")
    linked_checkpoint = tmp_path / "linked-checkpoint"
    linked_checkpoint.mkdir(mode=0o700)
    (linked_checkpoint / "checkpoint").symlink_to(sandbox("other") / "checkpoint")
    for name in ("file", "saved", "loose", "loose-checkpoint", "nocheckpoint", "linked",
                 "linked-checkpoint"):
        assert not bare_sandbox(tmp_path / name), name
    assert not bare_sandbox(tmp_path / "bare", os.geteuid() + 1)  # not the given uid's


def test_only_an_empty_log_of_ours_that_no_one_holds_is_handed_on(tmp_path: Path) -> None:
    def log(name: str, mode: int = 0o600) -> Path:
        path = tmp_path / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        os.chmod(path, mode)
        return path

    good = log("good")
    assert idle_empty_log(good) and empty_own_log(good)
    log("written").write_text("x")
    log("open").chmod(0o600)
    log("loose", 0o644)
    os.link(log("linked"), tmp_path / "second-name")
    (tmp_path / "symlink").symlink_to(good)
    (tmp_path / "dir").mkdir(mode=0o700)
    held = os.open(tmp_path / "open", os.O_WRONLY | os.O_APPEND)
    try:
        assert empty_own_log(tmp_path / "open") and not idle_empty_log(tmp_path / "open")
        for name in ("written", "loose", "linked", "symlink", "dir", "missing"):
            assert not idle_empty_log(tmp_path / name), name
            assert not empty_own_log(tmp_path / name), name
    finally:
        os.close(held)
    assert idle_empty_log(tmp_path / "open")  # let go


def test_a_spare_never_replaces_what_is_in_its_place(tmp_path: Path) -> None:
    pool = Spares(tmp_path, name=spares.LOG_SPARE_DIR, check=idle_empty_log,
                    recheck=empty_own_log)
    pool.load()
    path = tmp_path / "a.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    assert pool.put(path, "a")
    there = tmp_path / "b.log"
    there.write_text("written")
    assert not pool.take(there)
    assert there.read_text() == "written" and len(pool.free) == 1
    # A spare written to while it waited is removed, not handed on.
    (tmp_path / spares.LOG_SPARE_DIR / "a").write_text("late")
    assert not pool.take(tmp_path / "c.log")
    assert not (tmp_path / "c.log").exists() and pool.free == []
    assert stat.S_ISDIR(os.lstat(tmp_path / spares.LOG_SPARE_DIR).st_mode)


def test_an_exit_asked_for_again_is_read_from_the_kept_record(tmp_path: Path) -> None:
    """The server lists a task this node reported (it missed the answer):
    the agent sends the same exit again from the record, wherever it is
    kept, and never runs the task again."""
    config = AgentConfig("http://server", "t0ken", "n1", tmp_path / "work", fence=False)
    agent = Agent(config, nvml=None)
    sent: list[tuple[str, TaskUpdate]] = []
    agent._queue = lambda task_id, body: sent.append((task_id, body))  # type: ignore[method-assign]

    async def scenario() -> list[LocalTask]:
        exits: list[LocalTask] = []
        agent.runner = Runner(config.work_dir, "n1", WATCHDOG, exits.append)
        agent.runner.open()
        tasks = [agent.runner.prepare(_assignment(command, task_id)) for command, task_id in (
            (["sh", "-c", "exit 4"], "quiet"), (["sh", "-c", "echo hi; exit 5"], "loud"))]
        for task in tasks:
            agent.runner.spawn(task)
        await wait_until("both exits", lambda: len(exits) == 2, 60.0)
        for task in tasks:
            agent.runner.reported(task)
        return tasks

    quiet, loud = asyncio.run(scenario())
    assert not quiet.dir.exists() and loud.dir.exists()  # one went on, one kept its log
    assert agent.runner is not None
    for task in (quiet, loud):
        assert agent.runner.known(task.id)
        agent._resend(task.assignment)
    assert [(task_id, body.exit_code) for task_id, body in sent] == [("quiet", 4), ("loud", 5)]
    assert sent[0][1] == quiet.report()


def test_without_a_cgroup_a_sandbox_stays_and_only_the_logs_go_on(tmp_path: Path) -> None:
    """A task that ran outside a cgroup may have left a process in a new
    session, with the sandbox as its working directory: the sandbox is not
    handed on (the next task gets a new one), while its idle logs are."""

    async def scenario() -> tuple[LocalTask, LocalTask]:
        exits: list[LocalTask] = []
        runner = Runner(tmp_path, "n1", WATCHDOG, exits.append)
        runner.open()
        tasks = []
        for task_id in ("first", "second"):
            task = runner.prepare(_assignment(["true"], task_id))
            runner.spawn(task)
            await wait_until(f"{task_id}'s exit", lambda n=len(tasks) + 1: len(exits) == n, 60.0)
            runner.reported(task)
            tasks.append(task)
        runner.close()
        return tasks[0], tasks[1]

    first, second = asyncio.run(scenario())
    assert first.cgroup is None
    assert first.sandbox is not None and second.sandbox is not None
    assert not (tmp_path / "sandbox" / spares.SANDBOX_SPARE_DIR).exists() or \
        list((tmp_path / "sandbox" / spares.SANDBOX_SPARE_DIR).iterdir()) == []
    assert first.sandbox.exists()  # left where it was, as before the hand-on
