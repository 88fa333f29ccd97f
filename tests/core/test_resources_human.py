"""Quantities for a person: binary units with one decimal, rounded to the
nearest; vectors as ``cpu=2,memory=4Gi``; the API's text made readable."""

from __future__ import annotations

import pytest

from apportion.core.reasons import short_on_node
from apportion.core.resources import (
    format_human,
    format_human_vector,
    human_quantity,
    human_vector,
)

GI, MI, KI = 1 << 30, 1 << 20, 1 << 10


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("memory", 24683792 * KI, "23.5Gi"),
        ("memory", 310 * MI, "310Mi"),
        ("memory", 3632151950, "3.4Gi"),
        ("memory", 2 * GI, "2Gi"),
        ("memory", 1023 * MI + 1_000_000, "1Gi"),  # 1023.95Mi rounds up into the next unit
        ("memory", GI + 100 * MI, "1.1Gi"),
        ("memory", GI + 25 * MI, "1Gi"),  # 1.024Gi: nearest, not up
        ("memory", 512, "512"),
        ("memory", 0, "0"),
        ("gpu_memory", 5 * (1 << 40) + (1 << 39), "5.5Ti"),
        ("storage", 1500, "1.5Ki"),
        ("cpu", 2500, "2500m"),
        ("cpu", 2000, "2"),
        ("gpu", 3, "3"),
        # Edges a mutation run found untested (docs/testing.md).
        ("memory", 1024, "1Ki"),  # exactly one unit: the largest unit <= the value, not <
        ("memory", 1023 * MI + MI // 2, "1023.5Mi"),  # rounded to one decimal, not to a whole
        ("memory", GI + 50 * MI + 200 * KI, "1Gi"),  # 1.0490Gi: rounded once, not twice
        ("memory", (1 << 60) - (1 << 40), "1Ei"),  # 1023.999Pi goes up into the last unit
        ("memory", -2 * GI, "-2Gi"),
        ("memory", -(GI + 100 * MI), "-1.1Gi"),
        ("memory", -512, "-512"),
        ("cpu", -1500, "-1500m"),  # "-1500" would read as cores
        ("cpu", -2000, "-2"),
        ("gpu", -3, "-3"),
    ],
)
def test_format_human(name: str, value: int, text: str) -> None:
    assert format_human(name, value) == text


def test_human_text_of_the_apis_quantities() -> None:
    assert human_quantity("memory", "24683792Ki") == "23.5Gi"
    assert human_quantity("memory", "16Gi") == "16Gi"
    assert human_quantity("cpu", "1500m") == "1500m"
    assert human_quantity("memory", None) == "-"
    assert human_quantity("memory", "not a number") == "not a number"
    assert human_vector({"cpu": "2", "memory": "24683792Ki", "gpu": 1}) == (
        "cpu=2,memory=23.5Gi,gpu=1"
    )


def test_a_vector_in_base_units_prints_as_pairs_not_a_dict() -> None:
    assert format_human_vector({"cpu": 2000, "memory": 4 * GI}) == "cpu=2,memory=4Gi"
    assert format_human_vector({}) == ""


def test_a_ledger_refusal_reads_in_human_units() -> None:
    short = short_on_node("n1", "memory", 6170948 * KI, 8 * GI)
    assert short.message == "Insufficient memory on node n1: 5.9Gi available, 8Gi requested"


def test_a_shortage_of_a_resource_the_node_lacks_says_so() -> None:
    short = short_on_node("n1", "gpu", 0, 2, offered=False)
    assert short.message == "node n1 has no gpu"
    assert short.shortage() == {
        "node": "n1",
        "resource": "gpu",
        "available": "0",
        "requested": "2",
        "available_base": 0,
        "requested_base": 2,
        "offered": False,
    }
    assert "offered" not in short_on_node("n1", "gpu", 1, 2).shortage()
