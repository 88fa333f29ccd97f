"""Label selectors as kubectl writes them: ``facility=texas-1,gpu.model in (A100,H100)``.

Supported terms: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``,
``k`` (exists) and ``!k`` (does not exist). Terms are ANDed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from apportion.core.errors import InvalidInput

_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*([^,=!()]*?)\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One term of a label selector: ``key`` compared by ``op`` with ``values``.
    Not ``apportion.guard.Requirement``, which is a resource vector a profile
    asks for."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values  # "!=" and "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t for t in terms if t.strip()]


def parse_selector(text: str, field: str = "selector") -> tuple[LabelRequirement, ...]:
    requirements = []
    for term in _split_terms(text or ""):
        if m := _SET_RE.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise InvalidInput(f"{field}: {term.strip()!r} lists no values", field=field)
            requirements.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := _CMP_RE.match(term):
            op = "=" if m.group(2) == "==" else m.group(2)
            requirements.append(LabelRequirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_RE.match(term):
            requirements.append(LabelRequirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise InvalidInput(
                f"{field}: cannot parse {term.strip()!r}; use key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key",
                field=field,
            )
    return tuple(requirements)


def matches(labels: Mapping[str, str], requirements: tuple[LabelRequirement, ...]) -> bool:
    return all(r.matches(labels) for r in requirements)
