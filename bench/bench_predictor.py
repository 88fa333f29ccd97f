"""Learned run times against users' own estimates, on the KTH-SP2 trace.

Replays the trace in submit order; each job's run time is predicted from the
same user's jobs that had finished (by the trace's times) when it was
submitted, through ``apportion.core.predict.replay`` (the "name" is user +
requested processors + requested time, as in Tsafrir et al. 2007). Figures:
mean absolute error of the run time, and the share of jobs whose estimate is
below the actual run time (what hurts EASY backfill: the head job's
reservation is planned too early and backfilled jobs delay it).

    .venv/bin/python bench/bench_predictor.py [--trace PATH] [--limit N]

Then the change in mean bounded slowdown: the simulator replays the same
trace with EASY backfill, under the FIFO and the adaptive strategy, once with
the users' estimates and once with the predictor's (each job's actual run
time is unchanged; only what ordering and backfill believe changes).
``--no-simulate`` skips that part.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import write_result

from apportion.core.predict import Prediction, TraceJob, replay
from apportion.core.scheduling import SchedulerConfig
from apportion.core.simulator import SimConfig, SimJob, simulate
from apportion.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "KTH-SP2-1996-2.1-cln.swf.gz"


def read_swf(path: Path) -> Iterator[TraceJob]:
    """SWF: 18 whitespace-separated fields per job, ';' comment lines, -1 for
    unknown. Used here: 1 id, 2 submit, 3 wait, 4 run time, 5 allocated
    processors, 8 requested processors, 9 requested time, 12 user."""
    with gzip.open(path, "rt") as lines:
        for line in lines:
            fields = line.split()
            if not fields or line.lstrip().startswith(";"):
                continue
            job_id, submit, wait, run = fields[0], float(fields[1]), float(fields[2]), fields[3]
            if int(run) < 0:
                continue  # nothing to learn from or score against
            procs = int(fields[7]) if int(fields[7]) > 0 else int(fields[4])
            asked = int(fields[8])
            user = fields[11]
            requested = {"cpu": max(procs, 1) * 1000}
            if asked > 0:
                requested["runtime_s"] = asked
            yield TraceJob(
                id=job_id,
                user=user,
                name=f"u{user}:p{procs}:t{asked}",
                submit_time=submit,
                finished_at=submit + max(wait, 0.0) + int(run),
                runtime_s=int(run),
                requested=requested,
            )


def last_two(jobs: list[TraceJob]) -> dict[str, int]:
    """Tsafrir, Etsion & Feitelson (2007): the mean of the user's last two
    finished runs, never above the user's estimate; the estimate otherwise."""
    recent: defaultdict[str, deque[int]] = defaultdict(lambda: deque(maxlen=2))
    by_end = sorted(jobs, key=lambda j: (j.finished_at, j.id))
    out: dict[str, int] = {}
    done = 0
    for job in sorted(jobs, key=lambda j: (j.submit_time, j.id)):
        while done < len(by_end) and by_end[done].finished_at <= job.submit_time:
            recent[by_end[done].user].append(by_end[done].runtime_s)
            done += 1
        runs = recent[job.user]
        asked = job.requested["runtime_s"]
        out[job.id] = min(asked, round(sum(runs) / len(runs))) if runs else asked
    return out


def score(jobs: list[TraceJob], estimate: Callable[[TraceJob], int]) -> dict[str, Any]:
    actual = np.array([j.runtime_s for j in jobs], dtype=np.float64)
    guess = np.array([estimate(j) for j in jobs], dtype=np.float64)
    err = guess - actual
    return {
        "mae_s": round(float(np.abs(err).mean()), 1),
        "median_ae_s": round(float(np.median(np.abs(err))), 1),
        "mean_error_s": round(float(err.mean()), 1),
        "under_share": round(float((guess < actual).mean()), 4),
        "mean_accuracy": round(float(np.mean(np.minimum(actual, guess)
                                             / np.maximum(np.maximum(actual, guess), 1))), 4),
    }


def by_id(values: dict[str, int]) -> Callable[[TraceJob], int]:
    return lambda job: values[job.id]


def run_predictor(jobs: list[TraceJob], **settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    values: dict[str, int] = {}
    tiers: dict[str, int] = defaultdict(int)
    for job, p in replay(jobs, **settings):
        values[job.id] = p.values["runtime_s"]
        tiers[_tier(p)] += 1
    return values, dict(tiers)


def _tier(p: Prediction) -> str:
    return p.detail["runtime_s"].tier


def with_estimates(jobs: Iterable[SimJob], values: dict[str, int]) -> list[SimJob]:
    """The trace's jobs with the predicted run time as their estimate."""
    out = []
    for sj in jobs:
        value = values.get(sj.job.id)
        if value is None:
            out.append(sj)
        else:
            job = dataclasses.replace(sj.job, runtime_estimate=float(max(value, 1)))
            out.append(dataclasses.replace(sj, job=job, estimate_given=True))
    return out


def slowdown(trace_path: Path, sources: dict[str, dict[str, int] | None]) -> dict[str, Any]:
    """Mean bounded slowdown and wait of EASY backfill under FIFO and the
    adaptive strategy, for each source of run-time estimates (None: the
    users' own)."""
    trace = read_trace(trace_path)
    out: dict[str, Any] = {}
    for name in ("fifo", "adaptive"):
        config = SimConfig(SchedulerConfig(strategy=name, backfill="easy"),
                           primary=trace.primary)
        for label, values in sources.items():
            jobs = trace.jobs if values is None else with_estimates(trace.jobs, values)
            m = simulate(jobs, trace.nodes, config).metrics
            out[f"{name}+easy, {label}"] = {
                "strategy": name, "estimates": label,
                "mean_bounded_slowdown": round(float(m["mean_bounded_slowdown"] or 0), 2),
                "mean_wait_s": round(float(m["mean_wait_s"] or 0), 1),
                "utilization": round(float(m["utilization"] or 0), 4)}
    return out


def slowdown_table(rows: dict[str, Any]) -> str:
    head = f"{'scheduler, estimates':<52} {'mean bsld':>10} {'vs user':>8} {'mean wait h':>12}"
    lines = [head, "-" * len(head)]
    base: dict[str, float] = {}
    for label, r in rows.items():
        base.setdefault(r["strategy"], r["mean_bounded_slowdown"])
        change = (r["mean_bounded_slowdown"] - base[r["strategy"]]) / base[r["strategy"]] * 100
        lines.append(f"{label:<52} {r['mean_bounded_slowdown']:>10.2f} {change:>7.1f}% "
                     f"{r['mean_wait_s'] / 3600:>12.2f}")
    return "\n".join(lines)


def table(rows: Iterable[tuple[str, dict[str, Any]]], base_mae: float) -> str:
    head = (f"{'estimate':<44} {'MAE s':>9} {'vs user':>8} {'median AE':>10} "
            f"{'under':>7} {'accuracy':>9}")
    lines = [head, "-" * len(head)]
    for label, r in rows:
        change = (r["mae_s"] - base_mae) / base_mae * 100
        lines.append(f"{label:<44} {r['mae_s']:>9.0f} {change:>7.1f}% {r['median_ae_s']:>10.0f} "
                     f"{r['under_share'] * 100:>6.1f}% {r['mean_accuracy']:>9.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--limit", type=int, default=0, help="first N jobs only (0: all)")
    parser.add_argument("--no-simulate", action="store_true",
                        help="skip the bounded-slowdown replays")
    args = parser.parse_args()
    jobs = list(read_swf(args.trace))
    if args.limit:
        jobs = jobs[: args.limit]
    scored = [j for j in jobs if "runtime_s" in j.requested]
    print(f"{args.trace.name}: {len(jobs)} jobs, {len(scored)} with a user estimate")

    variants = {
        "predictor p95 + 10 %, clamped (default)": {},
        "predictor p80, no margin, not clamped": {"quantile": 0.8, "margin": 0.0,
                                                  "clamp_to_max_used": False},
        "predictor p50, no margin, not clamped": {"quantile": 0.5, "margin": 0.0,
                                                  "clamp_to_max_used": False},
    }
    rows: list[tuple[str, dict[str, Any]]] = [
        ("user estimate (SWF field 9)", score(scored, lambda j: j.requested["runtime_s"])),
    ]
    tiers: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    predicted: dict[str, dict[str, int]] = {}
    for label, settings in variants.items():
        start = time.perf_counter()
        values, tiers[label] = run_predictor(jobs, **settings)
        predicted[label] = values
        seconds[label] = round(time.perf_counter() - start, 1)
        rows.append((label, score(scored, by_id(values))))
    reference = last_two(scored)
    rows.append(("last-2 mean, capped (Tsafrir 2007, reference)",
                 score(scored, lambda j: reference[j.id])))

    base = rows[0][1]["mae_s"]
    print(table(rows, base))
    for label, counts in tiers.items():
        print(f"tiers, {label}: {counts}  ({seconds[label]} s)")
    if args.limit:
        print("(a --limit run; bench/results/predictor.json is left as it was)")
        return
    replays: dict[str, Any] = {}
    if not args.no_simulate:
        first, second = list(variants)[:2]
        replays = slowdown(args.trace, {"user estimates": None,
                                        first: predicted[first], second: predicted[second]})
        print(slowdown_table(replays))
    write_result("predictor", {
        "trace": args.trace.name,
        "jobs": len(jobs),
        "jobs_scored": len(scored),
        "history": "same user's jobs finished before submit, at most 500 most recent",
        "results": {label: r for label, r in rows},
        "tiers": tiers,
        "replay_seconds": seconds,
        "bounded_slowdown": replays,
    })


if __name__ == "__main__":
    main()
