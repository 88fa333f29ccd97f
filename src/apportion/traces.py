"""Read workload traces into simulator jobs: SWF, a simple JSONL/CSV format,
and the Philly GPU job log. This is the I/O half of ``apportion simulate``;
the replay itself is ``apportion.core.simulator``.

Every job a reader drops or changes is counted under a reason, so a result
says exactly what was replayed.

SWF replay rules (the Parallel Workloads Archive's, so results compare with
other simulators):

* processors = field 8 (requested) if positive, else field 5 (allocated);
* dropped: run time (field 4) <= 0 or unknown, no processors, or more
  processors than the machine;
* estimate = field 9 (requested time) if positive, else the actual run time
  (counted as a change);
* machine = ``MaxProcs`` if present, else ``MaxNodes``, with MaxProcs /
  MaxNodes processors per node; a P-processor job is a gang of P
  one-processor tasks; header values such as ``338 (batch partition; 512
  total)`` count by their leading integer;
* the tenant (queue) is ``queue-<n>`` from field 15 when recorded, else
  ``user-<n>`` from field 12, else ``default``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apportion.core.model import Device, Node
from apportion.core.resources import parse_vector
from apportion.core.scheduling.constraints import family, parse_constraints
from apportion.core.scheduling.jobs import Job, TaskSpec
from apportion.core.simulator import SimJob
from apportion.exceptions import ApportionError, InvalidInput

CPU_PER_PROC = 1000
"""One SWF processor is one core: 1000 millicores."""

DROP_RUNTIME = "run time 0 or unknown"
DROP_PROCS = "no processors"
DROP_TOO_BIG = "more processors than the machine"
DROP_BAD = "unparseable line"
CHANGE_ESTIMATE = "requested time unknown: actual run time used as the estimate"
CHANGE_SPLIT = "more GPUs than a node: split into a gang of per-node tasks"

PHILLY_GPUS_PER_NODE = 8
PHILLY_NODES = 300
"""Default Philly fleet when none is given: 300 nodes of 8 GPUs (2,400 GPUs).
An assumption of this tool, not a figure from the trace; pass --nodes and
--node-resources for another."""


@dataclass(slots=True)
class Trace:
    path: str
    format: str
    jobs: list[SimJob]
    nodes: list[Node]
    primary: str = "cpu"
    dropped: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    header: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain or gzip-compressed text."""
    p = Path(path)
    raw = p.open("rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def detect_format(path: str | Path) -> str:
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".swf"):
        return "swf"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        with open_text(path) as f:
            head = f.readline()
        if "num_gpus" in head and "timestamp" in head:
            return "philly"
        return "csv"
    with open_text(path) as f:
        first = f.readline()
    return "swf" if first.startswith(";") or re.match(r"^\s*\d", first) else "jsonl"


def read_trace(path: str | Path, fmt: str | None = None, limit: int | None = None) -> Trace:
    fmt = fmt or detect_format(path)
    if fmt == "swf":
        return read_swf(path, limit=limit)
    if fmt == "philly":
        return read_philly(path, limit=limit)
    if fmt in ("jsonl", "csv"):
        return read_jobs(path, fmt, limit=limit)
    raise InvalidInput(f"format: unknown {fmt!r}; use swf, jsonl, csv or philly", field="format")


# -- SWF ------------------------------------------------------------------------------


def leading_int(value: str) -> int | None:
    m = re.match(r"\s*(-?\d+)", value)
    return int(m.group(1)) if m else None


def read_swf(path: str | Path, limit: int | None = None,
             nodes: list[Node] | None = None) -> Trace:
    """Read an SWF log; ``nodes`` replaces the machine the header describes
    (jobs larger than it are then the ones dropped)."""
    header: dict[str, str] = {}
    rows: list[list[str]] = []
    bad = 0
    with open_text(path) as f:
        for line in f:
            if line.startswith(";"):
                key, sep, value = line[1:].partition(":")
                if sep and key.strip():
                    header.setdefault(key.strip(), value.strip())
                continue
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 18:
                bad += 1
                continue
            rows.append(parts)
            if limit is not None and len(rows) >= limit:
                break
    max_procs = leading_int(header.get("MaxProcs", "")) or None
    max_nodes = leading_int(header.get("MaxNodes", "")) or None
    trace = Trace(str(path), "swf", [], [], header=header)
    if bad:
        trace.dropped[DROP_BAD] += bad
    machine = max_procs or max_nodes
    if nodes is not None:
        machine = sum(n.resources.get("cpu", 0) for n in nodes) // CPU_PER_PROC
    elif machine is None:
        machine = max((_procs(r) for r in rows), default=0)
        trace.notes.append(f"no MaxProcs/MaxNodes in the header: machine size {machine} "
                           "taken from the largest job")
    per_node = max_procs // max_nodes if max_procs and max_nodes and (
        max_procs % max_nodes == 0) else 1
    trace.nodes = nodes if nodes is not None else swf_nodes(machine, per_node)
    for parts in rows:
        sj = _swf_job(parts, machine, trace)
        if sj is not None:
            trace.jobs.append(sj)
    return trace


def swf_nodes(processors: int, per_node: int = 1) -> list[Node]:
    count = max(1, processors // per_node)
    width = len(str(count))
    return [Node(f"n{i:0{width}d}", {"cpu": per_node * CPU_PER_PROC}) for i in range(count)]


def _procs(parts: list[str]) -> int:
    req = int(float(parts[7]))
    return req if req > 0 else int(float(parts[4]))


def _swf_job(parts: list[str], machine: int, trace: Trace) -> SimJob | None:
    try:
        job_id = parts[0]
        submit = float(parts[1])
        wait = float(parts[2])
        run = float(parts[3])
        procs = _procs(parts)
        req_time = float(parts[8])
        user = int(float(parts[11]))
        exe = int(float(parts[13]))
        queue_no = int(float(parts[14]))
    except ValueError:
        trace.dropped[DROP_BAD] += 1
        return None
    if run <= 0:
        trace.dropped[DROP_RUNTIME] += 1
        return None
    if procs <= 0:
        trace.dropped[DROP_PROCS] += 1
        return None
    if procs > machine:
        trace.dropped[DROP_TOO_BIG] += 1
        return None
    given = req_time > 0
    if not given:
        trace.changed[CHANGE_ESTIMATE] += 1
    queue = f"queue-{queue_no}" if queue_no >= 0 else (f"user-{user}" if user >= 0 else "default")
    job = Job(
        job_id,
        (TaskSpec({"cpu": CPU_PER_PROC}, procs),),
        queue=queue,
        submit_time=submit,
        gang=procs > 1,
        runtime_estimate=req_time if given else run,
        user=f"u{user}" if user >= 0 else None,
        name=f"x{exe}" if exe >= 0 else None,
    )
    return SimJob(job, run, given, wait if wait >= 0 else None)


# -- Philly ---------------------------------------------------------------------------


def read_philly(path: str | Path, limit: int | None = None,
                gpus_per_node: int = PHILLY_GPUS_PER_NODE) -> Trace:
    trace = Trace(str(path), "philly", [], philly_nodes(PHILLY_NODES, gpus_per_node),
                  primary="gpu")
    trace.notes.append(f"default fleet: {PHILLY_NODES} nodes x {gpus_per_node} GPUs "
                       "(an assumption; set --nodes/--node-resources)")
    with open_text(path) as f:
        rows = list(csv.DictReader(f))
    parsed = []
    for row in rows:
        try:
            when = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            parsed.append((when.timestamp(), float(row["duration"]), int(float(row["num_gpus"])),
                           row.get("cluster") or "default"))
        except (KeyError, ValueError):
            trace.dropped[DROP_BAD] += 1
    parsed.sort(key=lambda p: p[0])
    if limit is not None:
        parsed = parsed[:limit]
    origin = parsed[0][0] if parsed else 0.0
    for n, (ts, duration, gpus, tenant) in enumerate(parsed):
        if duration <= 0:
            trace.dropped[DROP_RUNTIME] += 1
            continue
        if gpus <= 0:
            trace.dropped[DROP_PROCS] += 1
            continue
        tasks = _split_gpus(gpus, gpus_per_node)
        if len(tasks) > 1:
            trace.changed[CHANGE_SPLIT] += 1
        trace.changed[CHANGE_ESTIMATE] += 1
        job = Job(f"p{n}", tasks, queue=tenant, submit_time=ts - origin, gang=True,
                  runtime_estimate=duration)
        trace.jobs.append(SimJob(job, duration, False))
    return trace


def philly_nodes(count: int, gpus: int) -> list[Node]:
    width = len(str(count))
    return [
        Node(f"g{i:0{width}d}", {"gpu": gpus},
             devices={"gpu": tuple(Device(f"GPU-{k}") for k in range(gpus))})
        for i in range(count)
    ]


def _split_gpus(gpus: int, per_node: int) -> tuple[TaskSpec, ...]:
    if gpus <= per_node:
        return (TaskSpec({"gpu": gpus}),)
    full, rest = divmod(gpus, per_node)
    specs = [TaskSpec({"gpu": per_node}, full)]
    if rest:
        specs.append(TaskSpec({"gpu": rest}))
    return tuple(specs)


# -- JSONL / CSV ------------------------------------------------------------------------

_JOB_FIELDS = {
    "id", "submit", "run_time", "tasks", "resources", "queue", "priority", "user", "name",
    "estimate", "deadline", "constraints", "gang", "preemptible",
}


def read_jobs(path: str | Path, fmt: str, limit: int | None = None) -> Trace:
    """The simple job format: one job per JSONL line or CSV row.

    Fields: ``id``, ``submit`` (s), ``run_time`` (s), ``tasks`` (count, 1),
    ``resources`` (per task: JSON object, or in CSV either a ``resources``
    column ``cpu=2;memory=4Gi;gpu=1`` or one column per resource ``cpu``,
    ``memory``, ``gpu``...), ``queue``, ``priority``, ``user``, ``name``,
    ``estimate`` (s), ``deadline`` (s, on the trace's clock), ``constraints``
    (``gpu.model in (A100,H100)``), ``gang`` (true when tasks > 1 unless
    false), ``preemptible``. A JSONL line ``{"nodes": [{"count": 4,
    "resources": {...}, "labels": {...}, "gpu_model": "A100",
    "gpu_memory": "80Gi"}]}`` describes the cluster.
    """
    trace = Trace(str(path), fmt, [], [])
    with open_text(path) as f:
        records = _jsonl_records(f, trace) if fmt == "jsonl" else _csv_records(f)
        for n, rec in enumerate(records):
            if limit is not None and len(trace.jobs) >= limit:
                break
            try:
                sjs = _job_from_record(rec, n, trace)
            except (ApportionError, ValueError, TypeError, KeyError):
                trace.dropped[DROP_BAD] += 1
                continue
            trace.jobs.extend(sjs)
    if any("gpu" in sj.job.total for sj in trace.jobs):
        trace.primary = "gpu"
    return trace


def _jsonl_records(lines: Iterable[str], trace: Trace) -> Iterator[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            trace.dropped[DROP_BAD] += 1
            continue
        if isinstance(rec, dict) and "nodes" in rec and "run_time" not in rec:
            trace.nodes.extend(nodes_from_spec(rec["nodes"]))
            continue
        if isinstance(rec, dict):
            yield rec
        else:
            trace.dropped[DROP_BAD] += 1


def _csv_records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for row in csv.DictReader(lines):
        rec: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
        if "resources" in rec:
            rec["resources"] = dict(
                part.split("=", 1) for part in str(rec["resources"]).split(";") if "=" in part
            )
        else:
            rec["resources"] = {k: v for k, v in rec.items() if k not in _JOB_FIELDS}
        yield rec


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)


def _job_from_record(rec: Mapping[str, Any], n: int, trace: Trace) -> list[SimJob]:
    run = float(rec["run_time"])
    if not run > 0:
        trace.dropped[DROP_RUNTIME] += 1
        return []
    resources = parse_vector(rec.get("resources") or {})
    if not resources:
        trace.dropped[DROP_PROCS] += 1
        return []
    count = int(rec.get("tasks", 1))
    raw_estimate = rec.get("estimate")
    estimate = float(raw_estimate) if raw_estimate not in (None, "") else 0.0
    given = estimate > 0
    if not given:
        trace.changed[CHANGE_ESTIMATE] += 1
    families = {family(r) for r in resources}
    job = Job(
        str(rec.get("id", n)),
        (TaskSpec(resources, count),),
        queue=str(rec.get("queue", "default")),
        priority=int(rec.get("priority", 0)),
        submit_time=float(rec.get("submit", 0.0)),
        constraints=parse_constraints(str(rec.get("constraints", "")), families),
        gang=_flag(rec["gang"]) if "gang" in rec else count > 1,
        preemptible=_flag(rec.get("preemptible", False)),
        deadline=float(rec["deadline"]) if rec.get("deadline") not in (None, "") else None,
        runtime_estimate=estimate if given else run,
        name=str(rec["name"]) if rec.get("name") not in (None, "") else None,
        user=str(rec["user"]) if rec.get("user") not in (None, "") else None,
    )
    # A bag of independent tasks is replayed as independent jobs.
    return [SimJob(unit, run, given) for unit in job.units()]


def nodes_from_spec(groups: Iterable[Mapping[str, Any]], prefix: str = "n") -> list[Node]:
    """Nodes from ``[{"count": 4, "resources": {...}, "labels": {...},
    "gpu_model": "A100", "gpu_memory": "80Gi", "shares": 0}]``."""
    nodes: list[Node] = []
    for g, group in enumerate(groups):
        resources = parse_vector(group.get("resources") or {})
        labels = {str(k): str(v) for k, v in (group.get("labels") or {}).items()}
        for _ in range(int(group.get("count", 1))):
            name = f"{prefix}{g}-{len(nodes):05d}"
            nodes.append(_node_with_devices(name, resources, labels, group))
    return nodes


def _node_with_devices(name: str, resources: dict[str, int], labels: dict[str, str],
                       group: Mapping[str, Any]) -> Node:
    gpus = resources.get("gpu", 0)
    if not gpus:
        return Node(name, resources, labels=labels)
    model = group.get("gpu_model")
    memory = group.get("gpu_memory")
    mem = parse_vector({"memory": memory})["memory"] if memory else None
    devices = tuple(Device(f"GPU-{k}", model, mem) for k in range(gpus))
    return Node(name, resources, devices={"gpu": devices}, labels=labels)


def uniform_nodes(count: int, resources: Mapping[str, object], prefix: str = "n") -> list[Node]:
    """``count`` identical nodes, for ``--nodes N --node-resources cpu=...``."""
    vec = parse_vector(resources, field="node-resources")
    width = len(str(count))
    out = []
    for i in range(count):
        name = f"{prefix}{i:0{width}d}"
        out.append(_node_with_devices(name, vec, {}, {}))
    return out


def parse_resources_text(text: str) -> dict[str, str]:
    """``cpu=4,memory=16Gi,gpu=8`` -> mapping (for the CLI)."""
    out: dict[str, str] = {}
    for part in re.split(r"[,;]", text):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(f"node-resources: {part!r} is not name=quantity",
                               field="node-resources")
        out[key.strip()] = value.strip()
    return out


def machine_processors(trace: Trace) -> int:
    return sum(n.resources.get("cpu", 0) for n in trace.nodes) // CPU_PER_PROC


__all__ = [
    "CHANGE_ESTIMATE",
    "DROP_PROCS",
    "DROP_RUNTIME",
    "DROP_TOO_BIG",
    "Trace",
    "detect_format",
    "read_jobs",
    "read_philly",
    "read_swf",
    "read_trace",
    "uniform_nodes",
]
