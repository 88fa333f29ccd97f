"""``scorers.plain_scorers``, which ``Placer`` asks once instead of
``_scorers`` and ``_per_node`` at every placement of a plain job (one
task, no affinity terms), held to what those answer per job (hypothesis):
the same plugins with their weights, in order, none of them per node, and
``native_codes`` of them; and a plugin it does not know leaves the
per-job questions in place."""

from __future__ import annotations

from hypothesis import given, settings
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
@given(options, terms, terms, st.integers(1, 3))
def test_the_per_job_answers_for_every_plain_job(
    opts: PlaceOptions, affinity: tuple[Affinity, ...], anti: tuple[Affinity, ...], count: int
) -> None:
    job = Job("j", (TaskSpec({"cpu": 1000}, count),), affinity=affinity, anti_affinity=anti)
    placer = Placer(STATE, opts)
    plain = plain_scorers(opts)
    assert plain is not None  # every built-in plugin is known
    if count > 1 or affinity or anti:
        return  # not plain: asked per job
    scorers = placer._scorers(job)
    assert plain == (scorers, native_codes(scorers))
    assert not any(p.per_node(job) for p, _ in scorers)
    assert not scored_per_node(opts, job, STATE)


class _Own(BinPack):
    """A plugin ``plain_scorers`` does not know (a subclass counts as one)."""


def test_an_unknown_plugin_keeps_the_per_job_questions() -> None:
    assert plain_scorers(PlaceOptions(((_Own(), 1.0),))) is None
    assert native_codes([(_Own(), 1.0)]) is None
    assert native_codes([(SCORERS["binpack"], 2.0), (SCORERS["spread"], 1.0)]) == (
        (1, 2.0), (2, 1.0))
    assert plain_scorers(STRATEGIES["cost"].options) == (
        [(SCORERS["cost"], 4.0), (SCORERS["binpack"], 1.0)], None)
