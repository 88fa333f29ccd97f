"""The framework's interface: candidates, the context score plugins see, and
a strategy's options."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, job
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions


def state(n: int) -> ClusterState:
    return ClusterState([Node(f"n{i}", {"cpu": 4}) for i in (3, 0, 2, 1, 4)[:n]])


def test_a_bucket_candidate_names_up_to_limit_nodes_in_name_order_less_those_excluded() -> None:
    s = state(5)
    (bucket,) = s.buckets()
    rec = s.nodes["n0"]
    cand = Candidate(rec.cls, bucket.free, (1,), 4, bucket, None, 5,
                     exclude=frozenset({"n1"}))
    assert cand.node_names(2) == ["n0", "n2"]
    assert cand.node_names(4) == ["n0", "n2", "n3", "n4"]
    assert cand.node_names(9) == ["n0", "n2", "n3", "n4"]
    assert cand.node_names(1) == ["n0"]
    plain = Candidate(rec.cls, bucket.free, (1,), 4, bucket, None, 5)
    assert plain.node_names(3) == ["n0", "n1", "n2"]
    assert plain.exclude == frozenset()
    assert (plain.cls, plain.free, plain.aligned, plain.fit, plain.bucket, plain.rec,
            plain.count, plain.score) == (rec.cls, (4,), (1,), 4, bucket, None, 5, 0.0)


def test_a_node_candidate_names_its_node_whatever_the_limit() -> None:
    s = state(2)
    rec = s.nodes["n3"]
    cand = Candidate(rec.cls, rec.free, (1,), 4, None, rec, 1)
    assert cand.node_names(0) == ["n3"]
    assert cand.node_names(5) == ["n3"]


def test_the_context_and_options_defaults() -> None:
    s = state(1)
    j = job("j", {"cpu": 1})
    ctx = PlaceContext(j, j.tasks[0], s)
    # ``scorers`` is a tuple: the plain jobs' one is shared by every
    # placement of a Placer (``scorers.plain_scorers``), so none may grow it.
    assert (ctx.zones, ctx.placed, ctx.scorers) == ({}, 0, ())
    other = PlaceContext(j, j.tasks[0], s)
    ctx.zones[("zone", "a")] = 1
    assert (other.zones, other.scorers) == ({}, ())
    options = PlaceOptions(())
    assert (options.scorers, options.loose, options.limit, options.pack) == ((), False, 4, True)
