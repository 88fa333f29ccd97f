"""``fastindex.maker``: the compiled constructor of the frozen slots
dataclasses made at each placement gives the object the class makes (the
same fields, equal, collected), and is the class itself
where it cannot be used."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from dataclasses import astuple, dataclass, field
from dataclasses import fields as _fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.core.frozen import quick_init
from apportion.core.scheduling import fastindex
from apportion.core.scheduling.cycleconfig import Placement
from apportion.core.scheduling.fastindex import maker
from apportion.core.scheduling.jobs import Job, RunningJob, TaskPlacement, TaskSpec

native = pytest.mark.skipif(fastindex.frozen is None, reason="the compiled index is not built")

JOB = Job("j", (TaskSpec({"cpu": 1}),))
amounts = st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), st.integers(1, 2**62))


@native
@given(st.text(max_size=8), amounts, st.integers(1, 9), st.floats(allow_nan=False),
       st.none() | st.floats(0, 1e9), st.booleans(), st.lists(st.text(max_size=4), max_size=3))
def test_the_compiled_constructor_makes_what_the_class_makes(
    node: str, resources: dict[str, int], count: int, start: float, estimate: float | None,
    backfilled: bool, victims: list[str],
) -> None:
    tp = maker(TaskPlacement)(node, resources, {}, count)
    assert type(tp) is TaskPlacement and tp == TaskPlacement(node, resources, {}, count)
    assert astuple(tp) == (node, resources, {}, count) and tp.resources is resources
    rj = maker(RunningJob)(JOB, start, (tp,), estimate)
    assert rj == RunningJob(JOB, start, (tp,), estimate) and rj.tasks[0] is tp
    args = ("j", (tp,), start, estimate, backfilled, tuple(victims))
    made = maker(Placement)(*args)
    assert made == Placement(*args) and astuple(made) == astuple(Placement(*args))
    with pytest.raises(AttributeError):
        made.start = 1.0  # type: ignore[misc]  # still frozen


@native
def test_the_compiled_constructor_counts_its_references() -> None:
    make = maker(TaskPlacement)
    resources = {"cpu": 1}
    before = sys.getrefcount(resources), sys.getrefcount(TaskPlacement)
    for _ in range(1000):
        make("n", resources, {}, 1)
    gc.collect()
    assert (sys.getrefcount(resources), sys.getrefcount(TaskPlacement)) == before
    with pytest.raises(TypeError, match="4 values expected, 1 given"):
        make("n")


@quick_init
@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: int = 0


@dataclass(frozen=True, slots=True)
class _Checked:
    a: int

    def __post_init__(self) -> None:
        assert self.a >= 0


@dataclass(frozen=True)
class _NoSlots:
    a: int


@dataclass(frozen=True, slots=True)
class _Derived:
    a: int
    b: list[int] = field(init=False, default_factory=list)


def test_the_class_itself_where_the_compiled_one_cannot_stand_for_it(
    monkeypatch: Any,
) -> None:
    for cls in (_Checked, _NoSlots, _Derived):
        assert maker(cls) is cls
    assert (maker(_Plain) is _Plain) == (fastindex.frozen is None)
    assert maker(_Plain)(1, 2) == _Plain(1, 2)
    monkeypatch.setattr(fastindex, "frozen", None)
    assert maker(TaskPlacement) is TaskPlacement


@dataclass(frozen=True, slots=True, init=False)
class _OwnInit:
    a: int

    def __init__(self, a: int) -> None:
        object.__setattr__(self, "a", abs(a))


@dataclass(frozen=True, slots=True)
class _Generated:
    a: int


def test_only_quick_init_classes_are_built() -> None:
    """A hand-written ``__init__`` (and a dataclass's own) is kept."""
    assert maker(_OwnInit) is _OwnInit and maker(_OwnInit)(-3).a == 3
    assert maker(_Generated) is _Generated


@native
def test_the_compiled_constructor_refuses_what_is_not_a_member_descriptor() -> None:
    """Called directly with bad slots it raises, not crashes (the C setter
    would be called on a non-descriptor)."""
    code = ("from apportion.core.scheduling._freeindex_c import frozen\n"
            "from apportion.core.scheduling.jobs import TaskPlacement\n"
            "try:\n    frozen(TaskPlacement, (1, 2, 3, 4), 'a', {}, {}, 1)\n"
            "except TypeError as e:\n    print('TypeError', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0 and done.stdout.startswith("TypeError"), done


@pytest.mark.parametrize("cls,args", [
    (TaskPlacement, ("n", {"cpu": 1}, {}, 1)),
    (RunningJob, (JOB, 0.0, (), None)),
    (Placement, ("j", (), 0.0, None, False, ())),
])
def test_every_field_given_positionally_works_on_both_paths(
    monkeypatch: Any, cls: Any, args: tuple[Any, ...]
) -> None:
    made = maker(cls)(*args)
    monkeypatch.setattr(fastindex, "frozen", None)
    assert maker(cls) is cls and cls(*args) == made
    with pytest.raises(TypeError):
        maker(cls)(*args, **{_fields(cls)[0].name: args[0]})  # given twice


def test_a_made_object_pickles_copies_and_replaces_like_the_class() -> None:
    import copy
    import pickle
    from dataclasses import replace

    tp = maker(TaskPlacement)("n", {"cpu": 1}, {}, 2)
    assert pickle.loads(pickle.dumps(tp)) == tp == copy.copy(tp) == copy.deepcopy(tp)
    assert replace(tp, count=3) == TaskPlacement("n", {"cpu": 1}, {}, 3)
    made = maker(Placement)("j", (tp,), 1.0, None, False, ())
    assert pickle.loads(pickle.dumps(made)) == made
