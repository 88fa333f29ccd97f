"""Named requirement profiles: what one unit of work needs, parsed once.

A profile maps resource names to quantities in the project's notation
(``{"memory": "6Gi", "gpu_memory": "12Gi"}``); parsing happens when the
profile is registered, so reserving by name costs one dictionary look-up.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from apportion.core.resources import format_vector, parse_vector
from apportion.guard.errors import ProfileFileError, UnknownProfile


@dataclass(frozen=True, slots=True)
class Requirement:
    """A parsed resource vector (base units) with the name it is known by."""

    name: str | None
    vector: Mapping[str, int]

    def describe(self) -> str:
        if self.name:
            return self.name
        text = ", ".join(f"{k}={v}" for k, v in format_vector(self.vector).items())
        return "{" + text + "}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "resources": format_vector(self.vector)}


RequirementLike: TypeAlias = "str | Mapping[str, object] | Requirement"
"""What ``reserve``/``validate`` accept: a profile name, a mapping of
resource to quantity, or a :class:`Requirement`."""


def as_requirement(what: object, field: str = "requirement") -> Requirement:
    """A :class:`Requirement` from a mapping (parsed now) or a requirement."""
    if isinstance(what, Requirement):
        return what
    if isinstance(what, Mapping):
        return Requirement(None, parse_vector(what, field))
    raise TypeError(f"expected a profile name, a mapping or a Requirement, got {what!r}")


class Profiles:
    """A registry of named requirements, loadable from JSON or TOML files."""

    def __init__(self, profiles: Mapping[str, Mapping[str, object]] | None = None) -> None:
        self._by_name: dict[str, Requirement] = {}
        for name, values in (profiles or {}).items():
            self.add(name, values)

    def add(self, name: str, values: Mapping[str, object]) -> Requirement:
        """Register (or replace) profile ``name``; quantities are parsed here."""
        req = Requirement(name, parse_vector(values, f"profiles.{name}"))
        self._by_name[name] = req
        return req

    def get(self, name: str) -> Requirement:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownProfile(
                f"no requirement profile named {name!r} (known: {known})", profile=name
            ) from None

    def resolve(self, what: object) -> Requirement:
        """A profile name, mapping or requirement as a :class:`Requirement`."""
        if isinstance(what, str):
            return self.get(what)
        return as_requirement(what)

    @property
    def by_name(self) -> Mapping[str, Requirement]:
        """The live name -> requirement table (read-only view for fast look-ups)."""
        return self._by_name

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {name: format_vector(r.vector) for name, r in sorted(self._by_name.items())}

    def load(self, path: str | Path) -> Profiles:
        """Add every profile in a ``.json`` or ``.toml`` file; returns self."""
        for name, values in read_profiles_file(path).items():
            self.add(name, values)
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> Profiles:
        return cls().load(path)


def read_profiles_file(path: str | Path) -> dict[str, Mapping[str, object]]:
    """The profile table of a JSON or TOML file: name -> {resource: quantity}.

    A TOML file may put the table at the top level or under ``[profiles]``
    (quote names with slashes: ``["facebook/musicgen-medium"]``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ProfileFileError(f"cannot read profiles file {p}: {exc}", path=str(p)) from exc
    if isinstance(data, dict) and set(data) == {"profiles"}:
        data = data["profiles"]
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ProfileFileError(
            f"profiles file {p} must map each profile name to an object of "
            'resource: quantity, e.g. {"my-model": {"memory": "6Gi"}}',
            path=str(p),
        )
    return {str(k): v for k, v in data.items()}
