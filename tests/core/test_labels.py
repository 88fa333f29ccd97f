"""Label selectors: parsing every operator, matching, and the errors."""

from __future__ import annotations

import pytest

from apportion.core.labels import LabelRequirement, matches, parse_selector
from apportion.exceptions import InvalidInput

TEXAS_A100 = {"facility": "texas-1", "type": "gpu", "gpu.model": "A100", "zone": "a"}
OSLO_CPU = {"facility": "oslo", "type": "cpu"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("facility=texas-1", (LabelRequirement("facility", "=", ("texas-1",)),)),
        ("facility==texas-1", (LabelRequirement("facility", "=", ("texas-1",)),)),
        ("facility!=texas-1", (LabelRequirement("facility", "!=", ("texas-1",)),)),
        (" facility = texas-1 ", (LabelRequirement("facility", "=", ("texas-1",)),)),
        ("zone=", (LabelRequirement("zone", "=", ("",)),)),
        ("gpu.model in (A100,H100)", (LabelRequirement("gpu.model", "in", ("A100", "H100")),)),
        ("gpu.model in(A100, H100 )", (LabelRequirement("gpu.model", "in", ("A100", "H100")),)),
        ("gpu.model notin (V100)", (LabelRequirement("gpu.model", "notin", ("V100",)),)),
        ("gpu.model in (A100,,H100,)", (LabelRequirement("gpu.model", "in", ("A100", "H100")),)),
        ("gpu", (LabelRequirement("gpu", "exists"),)),
        ("!gpu", (LabelRequirement("gpu", "!exists"),)),
        ("! gpu", (LabelRequirement("gpu", "!exists"),)),
        ("example.com/rack", (LabelRequirement("example.com/rack", "exists"),)),
        (
            "facility=texas-1,gpu.model in (A100,H100),!spot,zone notin (b,c),type!=cpu",
            (
                LabelRequirement("facility", "=", ("texas-1",)),
                LabelRequirement("gpu.model", "in", ("A100", "H100")),
                LabelRequirement("spot", "!exists"),
                LabelRequirement("zone", "notin", ("b", "c")),
                LabelRequirement("type", "!=", ("cpu",)),
            ),
        ),
        ("a=1,,b=2,", (LabelRequirement("a", "=", ("1",)), LabelRequirement("b", "=", ("2",)))),
        ("", ()),
        (" , ", ()),
    ],
)
def test_parse_selector(text: str, expected: tuple[LabelRequirement, ...]) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("facility===texas", "facility===texas"),
        ("=texas", "=texas"),
        ("!facility=texas", "!facility=texas"),
        ("facility=texas=1", "facility=texas=1"),
        ("gpu.model in A100", "gpu.model in A100"),
        ("gpu.model in (A100,H100", "gpu.model in (A100,H100"),
        ("facility is texas", "facility is texas"),
        ("a=1,(b)", "(b)"),
        ("-x", "-x"),
    ],
)
def test_parse_selector_errors_name_the_term(text: str, term: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_selector(text, field="constraints.selector")
    assert info.value.message == (
        f"constraints.selector: cannot parse {term!r}; use key=value, key!=value, "
        "key in (a,b), key notin (a,b), key or !key"
    )
    assert info.value.data == {"field": "constraints.selector"}


@pytest.mark.parametrize("text", ["gpu.model in ()", "gpu.model notin ( , )"])
def test_empty_value_list_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_selector(text)
    assert info.value.message == f"selector: {text!r} lists no values"
    assert info.value.data == {"field": "selector"}


def test_unbalanced_closing_parenthesis_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_selector("zone in a,b)")
    assert info.value.message.startswith("selector: cannot parse 'zone in a'")


@pytest.mark.parametrize(
    ("text", "texas", "oslo"),
    [
        ("facility=texas-1", True, False),
        ("facility==oslo", False, True),
        ("facility!=texas-1", False, True),
        ("gpu.model!=A100", False, True),  # a missing key is "not equal"
        ("gpu.model in (A100,H100)", True, False),
        ("gpu.model in (H100)", False, False),
        ("gpu.model notin (A100)", False, True),  # a missing key is "not in"
        ("gpu.model notin (V100,H100)", True, True),
        ("zone", True, False),
        ("!zone", False, True),
        ("type in (gpu,cpu)", True, True),
        ("facility=texas-1,type=gpu,gpu.model in (A100,H100),zone", True, False),
        ("facility in (texas-1,oslo),!spot", True, True),
        ("facility in (texas-1,oslo),type=asic", False, False),
        ("zone=", False, False),
        ("", True, True),
    ],
)
def test_matches(text: str, texas: bool, oslo: bool) -> None:
    requirements = parse_selector(text)
    assert matches(TEXAS_A100, requirements) is texas
    assert matches(OSLO_CPU, requirements) is oslo


def test_empty_label_value_matches_equal_empty() -> None:
    assert matches({"zone": ""}, parse_selector("zone=")) is True
    assert matches({"zone": ""}, parse_selector("zone")) is True


@pytest.mark.parametrize(
    "text",
    [
        "facility=texas-1",
        "facility!=texas-1",
        "gpu.model in (A100,H100)",
        "gpu.model notin (V100)",
        "gpu",
        "!gpu",
    ],
)
def test_requirement_prints_as_parsed(text: str) -> None:
    (requirement,) = parse_selector(text)
    assert str(requirement) == text
    assert parse_selector(str(requirement)) == (requirement,)
