"""Shortcuts of the placement path, each held to the plain code it skips
(hypothesis): the same placements, devices and state either way.

* the walk stops at its first bucket when every score plugin ranks one
  single-resource class's buckets in walk order (``PlaceOptions.first_is_best``);
* ``devices.choose`` on a node whose devices carry no attributes, and a
  grant that takes the first free devices;
* a single placement's release, and a single task placed without a
  transaction;
* the lowest preemptible priority, kept without zero counts;
* one waiting job is not ordered (every policy gives it back alone).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node
from apportion.core.scheduling import ClusterState, Job, Queue, TaskPlacement, TaskSpec, job
from apportion.core.scheduling import devices as dev
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions
from apportion.core.scheduling.policies import STRATEGIES, OrderContext
from sched_support import replay_steps

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class _Plain:
    """A score plugin as given, without saying ``tight_first``: the walk
    collects and scores every candidate, as before the shortcut."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]

    def per_node(self, job: Job) -> bool:
        return bool(self.inner.per_node(job))  # type: ignore[attr-defined]

    def applies(self, job: Job, state: ClusterState) -> bool:
        return bool(self.inner.applies(job, state))  # type: ignore[attr-defined]

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        return float(self.inner.score(cand, ctx))  # type: ignore[attr-defined]


def _plain(options: PlaceOptions) -> PlaceOptions:
    return PlaceOptions(tuple((_Plain(p), w) for p, w in options.scorers),
                        options.loose, options.limit, options.pack)


@st.composite
def gpu_clusters(draw: st.DrawFn) -> list[Node]:
    """GPU nodes of one resource (one class or several), some with linked
    devices, sometimes beside cpu nodes: the shortcut's case and its edges."""
    out = []
    for i in range(draw(st.integers(1, 7))):
        gpus = draw(st.sampled_from([2, 4, 8]))
        linked = draw(st.booleans()) and draw(st.booleans())
        devices = tuple(Device(f"GPU-{k}", attrs={"numa": k % 2} if linked else {})
                        for k in range(gpus))
        labels = {"zone": draw(st.sampled_from(["a", "a", "b"]))}
        resources = {"gpu": gpus}
        if draw(st.integers(0, 5)) == 0:
            resources["cpu"] = 4000
        out.append(Node(f"n{i}", resources, devices={"gpu": devices}, labels=labels))
    return out


ops = st.lists(st.tuples(st.booleans(), st.integers(1, 8), st.integers(1, 3),
                         st.integers(0, 50)), min_size=1, max_size=30)


def _replay(nodes: list[Node], steps: list[tuple[bool, int, int, int]],
            options: PlaceOptions) -> tuple[list[object], ClusterState]:
    state = ClusterState(nodes)
    seen = replay_steps(state, Placer(state, options), steps,
                        lambda n, gpus, count, _: job(f"j{n}", {"gpu": gpus}, count=count))
    return seen, state


def _books(state: ClusterState) -> object:
    return ({n: (r.free, sorted(r.jobs.items()), {k: list(v) for k, v in r.free_devices.items()},
                 r.bucket.nodes if r.bucket else None) for n, r in state.nodes.items()},
            dict(state.free_totals), state.changes)


@SETTINGS
@given(gpu_clusters(), ops, st.sampled_from(["fifo", "binpack", "cost", "affinity"]))
def test_the_walk_stops_at_the_pick_the_scores_would_make(
    nodes: list[Node], steps: list[tuple[bool, int, int, int]], name: str
) -> None:
    options = STRATEGIES[name].options
    assert options.first_is_best and not _plain(options).first_is_best
    fast, fast_state = _replay(nodes, steps, options)
    plain, plain_state = _replay(nodes, steps, _plain(options))
    assert fast == plain
    assert _books(fast_state) == _books(plain_state)


def test_spread_and_negative_weights_keep_scoring_every_candidate() -> None:
    assert not STRATEGIES["spread"].options.first_is_best
    binpack = STRATEGIES["binpack"].options.scorers[0][0]
    assert not PlaceOptions(((binpack, -1.0),)).first_is_best


@SETTINGS
@given(st.integers(1, 8), st.lists(st.integers(0, 7), unique=True, max_size=8),
       st.integers(1, 8))
def test_plain_devices_are_chosen_as_the_attribute_test_would(
    size: int, taken: list[int], count: int
) -> None:
    node = Node("n", {"gpu": size}, devices={"gpu": tuple(Device(f"GPU-{k}")
                                                         for k in range(size))})
    fast = ClusterState([node]).rec("n")
    plain = ClusterState([node]).rec("n")
    plain.plain_devices = frozenset()  # asks each free device for attributes
    for rec in (fast, plain):
        rec.free_devices["gpu"] = [d for d in rec.free_devices["gpu"]
                                   if int(d.split("-")[1]) not in taken]
    assert dev.choose(fast, "gpu", count, ()) == dev.choose(plain, "gpu", count, ())


@SETTINGS
@given(gpu_clusters(), ops)
def test_releases_leave_the_books_a_fresh_state_would_hold(
    nodes: list[Node], steps: list[tuple[bool, int, int, int]]
) -> None:
    # Whatever ran and ended (one placement or several, devices taken first
    # or not), the state equals one built from the jobs still running.
    _, state = _replay(nodes, steps, STRATEGIES["fifo"].options)
    fresh = ClusterState(nodes, list(state.running.values()))
    books, fresh_books = _books(state), _books(fresh)
    assert books[:2] == fresh_books[:2]  # type: ignore[index]


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.integers(-2, 2), st.booleans()), max_size=20))
def test_the_lowest_preemptible_priority_is_the_lowest_running(
    steps: list[tuple[bool, int, bool]]
) -> None:
    state = ClusterState([Node("n", {"cpu": 100_000})])
    for n, (start, prio, preemptible) in enumerate(steps):
        if start or not state.running:
            j = job(f"j{n}", {"cpu": 1}, priority=prio, preemptible=preemptible)
            state.start(j, [TaskPlacement("n", j.tasks[0].resources)], 0.0)
        else:
            state.finish(sorted(state.running)[0])
        mark = state.mark()
        if state.running:
            state.finish(sorted(state.running)[-1])
        state.rollback(mark)  # undo records go through the same counts
        want = min((rj.job.priority for rj in state.running.values() if rj.job.preemptible),
                   default=None)
        assert state.lowest_preemptible_priority() == want


@SETTINGS
@given(st.sampled_from(sorted(STRATEGIES)), st.integers(1, 4), st.floats(0, 1e6))
def test_every_policy_gives_one_waiting_job_back_alone(name: str, gpus: int,
                                                       now: float) -> None:
    j = Job("a", (TaskSpec({"gpu": gpus}),), queue="q", submit_time=0.0,
            runtime_estimate=60.0)
    state = ClusterState([Node("n", {"gpu": 8})])
    ctx = OrderContext(now, {"q": Queue("q")}, state, lambda _: 60.0, 1.0 / 600)
    assert STRATEGIES[name].order.order([j], ctx) == [j]


def test_a_single_task_counts_one_change_and_rolls_back_with_its_caller() -> None:
    state = ClusterState([Node("n", {"gpu": 8}, devices={"gpu": tuple(
        Device(f"GPU-{k}") for k in range(8))})])
    placer = Placer(state, STRATEGIES["fifo"].options)
    before = state.changes
    assert placer.place(job("a", {"gpu": 3})).tasks is not None
    assert state.changes == before + 1
    assert placer.place(job("b", {"gpu": 9})).tasks is None
    assert state.changes == before + 1
    books = _books(state)
    mark = state.mark()
    assert placer.place(job("c", {"gpu": 2})).tasks is not None
    state.rollback(mark)
    assert _books(state) == books
