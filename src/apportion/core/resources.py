"""Resource names and quantities: parse user text into exact integers, print
them back canonically, and do the vector arithmetic the ledger needs.

Inside apportion a quantity is always an ``int`` in the resource's base unit:
``cpu`` in millicores, ``memory``/``storage`` (and any ``*memory``/``*storage``
name) in bytes, everything else in whole units. Floats never enter the ledger.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import Enum
from fractions import Fraction

from apportion.core.errors import InvalidQuantity, InvalidResourceName

MAX_QUANTITY = 2**63 - 1
"""Largest quantity stored (a signed 64-bit integer, PostgreSQL ``BIGINT``)."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_QUANTITY_RE = re.compile(r"^\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")

BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}

Vector = Mapping[str, int]
"""A resource vector: resource name to integer quantity in base units."""


class Unit(Enum):
    """How a resource's integers are counted."""

    MILLI = "millicores"
    BYTES = "bytes"
    COUNT = "units"


def unit_of(name: str) -> Unit:
    if name == "cpu":
        return Unit.MILLI
    if name.endswith(("memory", "storage")):
        return Unit.BYTES
    return Unit.COUNT


def check_name(name: str, field: str = "resources") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidResourceName(
            f"{field}: resource name {name!r} is invalid; use 1-63 lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit",
            field=field,
        )
    return name


def _scale(unit: Unit, suffix: str, name: str, field: str, text: str) -> int:
    """Base units per one written unit for ``suffix`` on a resource of ``unit``."""
    if suffix == "":
        return 1000 if unit is Unit.MILLI else 1
    if suffix == "m":
        if unit is Unit.MILLI:
            return 1
        raise InvalidQuantity(
            f"{field}.{name}: {text!r} uses 'm' (milli), which only cpu accepts",
            field=f"{field}.{name}",
        )
    if suffix in BINARY or suffix in DECIMAL:
        if unit is Unit.MILLI:
            raise InvalidQuantity(
                f"{field}.{name}: {text!r}: cpu takes cores ('2', '1.5') or millicores "
                "('500m'), not byte units",
                field=f"{field}.{name}",
            )
        return BINARY.get(suffix) or DECIMAL[suffix]
    raise InvalidQuantity(
        f"{field}.{name}: unknown unit {suffix!r} in {text!r}; use m (cpu only), "
        "Ki Mi Gi Ti Pi Ei or K M G T P E",
        field=f"{field}.{name}",
    )


def parse_quantity(name: str, value: object, field: str = "resources") -> int:
    """Parse one quantity for resource ``name`` into base units.

    Accepts JSON integers (whole units: cores for cpu, bytes for memory),
    JSON numbers, and strings such as ``"500m"``, ``"1.5"``, ``"16Gi"``, ``"2T"``.
    """
    where = f"{field}.{name}"
    unit = unit_of(name)
    if isinstance(value, bool):
        raise InvalidQuantity(f"{where}: expected a quantity, got a boolean", field=where)
    if isinstance(value, int):
        number, suffix, text = Decimal(value), "", str(value)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidQuantity(f"{where}: {value!r} is not a number", field=where)
        number, suffix, text = Decimal(repr(value)), "", repr(value)
    elif isinstance(value, str):
        text = value
        match = _QUANTITY_RE.match(value)
        if not match:
            raise InvalidQuantity(
                f"{where}: cannot parse {value!r} as a quantity (examples: '2', '500m', "
                "'1.5', '16Gi', '100G')",
                field=where,
            )
        sign, digits, suffix = match.groups()
        try:
            number = Decimal(sign + digits)
        except InvalidOperation as exc:  # pragma: no cover - regex admits only digits
            raise InvalidQuantity(f"{where}: cannot parse {value!r}", field=where) from exc
    else:
        raise InvalidQuantity(
            f"{where}: expected a string or number, got {type(value).__name__}", field=where
        )
    if number < 0:
        raise InvalidQuantity(f"{where}: {text!r} is negative; quantities are >= 0", field=where)
    # Exact arithmetic: Decimal's 28-digit context would round
    # "1.0000000000000000000000000001" to a whole number and accept it.
    base = Fraction(number) * _scale(unit, suffix, name, field, text)
    if base.denominator != 1:
        what = {
            Unit.MILLI: "cpu is counted in whole millicores",
            Unit.BYTES: "memory and storage are counted in whole bytes",
            Unit.COUNT: f"{name} is counted in whole units",
        }[unit]
        raise InvalidQuantity(f"{where}: {text!r} is a fraction; {what}", field=where)
    result = int(base)
    if result > MAX_QUANTITY:
        raise InvalidQuantity(
            f"{where}: {text!r} is too large; the limit is 2^63-1 {unit.value}", field=where
        )
    return result


def parse_vector(values: Mapping[str, object], field: str = "resources") -> dict[str, int]:
    """Parse a mapping of resource name to quantity; zero entries are dropped."""
    if not isinstance(values, Mapping):
        raise InvalidQuantity(f"{field}: expected an object of resource: quantity", field=field)
    out: dict[str, int] = {}
    for name, raw in values.items():
        check_name(name, field)
        qty = parse_quantity(name, raw, field)
        if qty:
            out[name] = qty
    return out


_SUFFIXES_DOWN = (
    tuple(sorted(BINARY.items(), key=lambda kv: -kv[1])),
    (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)),
)
"""The binary and the decimal suffixes, largest first (sorted once, not per call)."""


def format_quantity(name: str, value: int) -> str:
    """Canonical text for ``value`` base units of ``name``; round-trips through
    ``parse_quantity``."""
    unit = unit_of(name)
    if unit is Unit.MILLI:
        return str(value // 1000) if value % 1000 == 0 else f"{value}m"
    if unit is Unit.BYTES and value:
        # The largest binary and the largest decimal suffix that divide, and
        # the shorter text wins (binary on a tie): "100G", not "97656250Ki".
        texts: list[str] = []
        for table in _SUFFIXES_DOWN:
            for suffix, size in table:
                if value % size == 0:
                    texts.append(f"{value // size}{suffix}")
                    break
        if texts:
            return min(texts, key=len)
    return str(value)


def format_vector(vector: Vector) -> dict[str, str]:
    return {name: format_quantity(name, qty) for name, qty in vector.items()}


_BINARY_UP = sorted(BINARY.items(), key=lambda kv: kv[1])


def format_human(name: str, value: int) -> str:
    """Text for a person: bytes in the largest binary unit with one decimal,
    rounded to the nearest (``23.5Gi``, ``310Mi``), where ``format_quantity``
    must stay exact and may say ``24683792Ki``. Other units as canonical."""
    if unit_of(name) is not Unit.BYTES or abs(value) < 1024:
        # format_quantity handles negatives too: -1500 millicores is "-1500m",
        # where str() would print "-1500" and read as cores.
        return format_quantity(name, value)
    sign, size_left = ("-" if value < 0 else ""), abs(value)
    i = max(i for i, (_, size) in enumerate(_BINARY_UP) if size <= size_left)
    # 1023.96Mi rounds to 1024.0Mi: the next unit says it as 1Gi.
    if round(size_left / _BINARY_UP[i][1], 1) >= 1024 and i + 1 < len(_BINARY_UP):
        i += 1
    suffix, size = _BINARY_UP[i]
    text = f"{round(size_left / size, 1):.1f}".removesuffix(".0") + suffix
    return sign + text


def format_human_vector(vector: Vector) -> str:
    """``cpu=2,memory=23.5Gi`` for a vector in base units: for messages, where a
    dict would print as ``{'cpu': '2', ...}``."""
    return ",".join(f"{name}={format_human(name, q)}" for name, q in vector.items())


def human_quantity(name: str, value: object) -> str:
    """``format_human`` of a quantity as the API writes it (``"24683792Ki"``,
    or a number); what does not parse is shown as it came."""
    if value is None:
        return "-"
    try:
        return format_human(name, parse_quantity(name, value))
    except (InvalidQuantity, InvalidResourceName):
        return str(value)


def human_vector(vector: Mapping[str, object]) -> str:
    """``human_quantity`` over a vector as the API or a user writes it (whole
    units for numbers, as ``parse_quantity`` reads them), in one line."""
    return ",".join(f"{name}={human_quantity(name, q)}" for name, q in vector.items())


def add(a: Vector, b: Vector) -> dict[str, int]:
    out = dict(a)
    for name, qty in b.items():
        out[name] = out.get(name, 0) + qty
    return out


def subtract(a: Vector, b: Vector) -> dict[str, int]:
    out = dict(a)
    for name, qty in b.items():
        out[name] = out.get(name, 0) - qty
    return out


def fits(request: Vector, free: Vector) -> bool:
    return all(free.get(name, 0) >= qty for name, qty in request.items())
