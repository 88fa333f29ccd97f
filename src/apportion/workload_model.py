"""Synthetic workloads: the Lublin–Feitelson model of rigid batch jobs with
user run time estimates after Tsafrir, Etsion & Feitelson's model.

The shipped logs include one with user estimates (KTH-SP2); this generates
more, seeded, so that a claim about logs with estimates rests on more than
one log. Sources:

* U. Lublin and D. G. Feitelson, "The workload on parallel supercomputers:
  modeling the characteristics of rigid jobs", JPDC 63(11), 2003 (the batch
  part of its model, parameters as in its published generator): the size
  is serial with probability 0.2927, else ``2**u`` with ``u`` two-stage
  uniform (0.6714 in [1.2, log2(P) - 2.5], else up to log2(P)), rounded to a
  power of two with probability 0.782; ``ln(run time)`` is hyper-gamma,
  Gamma(6.57, 0.823) with probability ``p = 0.78 - 0.0054 * size`` (clamped
  to [0, 1]), else Gamma(639.1, 0.0156), so wide jobs run long; the
  interarrival time is ``exp(Gamma(10.2303, 0.4871))``. Simplified: no
  daily cycle and no interactive jobs; interarrivals are then scaled so the
  offered load is ``load``.
* D. Tsafrir, Y. Etsion and D. G. Feitelson, "Modeling user runtime
  estimates", JSSPP 2005: estimates are modal (a few popular values, such
  as 15 min, 1 h, 4 h, take most jobs), the site's maximum is among the most
  popular, and an estimate is a kill limit, so it is never below the run
  time. Here: the maximum with probability ``p_max``, else a popular value
  at least the run time, drawn with Zipf-like weights (the k-th most
  popular value weighs ``1 / k``).

The published model has no users: a scheduler can learn from it only by
size class and must otherwise rely on the estimates. Real logs repeat
themselves: a user runs the same program again and again (Feitelson,
"Locality of sampling and diversity in parallel system workloads", ICS
2007; it is what lets Tsafrir et al. predict from a user's last two runs).
With ``users`` > 0 each job belongs to a user drawn with Zipf weights, and
with probability ``repeat`` reruns that user's previous job: same size and
estimate, its run time times a log-normal factor (sigma ``noise``), still
killed at the estimate; otherwise it is a new job of the model.

Run ``python -m apportion.workload_model --seed 1 --out FILE.swf`` to write
the log in the Standard Workload Format for ``apportion simulate``.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SERIAL_PROB = 0.2927
POW2_PROB = 0.782
U_LOW = 1.2
U_PROB = 0.6714
A1, B1 = 6.57, 0.823
A2, B2 = 639.1, 0.0156
P_A, P_B = -0.0054, 0.78
A_ARR, B_ARR = 10.2303, 0.4871

MINUTE, HOUR = 60, 3600
POPULAR = (15 * MINUTE, HOUR, 5 * MINUTE, 4 * HOUR, 30 * MINUTE, 2 * HOUR, 10 * MINUTE,
           12 * HOUR, 8 * HOUR, 20 * MINUTE, 6 * HOUR, 24 * HOUR, 3 * HOUR, 45 * MINUTE,
           18 * HOUR, 2 * MINUTE, 5 * HOUR, 90 * MINUTE, 16 * HOUR, 36 * HOUR)
"""Estimate values in order of popularity (after the values Tsafrir et al.
found most popular across logs)."""
MAX_ESTIMATE = 48 * HOUR


@dataclass(frozen=True, slots=True)
class ModelJob:
    submit: float
    run: float
    size: int
    estimate: float
    user: int = -1


def generate(jobs: int, processors: int = 256, *, seed: int = 1, load: float = 0.7,
             p_max: float = 0.12, users: int = 0, repeat: float = 0.7,
             noise: float = 0.3) -> list[ModelJob]:
    """``jobs`` jobs for a machine of ``processors``, offered load ``load``."""
    rng = random.Random(seed)
    drawn = [_job(rng, processors, p_max) for _ in range(jobs)]
    if users:
        drawn = _with_users(rng, drawn, users, repeat, noise)
    gaps = [_interarrival(rng) for _ in drawn]
    work = sum(j.run * j.size for j in drawn)
    # Scale the arrivals so that the work offered per second is `load` machines.
    scale = work / (load * processors * sum(gaps))
    out: list[ModelJob] = []
    t = 0.0
    for gap, j in zip(gaps, drawn, strict=True):
        t += gap * scale
        out.append(ModelJob(float(round(t)), j.run, j.size, j.estimate, j.user))
    return out


def _job(rng: random.Random, processors: int, p_max: float) -> ModelJob:
    size = _size(rng, processors)
    run = min(_run_time(rng, size), float(MAX_ESTIMATE))
    return ModelJob(0.0, run, size, _estimate(rng, run, p_max))


def _with_users(rng: random.Random, fresh: list[ModelJob], users: int, repeat: float,
                noise: float) -> list[ModelJob]:
    weights = [1.0 / (k + 1) for k in range(users)]
    last: dict[int, ModelJob] = {}
    out: list[ModelJob] = []
    for new in fresh:
        user = rng.choices(range(users), weights)[0]
        before = last.get(user)
        if before is not None and rng.random() < repeat:
            again = float(round(before.run * rng.lognormvariate(0, noise)))
            run = max(1.0, min(before.estimate, again))
            job = ModelJob(0.0, run, before.size, before.estimate, user)
        else:
            job = ModelJob(0.0, new.run, new.size, new.estimate, user)
            last[user] = job
        out.append(job)
    return out


def _interarrival(rng: random.Random) -> float:
    return math.exp(rng.gammavariate(A_ARR, B_ARR))


def _size(rng: random.Random, processors: int) -> int:
    if rng.random() < SERIAL_PROB:
        return 1
    u_high = math.log2(processors)
    u_med = u_high - 2.5
    u = rng.uniform(U_LOW, u_med) if rng.random() < U_PROB else rng.uniform(u_med, u_high)
    if rng.random() < POW2_PROB:
        return min(processors, 1 << round(u))
    return max(1, min(processors, round(2**u)))


def _run_time(rng: random.Random, size: int) -> float:
    p = min(1.0, max(0.0, P_A * size + P_B))
    log_run = rng.gammavariate(A1, B1) if rng.random() < p else rng.gammavariate(A2, B2)
    return float(max(1, round(math.exp(log_run))))


def _estimate(rng: random.Random, run: float, p_max: float) -> float:
    if rng.random() < p_max:
        return float(MAX_ESTIMATE)
    fitting = [(v, 1.0 / (k + 1)) for k, v in enumerate(POPULAR) if v >= run]
    if not fitting:
        return float(MAX_ESTIMATE)
    values, weights = zip(*fitting, strict=True)
    return float(rng.choices(values, weights)[0])


def to_swf(jobs: Sequence[ModelJob], processors: int, note: str) -> str:
    """The jobs as a Standard Workload Format log (unknown fields -1)."""
    lines = [f"; {note}", "; Version: 2", f"; MaxJobs: {len(jobs)}", f"; MaxProcs: {processors}",
             f"; MaxNodes: {processors}"]
    for i, j in enumerate(jobs, 1):
        lines.append(f"{i} {j.submit:.0f} -1 {j.run:.0f} {j.size} -1 -1 {j.size} "
                     f"{j.estimate:.0f} -1 1 {j.user} -1 -1 -1 -1 -1 -1")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--processors", type=int, default=256)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--users", type=int, default=0, help="0: the model without users")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    jobs = generate(args.jobs, args.processors, seed=args.seed, load=args.load,
                    users=args.users)
    note = (f"Lublin-Feitelson batch model with Tsafrir estimates: apportion.workload_model, "
            f"seed {args.seed}, load {args.load}, users {args.users}")
    args.out.write_text(to_swf(jobs, args.processors, note))


if __name__ == "__main__":  # pragma: no cover
    main()
