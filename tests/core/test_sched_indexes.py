"""The indexes that keep placement and EASY planning from scanning every node:
the blocked free-capacity index, the index of expected ends, the one-task
reservation by node arithmetic, and decisions that depend on the state only
(not on the order buckets and nodes came about)."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node
from apportion.core.scheduling import (
    ClusterState,
    Job,
    SchedulerConfig,
    backfill,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.backfill import (
    HeadReservation,
    easy_reservation,
    running_ends,
)
from apportion.core.scheduling.constraints import parse_constraints
from apportion.core.scheduling.framework import Placer, fit_count
from apportion.core.scheduling.policies import strategy
from sched_support import past_recounted

GI = 2**30
SHAPES = [(8, 32, 0), (16, 64, 0), (32, 128, 0), (32, 256, 4)]


def fleet(n: int, rng: random.Random) -> list[Node]:
    out = []
    for i in range(n):
        cores, mem, gpus = rng.choice(SHAPES)
        labels = {"zone": f"z{i % 3}"}
        devices = {}
        if gpus:
            model = rng.choice(["A100", "H100"])
            devices = {"gpu": tuple(Device(f"GPU-{k}", model, 80 * GI) for k in range(gpus))}
            labels["gpu.model"] = model
        out.append(Node(f"n{i:03d}", {"cpu": cores * 1000, "memory": mem * GI},
                        devices=devices, labels=labels))
    return out


def make_job(i: int, rng: random.Random, now: float) -> Job:
    request = {"cpu": rng.choice([500, 2000, 8000]), "memory": rng.choice([1, 8, 32]) * GI}
    constraints = parse_constraints("")
    roll = rng.random()
    if roll < 0.15:
        request["gpu"] = rng.choice([1, 2])
        if rng.random() < 0.5:
            constraints = parse_constraints("gpu.model=H100")
    elif roll < 0.3:
        constraints = parse_constraints("zone=z1")
    return job(f"j{i}", request, submit_time=now, constraints=constraints,
               runtime_estimate=float(rng.choice([60, 600, 3600])))


def busy_state(seed: int, n_nodes: int = 60, n_jobs: int = 1600) -> tuple[ClusterState, float]:
    """A mixed fleet filled by rounds of arrivals, some jobs ended since."""
    rng = random.Random(seed)
    state = ClusterState(fleet(n_nodes, rng))
    config = SchedulerConfig(strategy="binpack", backfill="easy", preemption=False)
    now = 0.0
    for k in range(4):
        now = 100.0 * k
        schedule_cycle(state, [make_job(k * 1000 + i, rng, now) for i in range(n_jobs // 4)],
                       now, config)
        for job_id in rng.sample(sorted(state.running), len(state.running) // 30):
            state.finish(job_id)
    return state, now + rng.choice([0.0, 30.0, 700.0])


def placements(state: ClusterState, jobs: list[Job], now: float) -> list[tuple[str, ...]]:
    result = schedule_cycle(state, jobs, now, SchedulerConfig(strategy="fifo", backfill="easy"))
    return [(p.job_id, *(t.node for t in p.tasks)) for p in result.placements]


def view(found: HeadReservation | None) -> object:
    if found is None:
        return None
    r = found.reservation
    return (r.job_id, r.start, {n: dict(v) for n, v in r.nodes.items()}, found.extra)


# -- the blocked index ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_index_blocks_stay_sorted_and_bound_their_buckets(seed: int) -> None:
    state, _ = busy_state(seed, n_nodes=40, n_jobs=300)
    for r in ("cpu", "memory", "gpu"):
        index = state.index(r)
        assert index is not None
        entries = list(index)
        assert entries == sorted(entries) and len(entries) == len(index)
        assert index.last() == entries[-1] and state.max_free(r) == entries[-1][0]
        assert index.lens == [len(b) for b in index.blocks]
        for k, block in enumerate(index.blocks):
            assert block and index.lasts[k] == block[-1]
            for entry in block:
                bucket = state.bucket(entry[3])
                assert entry[:3] == (bucket.free[bucket.cls.pos[r]], bucket.cls.id, bucket.free)
                assert index.masks[k] & bucket.cls.bit
                for name, q in zip(bucket.cls.resources, bucket.free, strict=True):
                    assert index.bounds[k][name] >= q
    buckets = {b.id for b in state.buckets()}
    assert {e[3] for e in state.index("cpu") or ()} == buckets


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["binpack", "spread", "fifo"]))
@example(55, "binpack")  # a node with negative free cpu, which fit_count took as room
def test_the_walk_finds_what_a_scan_of_every_bucket_finds(seed: int, name: str) -> None:
    state, now = busy_state(seed)
    rng = random.Random(seed)
    placer = Placer(state, strategy(name).options)
    for i in range(20):
        j = make_job(10_000 + i, rng, now)
        spec = j.tasks[0]
        from apportion.core.scheduling.filters import class_verdict

        verdict = class_verdict(state, j, 0)
        some = any(
            b.cls.id in verdict.aligned and fit_count(b.free, verdict.aligned[b.cls.id])
            and b.cls.id not in verdict.device_check
            for b in state.buckets()
        )
        cands = placer._walk(j, spec, verdict, 1, None, None, False)
        if some:
            assert cands
        for c in cands:
            assert fit_count(c.free, c.aligned) > 0


def test_fit_count_is_the_smallest_share_and_none_where_free_is_short_or_negative() -> None:
    assert fit_count((8000, 4, 64), (2000, 1, 16)) == 4
    assert fit_count((8000, 1, 64), (2000, 2, 0)) == 0
    # A node whose capacity shrank under what runs on it has negative free
    # cpu: nothing fits, whatever the other resources allow.
    assert fit_count((-3000, 2, 10**11), (8000, 2, 34 * 2**30)) == 0
    assert fit_count((5, 5), (0, 0)) == 0


# -- expected ends --------------------------------------------------------------


def test_running_ends_read_off_the_index_match_a_sort() -> None:
    state, now = busy_state(3)
    expected = sorted(
        (max(now, rj.start + rj.estimate), job_id)
        for job_id, rj in state.running.items() if rj.estimate is not None
    )
    assert running_ends(state, now) == expected
    assert len(state.ends) == len(expected)


def nonzero(past: object) -> dict[str, dict[str, int]]:
    assert isinstance(past, dict)
    return {n: {r: q for r, q in v.items() if q} for n, v in past.items()
            if any(v.values())}


def test_what_jobs_past_their_estimate_hold_is_kept_as_jobs_start_end_and_time_moves() -> None:
    state, now = busy_state(5)
    assert nonzero(state.past_estimate(now)) == nonzero(past_recounted(state, now))
    rng = random.Random(5)
    for step in range(6):
        now += rng.choice([0.0, 50.0, 700.0])
        for job_id in rng.sample(sorted(state.running), 5):
            state.finish(job_id)
        schedule_cycle(state, [make_job(50_000 + 10 * step + i, rng, now) for i in range(10)],
                       now, SchedulerConfig(strategy="binpack", backfill="none"))
        assert nonzero(state.past_estimate(now)) == nonzero(past_recounted(state, now))
    # A rolled-back what-if leaves it as it was; an earlier time starts over.
    mark = state.mark()
    for job_id in sorted(state.running)[:50]:
        state.finish(job_id)
    assert nonzero(state.past_estimate(now)) == nonzero(past_recounted(state, now))
    state.rollback(mark)
    assert nonzero(state.past_estimate(now)) == nonzero(past_recounted(state, now))
    assert nonzero(state.past_estimate(now - 900)) == nonzero(past_recounted(state, now - 900))
    # A node that goes takes its jobs with it, and plans go on without it.
    busy = next(name for name in state.past_estimate(now) if state.nodes[name].jobs)
    state.remove_node(busy)
    assert busy not in state.past_estimate(now)
    assert nonzero(state.past_estimate(now)) == nonzero(past_recounted(state, now))
    placer = Placer(state, strategy("fifo").options)
    big = job("big", {"cpu": 32_000, "memory": GI}, runtime_estimate=60.0)
    quick = easy_reservation(state, placer, big, now)
    assert view(quick) == view(easy_reservation(state, placer, big, now,
                                                ends=running_ends(state, now)))


# -- EASY for one task ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_one_task_reservation_equals_the_general_method(seed: int) -> None:
    state, now = busy_state(seed)
    rng = random.Random(seed)
    placer = Placer(state, strategy("fifo").options)
    for i in range(8):
        j = make_job(20_000 + i, rng, now)
        if i % 2:  # a big one, that has to wait
            j = job(j.id, {**j.tasks[0].resources, "cpu": 32_000}, constraints=j.constraints,
                    runtime_estimate=60.0)
        quick = easy_reservation(state, placer, j, now)
        # Passing the ends takes the general path: release on the state,
        # place, roll back.
        general = easy_reservation(state, placer, j, now, ends=running_ends(state, now))
        assert view(quick) == view(general)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0, 3, 40, 4096]))
def test_the_walk_at_now_and_the_scan_reserve_alike_whatever_the_walk_reads(
    seed: int, reads: int,
) -> None:
    """``backfill._first_fitting_now`` gives up after ``_WALK_READS`` jobs
    read, and the scan of every freed node answers: the same reservation."""
    state, now = busy_state(seed)
    rng = random.Random(seed)
    placer = Placer(state, strategy("fifo").options)
    old = backfill._WALK_READS
    backfill._WALK_READS = reads
    try:
        for i in range(6):
            j = make_job(20_000 + i, rng, now)
            if i % 2:  # a big one, that has to wait
                j = job(j.id, {**j.tasks[0].resources, "cpu": 16_000},
                        constraints=j.constraints, runtime_estimate=60.0)
            quick = easy_reservation(state, placer, j, now)
            general = easy_reservation(state, placer, j, now, ends=running_ends(state, now))
            assert view(quick) == view(general)
            now += rng.choice([0.0, 60.0, 600.0])
    finally:
        backfill._WALK_READS = old


# -- decisions depend on the state, not on its history -----------------------------


def test_a_copy_of_the_state_decides_the_same() -> None:
    state, now = busy_state(11, n_nodes=80, n_jobs=800)
    rng = random.Random(11)
    jobs = [make_job(30_000 + i, rng, now) for i in range(200)]
    twin = state.copy()
    assert placements(state, jobs, now) == placements(twin, jobs, now)


def test_a_rolled_back_what_if_leaves_no_trace_in_later_decisions() -> None:
    state, now = busy_state(12, n_nodes=80, n_jobs=800)
    twin = state.copy()
    rng = random.Random(12)
    jobs = [make_job(40_000 + i, rng, now) for i in range(200)]
    # A what-if that releases every running job and places a gang, undone.
    placer = Placer(twin, strategy("fifo").options)
    gang = job("what-if", {"cpu": 500}, count=6)
    easy_reservation(twin, placer, gang, now, ends=running_ends(twin, now))
    assert placements(state, jobs, now) == placements(twin, jobs, now)
