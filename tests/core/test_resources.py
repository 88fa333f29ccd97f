"""Resource quantities: literal parse/format tables, every rejection, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.resources import (
    MAX_QUANTITY,
    Unit,
    add,
    check_name,
    fits,
    format_quantity,
    format_vector,
    parse_quantity,
    parse_vector,
    subtract,
    unit_of,
)
from apportion.exceptions import InvalidQuantity, InvalidResourceName

KINDS = ["cpu", "memory", "storage", "gpu", "gpu.memory", "asic.s19", "fpga", "license.matlab"]

# -- parse_quantity: accepted values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        # cpu: millicores; bare numbers are cores
        ("cpu", "500m", 500),
        ("cpu", "2", 2000),
        ("cpu", "1.5", 1500),
        ("cpu", ".5", 500),
        ("cpu", "2.", 2000),
        ("cpu", "0.001", 1),
        ("cpu", "1000m", 1000),
        ("cpu", "0", 0),
        ("cpu", "0m", 0),
        ("cpu", " 2 ", 2000),
        ("cpu", "+3", 3000),
        ("cpu", "-0", 0),
        ("cpu", 2, 2000),
        ("cpu", 0, 0),
        ("cpu", 1.5, 1500),
        ("cpu", 0.25, 250),
        ("cpu", "9223372036854775807m", 9223372036854775807),
        ("cpu", "9223372036854775.807", 9223372036854775807),
        # memory and storage: bytes
        ("memory", "16Gi", 17179869184),
        ("memory", "512Mi", 536870912),
        ("memory", "1Ki", 1024),
        ("memory", "1.5Gi", 1610612736),
        ("memory", "1Ti", 1099511627776),
        ("memory", "1Pi", 1125899906842624),
        ("memory", "1Ei", 1152921504606846976),
        ("memory", "7Ei", 8070450532247928832),
        ("memory", "1K", 1000),
        ("memory", "1k", 1000),
        ("memory", "2M", 2000000),
        ("memory", "100G", 100000000000),
        ("memory", "2T", 2000000000000),
        ("memory", "1.5T", 1500000000000),
        ("memory", "3P", 3000000000000000),
        ("memory", "1E", 1000000000000000000),
        ("memory", "7", 7),
        ("memory", 1024, 1024),
        ("memory", 2.0, 2),
        ("storage", "2T", 2000000000000),
        ("storage", "1Ti", 1099511627776),
        ("storage", "16Gi", 17179869184),
        ("gpu.memory", "80Gi", 85899345920),
        # countable resources: whole units
        ("gpu", "2", 2),
        ("gpu", 4, 4),
        ("gpu", "2.0", 2),
        ("gpu", "1K", 1000),
        ("gpu", "9223372036854775807", 9223372036854775807),
        ("gpu", 9223372036854775807, 9223372036854775807),
        ("asic.s19", "3", 3),
        ("fpga", 1, 1),
        ("license.matlab", "10", 10),
    ],
)
def test_parse_quantity(name: str, value: object, expected: int) -> None:
    assert parse_quantity(name, value) == expected


# -- parse_quantity: every rejection names the field -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # negative
        ("cpu", "-1", "resources.cpu: '-1' is negative; quantities are >= 0"),
        ("memory", "-16Gi", "resources.memory: '-16Gi' is negative; quantities are >= 0"),
        ("gpu", -2, "resources.gpu: '-2' is negative; quantities are >= 0"),
        ("cpu", -0.5, "resources.cpu: '-0.5' is negative; quantities are >= 0"),
        # unknown units
        (
            "memory",
            "16GB",
            "resources.memory: unknown unit 'GB' in '16GB'; use m (cpu only), "
            "Ki Mi Gi Ti Pi Ei or K M G T P E",
        ),
        (
            "memory",
            "1gi",
            "resources.memory: unknown unit 'gi' in '1gi'; use m (cpu only), "
            "Ki Mi Gi Ti Pi Ei or K M G T P E",
        ),
        (
            "gpu",
            "2x",
            "resources.gpu: unknown unit 'x' in '2x'; use m (cpu only), "
            "Ki Mi Gi Ti Pi Ei or K M G T P E",
        ),
        (
            "cpu",
            "2cores",
            "resources.cpu: unknown unit 'cores' in '2cores'; use m (cpu only), "
            "Ki Mi Gi Ti Pi Ei or K M G T P E",
        ),
        (
            "cpu",
            "2Gi",
            "resources.cpu: '2Gi': cpu takes cores ('2', '1.5') or millicores ('500m'), "
            "not byte units",
        ),
        (
            "cpu",
            "1K",
            "resources.cpu: '1K': cpu takes cores ('2', '1.5') or millicores ('500m'), "
            "not byte units",
        ),
        ("memory", "500m", "resources.memory: '500m' uses 'm' (milli), which only cpu accepts"),
        ("gpu", "1m", "resources.gpu: '1m' uses 'm' (milli), which only cpu accepts"),
        # fractions of indivisible units
        ("gpu", "0.5", "resources.gpu: '0.5' is a fraction; gpu is counted in whole units"),
        ("gpu", 0.5, "resources.gpu: '0.5' is a fraction; gpu is counted in whole units"),
        ("fpga", "1.5", "resources.fpga: '1.5' is a fraction; fpga is counted in whole units"),
        (
            "asic.s19",
            "2.25",
            "resources.asic.s19: '2.25' is a fraction; asic.s19 is counted in whole units",
        ),
        (
            "cpu",
            "0.0005",
            "resources.cpu: '0.0005' is a fraction; cpu is counted in whole millicores",
        ),
        ("cpu", "1.5m", "resources.cpu: '1.5m' is a fraction; cpu is counted in whole millicores"),
        (
            "memory",
            "1.5",
            "resources.memory: '1.5' is a fraction; memory and storage are counted in whole bytes",
        ),
        (
            "storage",
            "0.1Ki",
            "resources.storage: '0.1Ki' is a fraction; memory and storage are counted in "
            "whole bytes",
        ),
        # more significant digits than Decimal's default 28-digit context keeps
        (
            "cpu",
            "1.0000000000000000000000000001",
            "resources.cpu: '1.0000000000000000000000000001' is a fraction; cpu is counted "
            "in whole millicores",
        ),
        (
            "gpu",
            "1.00000000000000000000000000001",
            "resources.gpu: '1.00000000000000000000000000001' is a fraction; gpu is counted "
            "in whole units",
        ),
        (
            "memory",
            "1.0000000000000000000000000001Ki",
            "resources.memory: '1.0000000000000000000000000001Ki' is a fraction; memory and "
            "storage are counted in whole bytes",
        ),
        # too large: the limit is 2^63-1
        (
            "gpu",
            "9223372036854775808",
            "resources.gpu: '9223372036854775808' is too large; the limit is 2^63-1 units",
        ),
        (
            "gpu",
            9223372036854775808,
            "resources.gpu: '9223372036854775808' is too large; the limit is 2^63-1 units",
        ),
        (
            "cpu",
            "9223372036854776",
            "resources.cpu: '9223372036854776' is too large; the limit is 2^63-1 millicores",
        ),
        (
            "cpu",
            "9223372036854775808m",
            "resources.cpu: '9223372036854775808m' is too large; the limit is 2^63-1 millicores",
        ),
        ("memory", "8Ei", "resources.memory: '8Ei' is too large; the limit is 2^63-1 bytes"),
        ("storage", "10E", "resources.storage: '10E' is too large; the limit is 2^63-1 bytes"),
        (
            "memory",
            "99999999999999999999999999999999",
            "resources.memory: '99999999999999999999999999999999' is too large; "
            "the limit is 2^63-1 bytes",
        ),
        ("gpu", 1e300, "resources.gpu: '1e+300' is too large; the limit is 2^63-1 units"),
        # not a quantity at all
        ("cpu", "", "resources.cpu: cannot parse '' as a quantity"),
        ("cpu", "abc", "resources.cpu: cannot parse 'abc' as a quantity"),
        ("memory", "1e3", "resources.memory: cannot parse '1e3' as a quantity"),
        ("memory", "1,5Gi", "resources.memory: cannot parse '1,5Gi' as a quantity"),
        ("memory", "1 000", "resources.memory: cannot parse '1 000' as a quantity"),
        ("gpu", "--1", "resources.gpu: cannot parse '--1' as a quantity"),
        ("gpu", ".", "resources.gpu: cannot parse '.' as a quantity"),
        ("gpu", "Gi", "resources.gpu: cannot parse 'Gi' as a quantity"),
        ("gpu", True, "resources.gpu: expected a quantity, got a boolean"),
        ("gpu", False, "resources.gpu: expected a quantity, got a boolean"),
        ("gpu", None, "resources.gpu: expected a string or number, got NoneType"),
        ("gpu", [1], "resources.gpu: expected a string or number, got list"),
        ("gpu", {"n": 1}, "resources.gpu: expected a string or number, got dict"),
        ("cpu", float("nan"), "resources.cpu: nan is not a number"),
        ("cpu", float("inf"), "resources.cpu: inf is not a number"),
        ("cpu", float("-inf"), "resources.cpu: -inf is not a number"),
    ],
)
def test_parse_quantity_rejects(name: str, value: object, message: str) -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_quantity(name, value)
    assert info.value.message.startswith(message)
    assert info.value.data == {"field": f"resources.{name}"}
    assert info.value.code == "invalid_quantity"


def test_parse_quantity_names_the_callers_field() -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_quantity("gpu", "0.5", field="tasks[1].resources")
    assert info.value.message == (
        "tasks[1].resources.gpu: '0.5' is a fraction; gpu is counted in whole units"
    )
    assert info.value.data == {"field": "tasks[1].resources.gpu"}


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("cpu", Unit.MILLI),
        ("memory", Unit.BYTES),
        ("storage", Unit.BYTES),
        ("gpu.memory", Unit.BYTES),
        ("scratch-storage", Unit.BYTES),
        ("gpu", Unit.COUNT),
        ("asic.s19", Unit.COUNT),
        ("fpga", Unit.COUNT),
        ("license.matlab", Unit.COUNT),
        ("cpu.shares", Unit.COUNT),
    ],
)
def test_unit_of(name: str, unit: Unit) -> None:
    assert unit_of(name) is unit


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["cpu", "a", "0gpu", "asic.s19", "license.matlab", "x_y-z.1", "a" * 63]
)
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["GPU", "gpu model", "", "-gpu", ".gpu", "_x", "gpu!", "a" * 64])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(InvalidResourceName) as info:
        check_name(name, "nodes[0].resources")
    assert info.value.message == (
        f"nodes[0].resources: resource name {name!r} is invalid; use 1-63 lowercase letters, "
        "digits, '.', '_' or '-', starting with a letter or digit"
    )
    assert info.value.data == {"field": "nodes[0].resources"}


# -- parse_vector ----------------------------------------------------------------------------------


def test_parse_vector_parses_every_kind_and_drops_zeros() -> None:
    vector = parse_vector(
        {
            "cpu": "500m",
            "memory": "16Gi",
            "storage": "2T",
            "gpu": 2,
            "asic.s19": "3",
            "license.matlab": 1,
            "fpga": "0",
            "gpu.memory": "0Gi",
        }
    )
    assert vector == {
        "cpu": 500,
        "memory": 17179869184,
        "storage": 2000000000000,
        "gpu": 2,
        "asic.s19": 3,
        "license.matlab": 1,
    }


def test_parse_vector_of_nothing_is_empty() -> None:
    assert parse_vector({}) == {}


@pytest.mark.parametrize(
    ("values", "message", "field"),
    [
        (
            {"cpu": "1", "gpu": "0.5"},
            "resources.gpu: '0.5' is a fraction; gpu is counted in whole units",
            "resources.gpu",
        ),
        (
            {"memory": "-1Gi"},
            "resources.memory: '-1Gi' is negative; quantities are >= 0",
            "resources.memory",
        ),
        (
            {"storage": "4XB"},
            "resources.storage: unknown unit 'XB' in '4XB'",
            "resources.storage",
        ),
        (
            {"fpga": 2**63},
            "resources.fpga: '9223372036854775808' is too large; the limit is 2^63-1 units",
            "resources.fpga",
        ),
        (["cpu"], "resources: expected an object of resource: quantity", "resources"),
        ("cpu=1", "resources: expected an object of resource: quantity", "resources"),
    ],
)
def test_parse_vector_rejects_bad_quantities(values: object, message: str, field: str) -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_vector(values)  # type: ignore[arg-type]
    assert info.value.message.startswith(message)
    assert info.value.data == {"field": field}


@pytest.mark.parametrize("name", ["GPU", "my gpu", "", 7])
def test_parse_vector_rejects_bad_names(name: object) -> None:
    with pytest.raises(InvalidResourceName) as info:
        parse_vector({name: "1"})  # type: ignore[dict-item]
    assert info.value.message.startswith(f"resources: resource name {name!r} is invalid")
    assert info.value.data == {"field": "resources"}


def test_parse_vector_uses_the_callers_field() -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_vector({"gpu": "1.5"}, field="tasks[0].resources")
    assert info.value.data == {"field": "tasks[0].resources.gpu"}
    assert info.value.message.startswith("tasks[0].resources.gpu: ")
    with pytest.raises(InvalidResourceName) as bad_name:
        parse_vector({"GPU": "1"}, field="tasks[0].resources")
    assert bad_name.value.data == {"field": "tasks[0].resources"}


def test_check_name_names_the_resources_field_by_default() -> None:
    with pytest.raises(InvalidResourceName) as info:
        check_name("GPU")
    assert info.value.data == {"field": "resources"}
    assert info.value.message.startswith("resources: resource name 'GPU' is invalid")


def test_unparseable_text_gets_examples_of_what_parses() -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_quantity("memory", "lots")
    assert info.value.message == (
        "resources.memory: cannot parse 'lots' as a quantity (examples: '2', '500m', "
        "'1.5', '16Gi', '100G')"
    )


# -- format_quantity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("cpu", 0, "0"),
        ("cpu", 1, "1m"),
        ("cpu", 500, "500m"),
        ("cpu", 1500, "1500m"),
        ("cpu", 2000, "2"),
        ("cpu", 64000, "64"),
        ("cpu", 9223372036854775807, "9223372036854775807m"),
        ("cpu", 9223372036854775000, "9223372036854775"),
        ("memory", 0, "0"),
        ("memory", 7, "7"),
        ("memory", 1536, "1536"),
        ("memory", 1024, "1Ki"),
        ("memory", 1000, "1K"),
        ("memory", 536870912, "512Mi"),
        ("memory", 17179869184, "16Gi"),
        ("memory", 1610612736, "1536Mi"),
        ("memory", 1099511627776, "1Ti"),
        ("memory", 1125899906842624, "1Pi"),
        ("memory", 1152921504606846976, "1Ei"),
        ("memory", 100000000000, "100G"),
        ("memory", 2000000000000, "2T"),
        ("memory", 1500000000000, "1500G"),
        ("memory", 1000000000000000000, "1E"),
        ("memory", 2000000000000000, "2P"),
        ("memory", 3000000, "3M"),
        ("memory", 1024000, "1024K"),
        ("memory", 1073741824000, "1000Gi"),
        ("memory", 9223372036854775807, "9223372036854775807"),
        ("storage", 2000000000000, "2T"),
        ("gpu.memory", 85899345920, "80Gi"),
        ("gpu", 0, "0"),
        ("gpu", 8, "8"),
        ("gpu", 1024, "1024"),
        ("gpu", 1000, "1000"),
        ("asic.s19", 9223372036854775807, "9223372036854775807"),
        ("license.matlab", 3, "3"),
    ],
)
def test_format_quantity(name: str, value: int, text: str) -> None:
    assert format_quantity(name, value) == text
    assert parse_quantity(name, text) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("cpu", "500m"),
        ("cpu", "2"),
        ("memory", "16Gi"),
        ("memory", "512Mi"),
        ("memory", "2T"),
        ("memory", "100G"),
        ("storage", "1Pi"),
        ("gpu", "4"),
        ("asic.s19", "120"),
    ],
)
def test_canonical_text_prints_as_written(name: str, text: str) -> None:
    assert format_quantity(name, parse_quantity(name, text)) == text


@pytest.mark.parametrize(
    ("name", "text", "canonical"),
    [
        ("cpu", "1.5", "1500m"),
        ("cpu", "2000m", "2"),
        ("cpu", 4, "4"),
        ("memory", "1.5Gi", "1536Mi"),
        ("memory", "1024Mi", "1Gi"),
        ("memory", "0.5Ki", "512"),
        ("memory", "1000M", "1G"),
        ("memory", "1k", "1K"),
        ("gpu", "2.0", "2"),
        ("gpu", "1K", "1000"),
    ],
)
def test_non_canonical_text_prints_canonically(name: str, text: object, canonical: str) -> None:
    assert format_quantity(name, parse_quantity(name, text)) == canonical


def test_format_vector() -> None:
    assert format_vector({"cpu": 2500, "memory": 17179869184, "gpu": 2}) == {
        "cpu": "2500m",
        "memory": "16Gi",
        "gpu": "2",
    }


# -- vector arithmetic -----------------------------------------------------------------------------


def test_add_subtract_fits() -> None:
    assert add({"cpu": 1000, "gpu": 1}, {"cpu": 500, "memory": 1024}) == {
        "cpu": 1500,
        "gpu": 1,
        "memory": 1024,
    }
    assert subtract({"cpu": 1000, "gpu": 1}, {"cpu": 400, "fpga": 1}) == {
        "cpu": 600,
        "gpu": 1,
        "fpga": -1,
    }
    assert fits({"cpu": 1000}, {"cpu": 1000, "gpu": 1}) is True
    assert fits({"cpu": 1001}, {"cpu": 1000}) is False
    assert fits({"fpga": 1}, {"cpu": 1000}) is False
    assert fits({}, {}) is True


# -- properties ------------------------------------------------------------------------------------

quantities = st.integers(min_value=0, max_value=MAX_QUANTITY)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(KINDS), value=quantities)
def test_format_then_parse_is_identity(name: str, value: int) -> None:
    text = format_quantity(name, value)
    assert parse_quantity(name, text) == value
    assert format_quantity(name, parse_quantity(name, text)) == text


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(KINDS),
    exponent=st.integers(min_value=0, max_value=62),
    factor=st.integers(min_value=1, max_value=2**20),
)
def test_round_trip_of_structured_values(name: str, exponent: int, factor: int) -> None:
    # Values with many trailing binary or decimal zeros exercise every suffix.
    for value in (factor << exponent, factor * 10 ** (exponent % 19), 2**exponent - 1):
        if value <= MAX_QUANTITY:
            assert parse_quantity(name, format_quantity(name, value)) == value


_SIZES = {"": 1, **{k: 2 ** (10 * i) for i, k in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi"], 1)}}
_SIZES.update({k: 10 ** (3 * i) for i, k in enumerate(["K", "M", "G", "T", "P"], 1)})


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["memory", "storage", "gpu", "fpga", "asic.s19"]),
    number=st.integers(min_value=0, max_value=10**6),
    suffix=st.sampled_from(sorted(_SIZES)),
)
def test_parse_text_then_format_then_parse(name: str, number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    if number * _SIZES[suffix] > MAX_QUANTITY:
        with pytest.raises(InvalidQuantity):
            parse_quantity(name, text)
        return
    value = parse_quantity(name, text)
    assert value == number * _SIZES[suffix]
    printed = format_quantity(name, value)
    assert parse_quantity(name, printed) == value
    assert len(printed) <= max(len(text), len(str(value)))


@settings(max_examples=300, deadline=None)
@given(
    cores=st.integers(min_value=0, max_value=10**9),
    millis=st.integers(min_value=0, max_value=999),
    digits=st.integers(min_value=1, max_value=3),
)
def test_cpu_decimal_text_round_trips(cores: int, millis: int, digits: int) -> None:
    fraction = f"{millis:03d}"[:digits]
    text = f"{cores}.{fraction}"
    value = parse_quantity("cpu", text)
    assert value == cores * 1000 + int(fraction.ljust(3, "0"))
    assert parse_quantity("cpu", format_quantity("cpu", value)) == value
    assert parse_quantity("cpu", f"{value}m") == value


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(KINDS), number=st.integers(min_value=0, max_value=MAX_QUANTITY // 1000))
def test_json_integers_are_whole_units(name: str, number: int) -> None:
    scale = 1000 if name == "cpu" else 1
    assert parse_quantity(name, number) == number * scale


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(KINDS),
    value=st.integers(min_value=MAX_QUANTITY + 1, max_value=2**70),
)
def test_over_the_limit_is_refused(name: str, value: int) -> None:
    with pytest.raises(InvalidQuantity) as info:
        parse_quantity(name, f"{value}m" if name == "cpu" else str(value))
    assert info.value.data == {"field": f"resources.{name}"}
    assert "is too large; the limit is 2^63-1" in info.value.message
