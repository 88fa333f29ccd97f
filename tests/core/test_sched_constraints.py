"""Job constraints (``core/scheduling/constraints.py``): parsing into label
and device terms, each device operator at its edges, comparisons in units,
the refusals' words, and the text a constraint set prints as. Literal
values, written for the mutants of ``constraints.py`` (docs/testing.md).
"""

from __future__ import annotations

import pytest

from apportion.core.errors import InvalidInput
from apportion.core.labels import LabelRequirement, parse_selector
from apportion.core.model import Device
from apportion.core.scheduling.constraints import (
    Constraints,
    DeviceRequirement,
    check_comparisons,
    family,
    labels_match,
    parse_constraints,
)

GI = 1 << 30


def test_the_family_is_what_comes_before_the_first_dot() -> None:
    assert [family(r) for r in ("gpu", "gpu.shares", "a.b.c")] == ["gpu", "gpu", "a"]


def test_constraint_text_splits_on_top_level_commas_into_labels_and_devices() -> None:
    c = parse_constraints(
        "facility=texas-1, type in (cpu,gpu),!spot, gpu.model in (A100,H100), "
        "gpu.memory>=40Gi, gpu.count<4, fpga.x=1"
    )
    assert c == Constraints(
        (
            LabelRequirement("facility", "=", ("texas-1",)),
            LabelRequirement("type", "in", ("cpu", "gpu")),
            LabelRequirement("spot", "!exists", ()),
            LabelRequirement("fpga.x", "=", ("1",)),
        ),
        (
            DeviceRequirement("gpu", "model", "in", ("A100", "H100")),
            DeviceRequirement("gpu", "memory", ">=", ("40Gi",)),
            DeviceRequirement("gpu", "count", "<", ("4",)),
        ),
    )
    assert c.describe() == (
        "facility=texas-1,type in (cpu,gpu),!spot,fpga.x=1,"
        "gpu.model in (A100,H100),gpu.memory>=40Gi,gpu.count<4"
    )
    assert parse_constraints("") == Constraints()
    assert parse_constraints("a=1,,b=2") == Constraints(
        (LabelRequirement("a", "=", ("1",)), LabelRequirement("b", "=", ("2",))))


def test_a_list_of_texts_and_the_families_given_are_read_too() -> None:
    c = parse_constraints(["a=1,b in (x,y)", "tpu.numa=0", "gpu.model=T4"], ("tpu",))
    assert c == Constraints(
        (LabelRequirement("a", "=", ("1",)), LabelRequirement("b", "in", ("x", "y")),
         LabelRequirement("gpu.model", "=", ("T4",))),
        (DeviceRequirement("tpu", "numa", "=", ("0",)),),
    )
    # A key with more dots keeps them in the attribute.
    assert parse_constraints("gpu.a.b=1, gpu.c.d>2").devices == (
        DeviceRequirement("gpu", "a.b", "=", ("1",)), DeviceRequirement("gpu", "c.d", ">", ("2",)))


def refused(make: object) -> tuple[str, dict[str, object]]:
    assert callable(make)
    with pytest.raises(InvalidInput) as caught:
        make()
    return caught.value.message, caught.value.data


def test_a_comparison_applies_to_device_attributes_only() -> None:
    words = "comparisons (>=, <=, >, <) apply to device attributes such as gpu.memory>=40Gi"
    assert refused(lambda: parse_constraints("rack>3", field="spec.c")) == (
        f"spec.c: 'rack>3': {words}", {"field": "spec.c"})
    assert refused(lambda: parse_constraints("gpu>3")) == (
        f"constraints: 'gpu>3': {words}", {"field": "constraints"})
    assert refused(lambda: parse_constraints("x=(", field="f"))[1] == {"field": "f"}


def test_a_comparison_with_no_number_is_refused_in_words_for_its_attribute() -> None:
    check_comparisons(parse_constraints("gpu.memory>=40Gi, gpu.cores<8, gpu.model=A100"))
    assert refused(lambda: check_comparisons(
        parse_constraints("gpu.model=T4, gpu.memory>=40Gx"), "spec.c")) == (
        "spec.c: gpu.memory>=40Gx: '40Gx' is not a size such as 40Gi or 80G", {"field": "spec.c"})
    assert refused(lambda: check_comparisons(parse_constraints("gpu.cores>=many"))) == (
        "constraints: gpu.cores>=many: 'many' is not a whole number", {"field": "constraints"})


def test_each_device_operator_on_a_value_and_on_none() -> None:
    def req(op: str, *values: str) -> DeviceRequirement:
        return DeviceRequirement("gpu", "model", op, values)

    cases = {
        "exists": req("exists"), "!exists": req("!exists"), "=": req("=", "A100"),
        "in": req("in", "A100", "H100"), "!=": req("!=", "A100"),
        "notin": req("notin", "A100", "H100"),
    }
    answers = {op: (r.matches("A100"), r.matches("T4"), r.matches(None))
               for op, r in cases.items()}
    assert answers == {
        "exists": (True, True, False), "!exists": (False, False, True),
        "=": (True, False, False), "in": (True, False, False),
        "!=": (False, True, True), "notin": (False, True, True),
    }
    # A missing value is no text, not the text "None".
    assert DeviceRequirement("gpu", "model", "=", ("None",)).matches(None) is False
    assert DeviceRequirement("gpu", "model", "notin", ("None",)).matches(None) is True
    # A number is compared as its text.
    assert DeviceRequirement("gpu", "numa", "=", ("1",)).matches(1) is True


def test_comparisons_at_their_edge_in_units_and_on_what_is_no_number() -> None:
    def cmp(op: str, want: str, have: object, attr: str = "memory") -> bool:
        return DeviceRequirement("gpu", attr, op, (want,)).matches(have)

    at, below, above = 40 * GI, 40 * GI - 1, 40 * GI + 1
    assert [cmp(">=", "40Gi", v) for v in (below, at, above)] == [False, True, True]
    assert [cmp("<=", "40Gi", v) for v in (below, at, above)] == [True, True, False]
    assert [cmp(">", "40Gi", v) for v in (below, at, above)] == [False, False, True]
    assert [cmp("<", "40Gi", v) for v in (below, at, above)] == [True, False, False]
    assert cmp(">=", "40Gi", "40Gi") is True
    assert (cmp(">=", "40G", 37 * GI), cmp(">=", "40G", 38 * GI)) == (False, True)  # 40e9
    assert [cmp(">", "3", v, "cores") for v in (3, "4", 4)] == [False, True, True]
    assert cmp(">=", "1", None, "cores") is False
    assert cmp(">=", "1", "many", "cores") is False
    assert cmp(">=", "many", 5, "cores") is False
    assert cmp(">=", "1", True, "cores") is False  # a flag is no count
    assert cmp(">=", "1Ki", 1024, "hbm_memory") is True


def test_a_device_term_reads_model_memory_or_an_attribute() -> None:
    card = Device("g0", "A100", 40 * GI, attrs={"numa": 1, "model": "fake"})
    assert DeviceRequirement("gpu", "model", "=", ("A100",)).matches_device(card) is True
    assert DeviceRequirement("gpu", "memory", ">=", ("40Gi",)).matches_device(card) is True
    assert DeviceRequirement("gpu", "numa", "=", ("1",)).matches_device(card) is True
    assert DeviceRequirement("gpu", "nvlink", "exists").matches_device(card) is False


def test_a_device_term_prints_as_it_was_written() -> None:
    assert [str(d) for d in (
        DeviceRequirement("gpu", "model", "notin", ("T4", "K80")),
        DeviceRequirement("gpu", "numa", "exists"),
        DeviceRequirement("gpu", "cores", "<", ("8",)),
        DeviceRequirement("gpu", "memory", ">=", ("40Gi",)),
    )] == ["gpu.model notin (T4,K80)", "gpu.numa", "gpu.cores<8", "gpu.memory>=40Gi"]


def test_a_constraint_set_is_true_when_it_has_any_term() -> None:
    label = parse_selector("a=1")
    dev = (DeviceRequirement("gpu", "model", "=", ("A100",)),)
    assert [bool(c) for c in (Constraints(), Constraints(label), Constraints((), dev),
                              Constraints(label, dev))] == [False, True, True, True]
    c = Constraints(label, (*dev, DeviceRequirement("tpu", "numa", "=", ("0",))))
    assert c.device_terms("gpu") == dev
    assert c.device_terms("fpga") == ()


def test_labels_match_names_the_first_requirement_that_fails() -> None:
    reqs = (*parse_selector("a=1"), *parse_selector("b in (x,y)"), *parse_selector("!c"))
    assert labels_match({"a": "1", "b": "x"}, reqs) is None
    assert labels_match({"a": "1", "b": "z", "c": "1"}, reqs) == reqs[1]
    assert labels_match({"a": "2", "b": "z"}, reqs) == reqs[0]
