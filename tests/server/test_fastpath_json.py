"""The grant fast path reads a body as the stdlib decoder does (FastAPI's
reading on every other endpoint), though orjson reads the plain ones: the
same value with the same types, or the same error at the same offset."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.server.fastpath import parse_json


def _stdlib(raw: bytes) -> object:
    """What ``parse_json`` answered before orjson (9ce6a3c)."""
    if not raw:
        raise json.JSONDecodeError("Expecting value", "", 0)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8 text", "", exc.start) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


def _typed(value: object) -> object:
    """The value with every scalar's type beside it (1 == 1.0 == True in Python)."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _outcome(parse: Any, raw: bytes) -> object:
    try:
        return _typed(parse(raw))
    except json.JSONDecodeError as exc:
        return ("error", exc.msg, exc.pos)


scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
           | st.floats(allow_nan=True) | st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**64]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(values, st.booleans())
def test_a_body_reads_as_the_stdlib_reads_it(value: object, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _outcome(parse_json, raw) == _outcome(_stdlib, raw)


@settings(max_examples=500, deadline=None)
@given(values, st.data())
def test_a_damaged_body_is_answered_as_the_stdlib_answers_it(value: object,
                                                              data: st.DataObject) -> None:
    raw = bytearray(json.dumps(value).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=3)
                               | st.sampled_from([b"\xef\xbb\xbf", b"NaN", b"\\ud800", b"1e9",
                                                  b"\x00", b"\xed\xa0\x80", b",", b"]"]))
    assert _outcome(parse_json, bytes(raw)) == _outcome(_stdlib, bytes(raw))


@pytest.mark.parametrize("raw", [
    b'{"resources": {"cpu": 18446744073709551616}}',  # past 2^64: orjson reads a float
    b'{"resources": {"cpu": 9223372036854775808}}', b'{"resources": {"cpu": 1.5e400}}',
    b'{"resources": {"cpu": NaN}}', b'\xef\xbb\xbf{}', b'{"owner": "\\ud800"}', b"[" * 400
    + b"]" * 400, b"[" * 5000 + b"]" * 5000, b'{"a": 1, "a": 2}', b"", b" ", b'{"cpu": -0}',
])
def test_the_bodies_orjson_reads_otherwise_are_read_by_the_stdlib(raw: bytes) -> None:
    assert _outcome(parse_json, raw) == _outcome(_stdlib, raw)


def test_the_benchmarks_body_is_read() -> None:
    raw = b'{"resources": {"cpu": "500m", "memory": "1Gi"}, "owner": "bench"}'
    assert parse_json(raw) == {"resources": {"cpu": "500m", "memory": "1Gi"}, "owner": "bench"}
