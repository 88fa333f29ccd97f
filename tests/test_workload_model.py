"""The Lublin-Feitelson model with Tsafrir's estimates: seeded, and readable
by the SWF reader."""

from __future__ import annotations

from pathlib import Path

from apportion.traces import read_trace
from apportion.workload_model import MAX_ESTIMATE, ModelJob, generate, main


def test_the_same_seed_gives_the_same_log() -> None:
    assert generate(3, 64, seed=3) == [
        ModelJob(138.0, 104.0, 1, 900.0),
        ModelJob(2194.0, 16018.0, 1, 21600.0),
        ModelJob(2283.0, 10772.0, 8, 86400.0),
    ]
    assert generate(50, 64, seed=3) != generate(50, 64, seed=4)


def test_estimates_are_kill_limits_and_the_load_is_as_asked() -> None:
    jobs = generate(2000, 128, seed=7, load=0.6)
    assert all(j.run <= j.estimate <= MAX_ESTIMATE and 1 <= j.size <= 128 for j in jobs)
    work = sum(j.run * j.size for j in jobs)
    assert abs(work / (128 * jobs[-1].submit) - 0.6) < 0.01


def test_users_rerun_their_previous_job() -> None:
    jobs = generate(6, 64, seed=3, users=3)
    assert [j.user for j in jobs] == [0, 0, 1, 2, 1, 2]
    # The second job is user 0's first one again, with a run time near it.
    assert (jobs[1].size, jobs[1].estimate, jobs[1].run) == (1, 900.0, 86.0)


def test_the_written_log_replays(tmp_path: Path) -> None:
    out = tmp_path / "model.swf"
    main(["--jobs", "40", "--processors", "32", "--users", "4", "--seed", "2",
          "--out", str(out)])
    trace = read_trace(out)
    assert len(trace.jobs) == 40 and not trace.dropped and not trace.changed
    assert len(trace.nodes) == 32
    assert {sj.job.user for sj in trace.jobs} <= {"u0", "u1", "u2", "u3"}
