"""Learned resource requests: tiers by history size, the basis key, the
floor at what a job used before, the cap at its request, and trace replay."""

from __future__ import annotations

import numpy as np
import pytest

from apportion.core.predict import (
    DEFAULT_USAGE,
    TraceJob,
    UsageRecord,
    predict,
    quantile_regression,
    runtime_estimates,
)
from apportion.exceptions import InvalidInput

GiB = 1 << 30
REQ = {"cpu": 2000, "memory": 16 * GiB, "runtime_s": 7200}
CMD = "python train.py"


def runs(
    n: int, *, name: str = "train", user: str = "ann", command: str = CMD
) -> list[UsageRecord]:
    """Run i used (4 + i % 5) GiB, 1000 + 100 i seconds, 500 i cpu-seconds."""
    return [
        UsageRecord(
            name,
            user,
            command,
            REQ,
            {"memory": (4 + i % 5) * GiB, "runtime_s": 1000 + 100 * i, "cpu_seconds": 500 * i},
            float(i),
        )
        for i in range(n)
    ]


def test_no_history_uses_the_request_and_implies_cpu_seconds() -> None:
    p = predict([], name="train", user="ann", command=CMD, requested=REQ)
    # cpu_seconds: 2 cores (2000 millicores) busy for the requested 7200 s.
    assert p.values == {"memory": 16 * GiB, "cpu_seconds": 14400, "runtime_s": 7200}
    assert (p.tier, p.samples, p.confidence, p.notes) == ("request", 0, 0.5, ())


def test_four_runs_are_still_the_request_tier_but_inform_confidence() -> None:
    p = predict(runs(4), name="train", user="ann", command=CMD, requested=REQ)
    assert p.tier == "request" and p.samples == 4
    assert p.values["runtime_s"] == 7200
    assert p.confidence == pytest.approx(5 / 6)  # all 4 runs were within the request


def test_no_history_and_no_request_falls_back_to_defaults() -> None:
    p = predict([], name="x", user="bob", requested={"gpu": 1})
    assert p.values == {
        "memory": DEFAULT_USAGE["memory"],
        "cpu_seconds": DEFAULT_USAGE["cpu_seconds"],
        "runtime_s": DEFAULT_USAGE["runtime_s"],
        "gpu_memory": 0,
    }
    assert p.tier == "default" and p.samples == 0


def test_five_runs_give_the_robust_tier_p95_plus_margin() -> None:
    p = predict(runs(5), name="train", user="ann", command=CMD, requested=REQ)
    assert p.tier == "robust" and p.samples == 5
    # p95 of 1000..1400 is 1380, +10 % = 1518; of 4..8 GiB 7.8 GiB, +10 %.
    assert p.values == {"memory": 9212704850, "cpu_seconds": 2090, "runtime_s": 1518}
    assert p.detail["runtime_s"].basis == "name+user+command"
    assert p.confidence == pytest.approx(6 / 7)
    assert p.notes == ()


def test_thirty_runs_give_the_model_tier() -> None:
    p = predict(runs(30), name="train", user="ann", command=CMD, requested=REQ)
    assert p.tier == "model" and p.samples == 30
    # Every run asked the same, so the model is a plain p95: 3800 s, +10 %.
    assert p.values["runtime_s"] == 4180
    assert p.values["memory"] == pytest.approx(8 * GiB * 1.1, rel=1e-4)
    assert p.confidence == pytest.approx(31 / 32)


def test_the_model_follows_the_requested_features_within_the_seen_range() -> None:
    history = [
        UsageRecord(
            "sim", "bob", None, {"runtime_s": 600 * (1 + i % 8)},
            {"runtime_s": 300 * (1 + i % 8) + (37 * i) % 60}, float(i),
        )
        for i in range(40)
    ]

    def at(asked: int) -> int:
        p = predict(history, name="sim", user="bob", requested={"runtime_s": asked},
                    keys=("runtime_s",), clamp_to_max_used=False)
        assert p.tier == "model"
        return p.values["runtime_s"]

    assert at(600) < at(2400) < at(4800)
    assert at(20_000) == at(4800)  # no extrapolation past what was ever used
    assert (at(600), at(2400), at(4800)) == (392, 1406, 2661)


def test_a_prediction_below_the_most_used_is_raised_with_a_note() -> None:
    history = [
        UsageRecord("etl", "cy", None, {}, {"runtime_s": r}, float(i))
        for i, r in enumerate([100, 100, 100, 100, 100, 1000])
    ]
    kw = {"name": "etl", "user": "cy", "keys": ("runtime_s",), "quantile": 0.5, "margin": 0.0}
    p = predict(history, **kw)  # type: ignore[arg-type]
    assert p.values == {"runtime_s": 1000}
    assert p.notes == ("runtime_s: raised from 100s to 1000s, the most this job used in 6 "
                       "earlier run(s)",)
    q = predict(history, clamp_to_max_used=False, **kw)  # type: ignore[arg-type]
    assert q.values == {"runtime_s": 100}
    assert q.notes == ("runtime_s: 100s is below the 1000s this job used in one of 6 "
                       "earlier run(s)",)


def test_the_request_is_the_ceiling_even_below_the_most_used() -> None:
    history = [UsageRecord("long", "di", None, {}, {"runtime_s": 8000}, float(i)) for i in range(5)]
    p = predict(history, name="long", user="di", requested={"runtime_s": 7200},
                keys=("runtime_s",))
    assert p.values == {"runtime_s": 7200}
    assert p.notes == (
        "runtime_s: 8800s capped at the request 7200s (the job is stopped there)",
        "runtime_s: kept at the request 7200s, although this job used up to 8000s in 5 "
        "earlier run(s)",
    )


def test_memory_is_never_raised_above_the_request_and_notes_read_in_units() -> None:
    history = [UsageRecord("fit", "ed", None, {"memory": 2 * GiB}, {"memory": 3632151950},
                           float(i)) for i in range(5)]
    p = predict(history, name="fit", user="ed", requested={"memory": 2 * GiB},
                keys=("memory",))
    assert p.values == {"memory": 2 * GiB}
    assert p.notes == (
        "memory: 3.7Gi capped at the request 2Gi (the job is stopped there)",
        "memory: kept at the request 2Gi, although this job used up to 3.4Gi in 5 "
        "earlier run(s)",
    )


def test_one_short_run_predicts_from_that_run_not_the_default_hour() -> None:
    history = [UsageRecord("quick", "fay", None, {}, {"runtime_s": 31}, 1.0)]
    p = predict(history, name="quick", user="fay", keys=("runtime_s",))
    assert p.values == {"runtime_s": 35}  # 31 s plus the 10 % margin, rounded up
    assert (p.tier, p.samples) == ("few_runs", 1)
    assert p.notes == ("runtime_s: 35s, the most 1 earlier run(s) used plus 10% "
                       "(statistics need 5 runs)",)
    asked = predict(history, name="quick", user="fay", keys=("runtime_s",),
                    requested={"runtime_s": 600})
    assert (asked.values, asked.tier) == ({"runtime_s": 600}, "request")


def test_basis_widens_from_command_to_name_to_user_to_name_of_anyone() -> None:
    other_cmd = runs(10, command="python other.py")
    p = predict(runs(3) + other_cmd, name="train", user="ann", command=CMD, requested=REQ)
    assert p.detail["runtime_s"].basis == "name+user"
    assert p.detail["runtime_s"].samples == 13
    user_only = runs(6, name="eval")
    assert predict(user_only, name="train", user="ann").detail["runtime_s"].basis == "user"
    others = runs(6, user="bob")
    assert predict(others, name="train", user="ann").detail["runtime_s"].basis == "name"


def test_only_keys_the_history_holds_count_as_samples() -> None:
    history = [UsageRecord("a", "u", None, {}, {"runtime_s": 10}, float(i)) for i in range(6)]
    p = predict(history, name="a", user="u", requested={"memory": GiB})
    assert p.detail["runtime_s"].tier == "robust"
    assert p.detail["memory"].tier == "request"
    assert p.detail["cpu_seconds"].tier == "default"  # neither history nor cpu + runtime
    assert p.tier == "default"  # the weakest key


def test_quantile_regression_recovers_a_line() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 400)
    y = 1.0 + 2.0 * x + rng.normal(0, 1, 400)
    design = np.column_stack([np.ones_like(x), x])
    median = quantile_regression(design, y, 0.5)
    assert median == pytest.approx([1.0, 2.0], abs=0.25)
    high = quantile_regression(design, y, 0.9)
    assert high[0] == pytest.approx(1.0 + 1.2816, abs=0.3)
    assert float(np.mean(y <= design @ high)) == pytest.approx(0.9, abs=0.03)


def test_runtime_estimates_use_only_jobs_finished_before_submit() -> None:
    jobs = [
        TraceJob(f"j{i}", "u1", "u1:p4:t1000", submit_time=200.0 * i,
                 finished_at=200.0 * i + 100, runtime_s=100, requested={"runtime_s": 1000})
        for i in range(7)
    ]
    # j7 is submitted before j6 ends: it sees six runs, as j6 does.
    jobs.append(TraceJob("j7", "u1", "u1:p4:t1000", 1250.0, 1350.0, 100, {"runtime_s": 1000}))
    assert runtime_estimates(jobs) == {
        "j0": 1000, "j1": 1000, "j2": 1000, "j3": 1000, "j4": 1000,
        "j5": 110, "j6": 110, "j7": 110,
    }


@pytest.mark.parametrize("kw", [{"quantile": 0.0}, {"quantile": 1.0}, {"margin": -0.1}])
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        predict([], name="a", user="u", **kw)  # type: ignore[arg-type]
