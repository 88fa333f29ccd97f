"""Trace readers: SWF replay rules, the simple job format, Philly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from apportion.traces import (
    CHANGE_ESTIMATE,
    DROP_PROCS,
    DROP_RUNTIME,
    DROP_TOO_BIG,
    detect_format,
    leading_int,
    read_trace,
)

TRACES = Path(__file__).parents[1] / "../shared/data/traces"

SWF = """\
; Version: 2.2
; MaxNodes: 3
; MaxProcs: 338 (batch partition; 512 total)
1 0 7 100 4 -1 -1 6 200 -1 1 12 12 3 -1 -1 -1 -1
2 5 -1 0 2 -1 -1 2 200 -1 1 12 12 3 -1 -1 -1 -1
3 6 -1 10 0 -1 -1 -1 200 -1 1 12 12 3 -1 -1 -1 -1
4 7 -1 10 400 -1 -1 400 200 -1 1 12 12 3 -1 -1 -1 -1
5 8 -1 10 3 -1 -1 -1 -1 -1 1 -1 12 -1 2 -1 -1 -1
6 9 -1 -1 3 -1 -1 3 10 -1 1 4 4 -1 -1 -1 -1 -1
"""


def test_leading_int() -> None:
    assert leading_int("338 (batch partition; 512 total)") == 338
    assert leading_int("  100") == 100
    assert leading_int("n/a") is None


def test_swf_replay_rules(tmp_path: Path) -> None:
    path = tmp_path / "log.swf.gz"
    with gzip.open(path, "wt") as f:
        f.write(SWF)
    trace = read_trace(path)
    assert trace.format == "swf"
    # MaxProcs 338 over MaxNodes 3 does not divide: one processor per node.
    assert len(trace.nodes) == 338
    assert trace.nodes[0].resources == {"cpu": 1000}
    assert [sj.job.id for sj in trace.jobs] == ["1", "5"]
    first = trace.jobs[0]
    assert first.job.task_count == 6  # field 8 (requested) wins over field 5
    assert first.job.gang and first.job.runtime_estimate == 200.0
    assert first.real_wait == 7.0 and first.run_time == 100.0
    assert first.job.queue == "user-12" and first.job.user == "u12" and first.job.name == "x3"
    fifth = trace.jobs[1]
    assert fifth.job.task_count == 3  # field 5 when field 8 is unknown
    assert fifth.job.runtime_estimate == 10.0 and not fifth.estimate_given
    assert fifth.job.queue == "queue-2"
    assert dict(trace.dropped) == {DROP_RUNTIME: 2, DROP_PROCS: 1, DROP_TOO_BIG: 1}
    assert dict(trace.changed) == {CHANGE_ESTIMATE: 1}


def test_swf_processors_per_node(tmp_path: Path) -> None:
    path = tmp_path / "x.swf"
    path.write_text("; MaxNodes: 2\n; MaxProcs: 8\n"
                    "1 0 -1 10 8 -1 -1 8 10 -1 1 1 1 -1 -1 -1 -1 -1\n")
    trace = read_trace(path)
    assert [n.resources for n in trace.nodes] == [{"cpu": 4000}, {"cpu": 4000}]
    assert trace.jobs[0].job.total == {"cpu": 8000}


def test_jsonl_jobs_with_cluster_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"nodes": [{"count": 2, "resources": {"cpu": "8", "memory": "64Gi", "gpu": 4},
                    "gpu_model": "A100", "gpu_memory": "40Gi"}]},
        {"id": "a", "submit": 0, "run_time": 60, "resources": {"cpu": "2", "gpu": 2},
         "constraints": "gpu.model in (A100,H100)", "queue": "ml", "estimate": 90},
        {"id": "b", "submit": 5, "run_time": 30, "tasks": 2, "gang": False,
         "resources": {"cpu": "500m"}},
        {"id": "c", "submit": 6, "run_time": 0, "resources": {"cpu": 1}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    trace = read_trace(path)
    assert trace.format == "jsonl" and trace.primary == "gpu"
    assert len(trace.nodes) == 2 and trace.nodes[0].devices["gpu"][0].model == "A100"
    assert [sj.job.id for sj in trace.jobs] == ["a", "b#0", "b#1"]
    a = trace.jobs[0].job
    assert a.total == {"cpu": 2000, "gpu": 2} and a.queue == "ml"
    assert [str(d) for d in a.constraints.devices] == ["gpu.model in (A100,H100)"]
    assert trace.dropped == {DROP_RUNTIME: 1, "unparseable line": 1}


def test_csv_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,submit,run_time,cpu,memory,queue\n"
                    "1,0,10,2,4Gi,a\n2,3,20,1,1Gi,b\n")
    trace = read_trace(path)
    assert trace.format == "csv"
    assert [sj.job.total for sj in trace.jobs] == [{"cpu": 2000, "memory": 4 * 2**30},
                                                  {"cpu": 1000, "memory": 2**30}]


def test_philly_format(tmp_path: Path) -> None:
    path = tmp_path / "philly.csv"
    path.write_text("timestamp,duration,num_gpus,gpu_time,cluster\n"
                    "2017-10-09 07:01:55,66.0,1,66.0,t1\n"
                    "2017-10-09 07:00:55,100.0,16,1600.0,t2\n"
                    "2017-10-09 07:02:00,0.0,1,0.0,t1\n")
    assert detect_format(path) == "philly"
    trace = read_trace(path)
    assert [(sj.job.submit_time, sj.job.queue) for sj in trace.jobs] == [(0.0, "t2"),
                                                                        (60.0, "t1")]
    gang = trace.jobs[0].job
    assert gang.gang and [(t.resources, t.count) for t in gang.tasks] == [({"gpu": 8}, 2)]
    assert trace.dropped == {DROP_RUNTIME: 1}


def test_real_logs_parse_with_the_documented_counts() -> None:
    if not TRACES.exists():
        pytest.skip(f"real traces not found at {TRACES.resolve()}")
    kth = read_trace(TRACES / "KTH-SP2-1996-2.1-cln.swf.gz")
    assert (len(kth.jobs), kth.dropped_total, len(kth.nodes)) == (27992, 0, 100)
    lublin = read_trace(TRACES / "lublin_256.swf.gz", limit=100)
    assert len(lublin.nodes) == 256
    assert lublin.changed == {CHANGE_ESTIMATE: 100}
