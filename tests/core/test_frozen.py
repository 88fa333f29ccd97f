"""``quick_init`` makes the same instances as the dataclass's own constructor:
each class it is applied to is compared with a twin built by ``dataclasses``
alone from the same fields, called the same ways."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.core.frozen import quick_init
from apportion.core.scheduling.cycle import CycleResult, Placement
from apportion.core.scheduling.jobs import RunningJob, TaskPlacement
from apportion.core.scheduling.status import PlaceResult
from apportion.core.simulator import JobRecord

QUICK = (Placement, CycleResult, RunningJob, TaskPlacement, JobRecord, PlaceResult)


def _twin(cls: type) -> type:
    """``cls``'s fields in a frozen slots dataclass with the generated ``__init__``."""
    fields = []
    for f in dataclasses.fields(cls):
        spec = dataclasses.field()
        if f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            spec = dataclasses.field(default_factory=f.default_factory)
        fields.append((f.name, Any, spec))
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True, slots=True)


def _values(obj: object) -> list[Any]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", QUICK)
@given(data=st.data())
def test_instances_equal_the_generated_constructors(cls: type, data: st.DataObject) -> None:
    twin = _twin(cls)
    fields = dataclasses.fields(cls)
    required = sum(1 for f in fields if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
    n = data.draw(st.integers(required, len(fields)))
    args = [data.draw(st.one_of(st.integers(), st.text(max_size=3), st.none()))
            for _ in range(n)]
    as_keywords = data.draw(st.booleans())
    if as_keywords:
        kwargs = {f.name: a for f, a in zip(fields, args, strict=False)}
        quick, plain = cls(**kwargs), twin(**kwargs)
    else:
        quick, plain = cls(*args), twin(*args)
    assert _values(quick) == _values(plain)
    assert quick == cls(*_values(plain))
    assert type(quick) is cls


def test_defaults_factories_and_frozenness_stay() -> None:
    a, b = TaskPlacement("n0", {"gpu": 1}), TaskPlacement("n0", {"gpu": 1})
    assert a.devices == {} and a.count == 1
    assert a.devices is not b.devices  # a fresh dict each, as before
    assert a == b and hash(RunningJob(None, 1.0, ())) == hash(  # type: ignore[arg-type]
        RunningJob(None, 1.0, ()))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.count = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        TaskPlacement()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        TaskPlacement("n0", {}, {}, 1, 2)  # type: ignore[call-arg]
    assert dataclasses.replace(a, count=3).count == 3


def test_it_refuses_a_class_it_would_change() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        x: int

    for cls in (Checked, Unslotted):
        with pytest.raises(TypeError):
            quick_init(cls)
