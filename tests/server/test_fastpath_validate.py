"""The grant fast path validates a body from its bytes (pydantic's own JSON
reading) where pydantic accepts it, and the FastAPI way otherwise: the same
model, values and types as reading it with ``parse_json`` and validating the
value, or the same errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from apportion.server.fastpath import parse_json, validate_grant
from apportion.server.schemas import AllocationIn
from server.test_fastpath_json import _typed  # values with their types, NaN by its text


def _before(raw: bytes) -> AllocationIn:
    """What the fast path did before (h26-http): read, then validate the value."""
    return AllocationIn.__pydantic_validator__.validate_python(  # type: ignore[no-any-return]
        parse_json(raw), from_attributes=True)


def _outcome(validate: Any, raw: bytes) -> object:
    try:
        body = validate(raw)
    except ValidationError as exc:
        return ("invalid", exc.errors(include_url=False))
    except json.JSONDecodeError as exc:
        return ("json", exc.msg, exc.pos)
    return _typed(body.model_dump())


quantities = (st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=6)
              | st.booleans() | st.none() | st.sampled_from(["500m", "1Gi", "2", "0.5"]))
keys = st.sampled_from(["cpu", "memory", "gpu", "", "x" * 70]) | st.text(max_size=6)
texts = st.none() | st.text(max_size=10) | st.sampled_from(["bench", "n0001", "a b", "é"]) \
    | st.integers(0, 3)
bodies = st.fixed_dictionaries(
    {"resources": st.dictionaries(keys, quantities, max_size=3)
     | st.lists(st.integers(), max_size=2) | st.none()},
    optional={"node": texts, "owner": texts, "extra": texts,
              "labels": st.dictionaries(keys, texts, max_size=3) | texts})


@settings(max_examples=600, deadline=None)
@given(bodies, st.booleans())
@example({"resources": {"cpu": "500m", "memory": "1Gi"}, "owner": "bench"}, True)
@example({"resources": {"cpu": 0.1, "gpu": 2**64}, "labels": {"a": "b"}}, True)
def test_a_body_validates_as_before(body: dict[str, Any], ascii_only: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _outcome(validate_grant, raw) == _outcome(_before, raw)


@settings(max_examples=300, deadline=None)
@given(bodies, st.data())
def test_a_damaged_body_is_answered_as_before(body: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(body).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    assert _outcome(validate_grant, bytes(raw)) == _outcome(_before, bytes(raw))


def test_bodies_pydantic_reads_otherwise_are_read_as_before() -> None:
    for raw in [b'{"resources": {"cpu": "\\ud800"}}', b'\xef\xbb\xbf{"resources": {"cpu": 1}}',
                b'{"resources": {"cpu": 1, "cpu": "2"}, "owner": "a", "owner": "b"}',
                '{"resources": {"cpu": 1}}'.encode("utf-16"), b"", b"[]", b"{} {}",
                b'{"resources": {"cpu": NaN}}', b'{"resources": {"cpu": 1e400}}',
                b"[" * 5000 + b"]" * 5000]:
        assert _outcome(validate_grant, raw) == _outcome(_before, raw), raw[:40]


def test_the_request_id_is_in_log_lines_while_answering_and_gone_after() -> None:
    """Checked inside one coroutine: ``asyncio.run`` runs its task in a copy
    of the context, so outside it the id would be gone unreset too."""
    import asyncio

    import structlog

    from apportion.server.fastpath import serve_answer

    seen: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []

    async def produce() -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        seen.append(structlog.contextvars.get_contextvars())
        return 200, b"{}", []

    async def fail() -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        seen.append(structlog.contextvars.get_contextvars())
        raise RuntimeError("boom")

    async def send(message: dict[str, Any]) -> None: ...

    scope = {"type": "http", "method": "POST", "path": "/api/v1/allocations",
             "headers": [(b"x-request-id", b"trace-7")]}

    async def both() -> None:
        for make in (produce, fail):
            await serve_answer(scope, send, make(), access_log=False)
            after.append(structlog.contextvars.get_contextvars())

        def observe(seconds: float, status: int) -> None:
            raise RuntimeError("the histogram failed")

        with pytest.raises(RuntimeError):
            await serve_answer(scope, send, produce(), access_log=False, observe=observe)
        after.append(structlog.contextvars.get_contextvars())

    asyncio.run(both())
    assert seen == [{"request_id": "trace-7"}] * 3
    assert after == [{}, {}, {}]
    # structlog's own binding sets the same variable the fast path sets.
    tokens = structlog.contextvars.bind_contextvars(request_id="other")
    try:
        from apportion.server.fastpath import _REQUEST_ID
        assert _REQUEST_ID.get() == "other"
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def test_a_long_body_is_read_once_the_old_way(monkeypatch: Any) -> None:
    """A body past a few KiB (a grant is a few hundred bytes) is not tried
    with pydantic's JSON reading first: refused, it would be read twice."""
    from apportion.server import fastpath

    tried: list[int] = []

    class Counting:
        def validate_json(self, raw: bytes) -> object:
            tried.append(len(raw))
            return AllocationIn.__pydantic_validator__.validate_json(raw)

        def validate_python(self, value: object, **kw: Any) -> object:
            return AllocationIn.__pydantic_validator__.validate_python(value, **kw)

    monkeypatch.setattr(fastpath, "_VALIDATOR", Counting())
    short = b'{"resources": {"cpu": "1"}}'
    long = json.dumps({"resources": {"cpu": "1"}, "extra": list(range(9000))}).encode()
    assert validate_grant(short).resources == {"cpu": "1"}
    with pytest.raises(ValidationError):  # the field is refused: as before, once read
        validate_grant(long)
    assert tried == [len(short)]


def test_an_integer_too_long_for_the_stdlib_is_answered_400(api: httpx.Client) -> None:
    """json.loads refuses an integer past 4300 digits with a ValueError: the
    answer to bad JSON (400), not an internal error (500)."""
    from apportion.server.errors import validation_failure

    raw = b'{"resources": {"cpu": ' + b"1" * 5000 + b"}}"
    answer = api.post("/api/v1/allocations", content=raw,
                      headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json() == validation_failure([{
        "type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error",
        "ctx": {"error": "a number too long to read"}}])[0]


def test_over_loopback_each_body_is_answered_as_the_old_path_answers_it(
        api: httpx.Client) -> None:
    """A real server: bodies pydantic reads, and bodies only the old path
    reads (or refuses), answered with the status and body the old reading
    and validation give."""
    from apportion.server.errors import validation_failure
    from server.helpers import add_node

    add_node(api, {"name": "v1", "resources": {"cpu": "64", "memory": "64Gi"}})
    bodies = [b'{"resources": {"cpu": "1"}, "node": "v1"}',
              b'\xef\xbb\xbf{"resources": {"cpu": "1"}, "node": "v1"}',
              '{"resources": {"cpu": "1"}, "node": "v1"}'.encode("utf-16"),
              b'{"resources": {"cpu": "1"}, "owner": "\\ud800", "node": "v1"}',
              b'{"resources": {"cpu": true}}', b'{"resources": ', b"[]", b"{} {}"]
    headers = {"content-type": "application/json"}
    for raw in bodies:
        answer = api.post("/api/v1/allocations", content=raw, headers=headers)
        try:
            _before(raw)
        except ValidationError as exc:
            payload, status = validation_failure(exc.errors())
            assert (answer.status_code, answer.json()) == (status, payload), raw
        except json.JSONDecodeError as exc:  # as the fast path words a body not read
            payload, status = validation_failure([{
                "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                "ctx": {"error": exc.msg}}])
            assert (answer.status_code, answer.json()) == (status, payload), raw
        else:
            assert answer.status_code == 201, raw
            assert answer.json()["node"] == "v1"
