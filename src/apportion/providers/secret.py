"""A credential that never shows itself.

``Secret`` holds a string that only ``reveal()`` gives back. Its ``repr``,
``str`` and format are ``***``, pydantic (and so FastAPI) serializes it as
``"***"``, and ``json_default`` does the same for ``json.dumps`` and
``orjson.dumps``. So a config, a settings dict or a ``JoinSpec`` can be logged
or returned by the API without leaking what it holds.
"""

from __future__ import annotations

import hmac
from typing import Any

MASK = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for handing to an SDK or a child process."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled; pass what reveal() gives explicitly")

    def __copy__(self) -> Secret:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def validate(value: object) -> Secret:
            return value if isinstance(value, Secret) else Secret(str(value))

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _v: MASK),
        )


def reveal(value: Any) -> Any:
    """``value.reveal()`` for a ``Secret``, ``value`` unchanged otherwise."""
    return value.reveal() if isinstance(value, Secret) else value


def json_default(value: object) -> object:
    """``default=`` for ``json.dumps``/``orjson.dumps``: a ``Secret`` becomes ``***``."""
    if isinstance(value, Secret):
        return MASK
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
