"""The task record as a journal of JSON lines: what a reader makes of it
after a crash at any byte, after a torn line, and when an older agent wrote
it as one document; and a runner restarted over such records."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.agent import record
from apportion.agent.limits import LimitMode, LimitSupport
from apportion.agent.protocol import SHIM, Assignment, record_of
from apportion.agent.runner import LocalTask, Runner

WATCHDOG = LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test")

values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=8),
                   st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2))
changes = st.dictionaries(st.sampled_from(["pid", "state", "times", "report", "exit_code"]),
                          values, min_size=1, max_size=4)


def _lines(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


@settings(max_examples=300, deadline=None)
@given(first=changes, later=st.lists(changes, max_size=4), data=st.data())
def test_a_crash_at_any_byte_leaves_the_record_of_the_lines_written_whole(
    first: dict[str, Any], later: list[dict[str, Any]], data: st.DataObject
) -> None:
    whole = _lines([first, *later])
    cut = whole[:data.draw(st.integers(0, len(whole)))]
    ends = [i + 1 for i, b in enumerate(whole) if b == ord("\n")]
    # A line whose closing brace was written is whole, newline or not.
    written = [line for line, end in zip([first, *later], ends, strict=True)
               if end - 1 <= len(cut)]
    if not written:
        with pytest.raises(ValueError):
            record.parse(cut)
        return
    expected: dict[str, Any] = {}
    for line in written:
        expected.update(line)
    assert record.parse(cut) == expected


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_one_stands_alone(
    tmp_path: Path
) -> None:
    record.create(tmp_path, {"assignment": {}, "state": "prepared"})
    with (tmp_path / record.RECORD).open("ab") as fh:
        fh.write(b'{"state":"running","pid":12')  # the machine went down here
    assert record.read(tmp_path) == {"assignment": {}, "state": "prepared"}
    record.append(tmp_path, {"state": "exited"})
    assert record.read(tmp_path) == {"assignment": {}, "state": "exited"}
    assert (tmp_path / record.RECORD).read_bytes().count(b"\n") == 3


def test_the_shims_exit_line_stands_alone_after_a_torn_line(tmp_path: Path) -> None:
    """A write cut short while the agent runs on (a full disk) leaves no
    newline; the shim's line, which starts with one, is still read."""
    record.create(tmp_path, {"assignment": {}, "state": "prepared"})
    with (tmp_path / record.RECORD).open("ab") as fh:
        fh.write(b'\n{"state":"runn')
    subprocess.run(["/bin/sh", "-c", SHIM, "shim", "", str(tmp_path / record.RECORD),
                    "/bin/sh", "-c", "exit 5"], check=False)
    assert record.read(tmp_path) == {"assignment": {}, "state": "prepared", "exit_code": 5}


def test_the_record_an_older_agent_wrote_as_one_document_reads_and_takes_lines(
    tmp_path: Path
) -> None:
    (tmp_path / record.RECORD).write_text(json.dumps({"assignment": {}, "pid": 7}))
    assert record.read(tmp_path) == {"assignment": {}, "pid": 7}
    record.append(tmp_path, {"pid": 8})
    assert record.read(tmp_path) == {"assignment": {}, "pid": 8}


def test_a_record_is_created_once(tmp_path: Path) -> None:
    record.create(tmp_path, {"assignment": {}})
    with pytest.raises(FileExistsError):
        record.create(tmp_path, {"assignment": {}})
    assert oct((tmp_path / record.RECORD).stat().st_mode & 0o777) == "0o600"


def _assignment(task_id: str) -> Assignment:
    return Assignment(task_id, "j-1", 0, 1, "alloc-1", ("true",), {"cpu": "1"},
                      {"cpu": 1000}, {})


def _reopen(work_dir: Path) -> tuple[list[LocalTask], Runner]:
    async def scenario() -> tuple[list[LocalTask], Runner]:
        runner = Runner(work_dir, "n1", WATCHDOG, lambda _task: None)
        ended = runner.open()
        runner.close()
        return ended, runner

    return asyncio.run(scenario())


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid, 0.0


def test_a_restarted_agent_finishes_each_step_a_crash_interrupted(tmp_path: Path) -> None:
    """Crashes after prepare, after the start (the shim's exit line and
    not the agent's), and in the middle of the agent's exit line."""
    tasks = tmp_path / "tasks"
    pid, started = _dead_pid()
    base: dict[str, Any] = {"sandbox": None, "uid": None, "gid": None, "state": "prepared",
                            "pid": None, "report": None, "times": {"received_at": 1.0}}
    running: dict[str, Any] = {"pid": pid, "create_time": started, "state": "running",
                               "times": {"received_at": 1.0, "started_at": 2.0}}
    steps: dict[str, list[dict[str, Any]]] = {"prepared": [base],
             "ran": [base, running, {"exit_code": 3}],
             "torn": [base, running, {"exit_code": 4}]}
    for task_id, lines in steps.items():
        (tasks / task_id).mkdir(parents=True)
        first = {"assignment": record_of(_assignment(task_id)), **lines[0]}
        (tasks / task_id / record.RECORD).write_bytes(_lines([first, *lines[1:]]))
    with (tasks / "torn" / record.RECORD).open("ab") as fh:
        fh.write(b'{"pid":%d,"state":"exited","report":{"state":"ex' % pid)

    ended, _ = _reopen(tmp_path)
    found = {t.id: (t.exit_code, t.reason) for t in ended}
    assert found == {"prepared": (None, "the agent stopped before the task started"),
                     "ran": (3, None), "torn": (4, None)}
    # What the restarted agent learnt is in the record now, for the next one.
    for task_id, (code, reason) in found.items():
        saved = record.read(tasks / task_id)["report"]
        assert (saved["exit_code"], saved["reason"]) == (code, reason)
    again, _ = _reopen(tmp_path)
    assert {t.id: (t.exit_code, t.reason) for t in again} == found


def test_a_task_an_older_agent_started_is_recovered_from_its_record_and_exit_file(
    tmp_path: Path
) -> None:
    task_dir = tmp_path / "tasks" / "old"
    task_dir.mkdir(parents=True)
    pid, started = _dead_pid()
    (task_dir / record.RECORD).write_text(json.dumps({
        "assignment": record_of(_assignment("old")), "pid": pid, "create_time": started,
        "state": "running", "cgroup": None, "report": None, "times": {"started_at": 2.0},
        "signalled": False, "lost": False, "stop_state": None, "sandbox": None,
        "uid": None, "gid": None}))
    (task_dir / "exit_code").write_text("7\n")
    ended, _ = _reopen(tmp_path)
    assert [(t.id, t.exit_code) for t in ended] == [("old", 7)]
    assert record.read(task_dir)["report"]["exit_code"] == 7
