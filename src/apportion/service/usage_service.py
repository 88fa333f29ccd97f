"""Learned resource requests: past task usage in, predictions out.

Agents report what each task used when it exits; the jobs service stores it
(``task_usage``, in the transaction that ends the task). This service reads
those records back for ``core.predict.predict``:

- ``predict`` answers ``GET /api/v1/predictions/{name}`` and ``apportion
  predict``: the estimate per key, its tier (``model``, ``robust``,
  ``request`` or ``default``), confidence, sample count and notes (a value
  raised to what the job used before says so).
- ``fill_auto`` turns a job spec whose ``resources`` is ``"auto"`` (or has
  ``"auto"`` for ``cpu`` or ``memory``) into a concrete one at submission and
  records the prediction in the spec (``spec.prediction``), so the job shows
  what was filled in and why.

A record's user is the job's owner (its token's name), or ``queue:<name>``
for a job without an owner. Only tasks that succeeded or failed count: a
cancelled or preempted run says little about how long a whole run takes.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from apportion.core.predict import Prediction, UsageRecord, predict
from apportion.core.records import UsageRow
from apportion.core.resources import format_quantity, parse_vector
from apportion.exceptions import InvalidInput
from apportion.service.job_specs import parse_duration
from apportion.store.usage_tables import count_usage, load_usage

AUTO = "auto"
AUTO_RESOURCES = ("cpu", "memory")
COUNTED_STATES = ("succeeded", "failed")
MIN_CPU_MILLIS = 100
MIB = 1 << 20
HISTORY_LIMIT = 5000


def user_of(owner: str | None, queue: str) -> str:
    return owner or f"queue:{queue}"


def record_of(row: UsageRow) -> UsageRecord:
    return UsageRecord(row.name, user_of(row.owner, row.queue), row.command, row.requested,
                       row.used, row.finished_at)


def display(key: str, value: int) -> str:
    """A predicted amount as a person reads it."""
    if key in ("memory", "gpu_memory"):
        # Rounded up to whole MiB: "6477Mi" reads better than 6791417037.
        return format_quantity("memory", math.ceil(value / MIB) * MIB)
    if key == "runtime_s":
        return f"{value}s"
    if key == "cpu_seconds":
        return f"{value} cpu-s"
    if key == "gpu_util":
        return f"{value}%"
    return str(value)


def wants_prediction(spec: Mapping[str, Any]) -> bool:
    """Whether a job spec asks for predicted resources (``"auto"``)."""
    resources = spec.get("resources")
    return resources == AUTO or (isinstance(resources, dict) and AUTO in resources.values())


@dataclass
class UsageService:
    engine: sa.Engine

    def records(self, name: str, user: str) -> list[UsageRecord]:
        owner = None if user.startswith("queue:") else user
        with self.engine.connect() as conn:
            rows = load_usage(conn, name=name, owner=owner, states=COUNTED_STATES,
                              limit=HISTORY_LIMIT)
        return [record_of(r) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return count_usage(conn)

    def predict(self, name: str, user: str, *, command: str | None = None,
                requested: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The prediction for a job called ``name`` of ``user``, as the API shows it."""
        if not name:
            raise InvalidInput("name: give the job's name", field="name")
        history = self.records(name, user)
        prediction = predict(history, name=name, user=user, command=command,
                             requested=dict(requested or {}))
        return render_prediction(prediction, history, name=name, user=user, command=command)

    def fill_auto(self, spec: dict[str, Any], owner: str | None) -> dict[str, Any]:
        """``spec`` with ``"auto"`` resources replaced by predicted amounts and
        the prediction recorded in ``spec["prediction"]``; unchanged without any."""
        resources = spec.get("resources")
        if resources == AUTO:
            given: dict[str, Any] = {}
            wanted = list(AUTO_RESOURCES)
        elif isinstance(resources, dict) and AUTO in resources.values():
            given = {k: v for k, v in resources.items() if v != AUTO}
            wanted = [k for k, v in resources.items() if v == AUTO]
            for key in wanted:
                if key not in AUTO_RESOURCES:
                    raise InvalidInput(
                        f"resources.{key}: only cpu and memory can be 'auto' (a device count "
                        "is a choice, not a measurement)", field=f"resources.{key}")
        else:
            return spec
        if spec.get("tasks"):
            raise InvalidInput("resources: 'auto' applies to the resources shorthand, not to "
                               "tasks", field="resources")
        command = spec.get("command")
        name = spec.get("name") or (os.path.basename(command[0]) if command else None)
        if not name:
            raise InvalidInput("name: a job with 'auto' resources needs a name or a command; "
                               "past runs are looked up by name", field="name")
        asked = parse_vector(given, "resources")
        user = user_of(owner, str(spec.get("queue") or "default"))
        command_text = shlex.join(command) if command else None
        runtime = parse_duration(spec.get("runtime_estimate"), "runtime_estimate")
        requested = dict(asked)
        if runtime is not None:
            requested["runtime_s"] = math.ceil(runtime)
        history = self.records(name, user)
        p = predict(history, name=name, user=user, command=command_text, requested=requested)
        filled: dict[str, str] = {}
        out = dict(given)
        if "memory" in wanted:
            out["memory"] = filled["memory"] = display("memory", max(1, p.values["memory"]))
        if "cpu" in wanted:
            seconds = max(1, p.values["runtime_s"])
            millis = math.ceil(p.values["cpu_seconds"] / seconds * 1000 / 100) * 100
            out["cpu"] = filled["cpu"] = format_quantity("cpu", max(MIN_CPU_MILLIS, millis))
        updated = dict(spec)
        updated["resources"] = out
        if runtime is None:
            updated["runtime_estimate"] = p.values["runtime_s"]
            filled["runtime_estimate"] = f"{p.values['runtime_s']}s"
        body = render_prediction(p, history, name=name, user=user, command=command_text)
        updated["prediction"] = {
            "filled": filled, "tier": body["tier"], "confidence": body["confidence"],
            "samples": body["samples"], "values": body["values"], "notes": body["notes"],
            "basis": {k: d["basis"] for k, d in body["detail"].items()},
        }
        return updated


def render_prediction(p: Prediction, history: list[UsageRecord], *, name: str, user: str,
                      command: str | None) -> dict[str, Any]:
    mine = [r for r in history if r.name == name and r.user == user
            and (command is None or r.command == command)]
    detail = {}
    for key, d in p.detail.items():
        used = [r.used[key] for r in mine if key in r.used]
        detail[key] = {
            "value": d.value, "display": display(key, d.value), "tier": d.tier,
            "samples": d.samples, "basis": d.basis, "confidence": round(d.confidence, 4),
            "max_used_before": max(used) if used else None,
        }
    return {
        "name": name, "user": user, "command": command,
        "tier": p.tier, "confidence": round(p.confidence, 4), "samples": p.samples,
        "values": {k: display(k, v) for k, v in p.values.items()},
        "values_base": dict(p.values),
        "detail": detail,
        "notes": list(p.notes),
        "records": {"matching": len(mine), "considered": len(history)},
    }
