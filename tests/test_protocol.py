"""The agent wire models, defined once (issue 12): what the server renders is
what the agent reads, with the keys the wire has always had."""

from __future__ import annotations

import subprocess
import sys

from apportion.protocol import Assignment, DesiredState, Stop, TaskUpdate
from apportion.server.schemas import TaskReportIn

ASSIGNMENT_KEYS = ["id", "job_id", "index", "attempt", "allocation_id", "state", "created_at",
                   "command", "resources", "resources_base", "devices", "device_info",
                   "stop_signal", "stop_grace_s", "stop", "array", "resume"]


def _assignment(**extra: object) -> Assignment:
    return Assignment("t-1", "j-1", 2, 1, "a-1", ("sleep", "1"), {"memory": "1Gi"},
                      {"memory": 1 << 30}, {"gpu": ["0"]},
                      {"gpu": [{"id": "0", "uuid": "GPU-1", "model": "H100", "memory": 80}]},
                      "SIGINT", 3.0, state="running", created_at=12.5, **extra)  # type: ignore[arg-type]


def test_an_assignment_goes_over_the_wire_and_back() -> None:
    a = _assignment(stop=Stop("preempted", "drained"), resume_task="t-0", array=4)
    wire = a.to_wire()
    assert list(wire) == ASSIGNMENT_KEYS
    assert wire["stop"] == {"state": "preempted", "reason": "drained"}
    assert wire["resume"] == {"task_id": "t-0"}
    assert Assignment.from_wire(wire) == a


def test_an_assignment_without_stop_resume_or_array() -> None:
    wire = _assignment().to_wire()
    assert (wire["stop"], wire["resume"], wire["array"]) == (None, None, None)
    assert Assignment.from_wire(wire) == _assignment()
    # A stop without its reason reads as its state (as servers before sent it).
    wire["stop"] = {"state": "cancelled", "reason": None}
    assert Assignment.from_wire(wire).stop == Stop("cancelled", "cancelled")


def test_the_desired_state_over_the_wire() -> None:
    state = DesiredState("e1", 7, "ready", 2, (_assignment(),))
    wire = state.to_wire()
    assert list(wire) == ["epoch", "seq", "node_state", "rescan", "tasks"]
    assert DesiredState.from_wire(wire) == state


def test_a_task_update_says_only_what_its_state_has() -> None:
    assert TaskUpdate("running", {"started_at": 1.0}).to_wire() == {
        "state": "running", "times": {"started_at": 1.0}}
    exit_ = TaskUpdate("exited", {"started_at": 1.0}, 3, False, True, False, "oom",
                       {"memory": 5.0}, checkpoint=True)
    wire = exit_.to_wire()
    assert list(wire) == ["state", "exit_code", "signalled", "memory_exceeded", "lost",
                          "reason", "times", "usage", "checkpoint"]
    assert TaskUpdate.from_wire(wire) == exit_
    # Every key the agent sends is one the server reads.
    assert set(wire) <= set(TaskReportIn.model_fields)


def test_the_protocol_is_a_leaf() -> None:
    code = ("import sys, apportion.protocol; "
            "print(sorted(m for m in sys.modules if m.startswith(('apportion.', 'pydantic', "
            "'httpx'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['apportion.protocol']"
