"""``scorers.plain_scorers``, which ``Placer`` asks once instead of
``_scorers`` and ``_per_node`` at every placement of a plain job (one
task, no affinity terms), held to what those answer per job (hypothesis):
the same plugins with their weights, in order, none of them per node, and
``native_codes`` of them; and a plugin it does not know leaves the
per-job questions in place."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apportion.core.labels import parse_selector
from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, Job, TaskSpec
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import PlaceOptions
from apportion.core.scheduling.jobs import Affinity
from apportion.core.scheduling.lone import scored_per_node
from apportion.core.scheduling.policies import STRATEGIES
from apportion.core.scheduling.scorers import SCORERS, BinPack, native_codes, plain_scorers

STATE = ClusterState([Node("n", {"cpu": 8000, "memory": 64})])
NODES = [Node(f"n{k}", {"cpu": 2000 * k, "memory": 64}, labels={"zone": "ab"[k % 2]})
         for k in range(1, 5)]

weights = st.sampled_from([0.0, 1.0, 2.5, -1.0])
any_options = st.builds(
    lambda picked, loose, limit: PlaceOptions(tuple(picked), loose=loose, limit=limit),
    st.lists(st.tuples(st.sampled_from(sorted(SCORERS.values(), key=lambda p: p.name)),
                       weights), max_size=6),
    st.booleans(), st.integers(1, 8))
options = st.one_of(st.sampled_from([s.options for s in STRATEGIES.values()]), any_options)
terms = st.lists(st.builds(Affinity, st.just(parse_selector("zone=a")),
                           st.sampled_from(["node", "job"]), st.integers(-3, 3), st.booleans()),
                 max_size=2).map(tuple)


@settings(max_examples=300, deadline=None)
@given(options)
def test_the_per_job_answers_for_every_plain_job(opts: PlaceOptions) -> None:
    job = Job("j", (TaskSpec({"cpu": 1000}),))  # plain: one task, no terms
    placer = Placer(STATE, opts)
    plain = plain_scorers(opts)
    assert plain is not None  # every built-in plugin is known
    scorers = placer._scorers(job)
    assert plain == (tuple(scorers), native_codes(scorers))
    assert isinstance(plain[0], tuple)  # shared by every placement: not a list
    assert not any(p.per_node(job) for p, _ in scorers)
    assert not scored_per_node(opts, job, STATE)


class _Poison:
    """A ``Placer._plain`` that fails the test where it is unpacked."""

    def __iter__(self) -> Any:
        raise AssertionError("a job that is not plain used the plain scorers")


@settings(max_examples=100, deadline=None)
@given(options, terms, terms, st.integers(1, 3))
def test_a_job_that_is_not_plain_asks_per_job(
    opts: PlaceOptions, affinity: tuple[Affinity, ...], anti: tuple[Affinity, ...], count: int
) -> None:
    assume(count > 1 or affinity or anti)
    job = Job("j", (TaskSpec({"cpu": 1000}, count),), affinity=affinity, anti_affinity=anti)
    state = ClusterState(NODES)
    placer = Placer(state, opts)
    placer._plain = _Poison()  # type: ignore[assignment]
    mark = state.mark()
    placed = placer.place(job).tasks
    state.rollback(mark)
    assert placed == Placer(state, opts).place(job).tasks


def test_options_are_read_only() -> None:
    placer = Placer(STATE, STRATEGIES["binpack"].options)
    with pytest.raises(AttributeError):
        placer.options = STRATEGIES["spread"].options  # type: ignore[misc]


class _Own(BinPack):
    """A plugin ``plain_scorers`` does not know (a subclass counts as one)."""


def test_an_unknown_plugin_keeps_the_per_job_questions() -> None:
    assert plain_scorers(PlaceOptions(((_Own(), 1.0),))) is None
    assert native_codes([(_Own(), 1.0)]) is None
    assert native_codes([(SCORERS["binpack"], 2.0), (SCORERS["spread"], 1.0)]) == (
        (1, 2.0), (2, 1.0))
    assert plain_scorers(STRATEGIES["cost"].options) == (
        ((SCORERS["cost"], 4.0), (SCORERS["binpack"], 1.0)), None)
