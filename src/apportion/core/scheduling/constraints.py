"""Job constraints: label expressions on nodes and attribute expressions on devices.

A job writes constraints as kubectl-style terms (``facility=texas-1``,
``type in (cpu,gpu)``, ``!spot``) plus device terms whose key is a device
family and an attribute: ``gpu.model in (A100,H100)``, ``gpu.memory>=40Gi``.
A term is a device term when its key starts with the family of a device
resource the job requests (``gpu`` for ``gpu`` and ``gpu.shares``); such a
term is checked against each device of that family on a node, or against the
node's labels when the node lists no devices for it (a node that only says
``gpu.model=A100`` in its labels still matches).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from apportion.core.errors import InvalidInput, InvalidQuantity
from apportion.core.labels import LabelRequirement, parse_selector
from apportion.core.model import Device
from apportion.core.resources import parse_quantity

_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_NUMERIC_RE = re.compile(rf"^\s*({_KEY})\s*(>=|<=|>|<)\s*([^,()<>=!]+?)\s*$")
NUMERIC_OPS = (">=", "<=", ">", "<")


def family(resource: str) -> str:
    """Device family of a resource name: ``gpu.shares`` belongs to ``gpu``."""
    return resource.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class DeviceRequirement:
    """One term on device attributes: ``<family>.<attr> <op> <values>``."""

    family: str
    attr: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", ">=", "<=", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, value: object) -> bool:
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in NUMERIC_OPS:
            return value is not None and _compare(self, value)
        text = None if value is None else str(value)
        if self.op in ("=", "in"):
            return text is not None and text in self.values
        return text is None or text not in self.values

    def matches_device(self, device: Device) -> bool:
        return self.matches(device_attr(device, self.attr))

    def __str__(self) -> str:
        key = f"{self.family}.{self.attr}"
        return str(LabelRequirement(key, self.op, self.values)) if self.op not in NUMERIC_OPS else (
            f"{key}{self.op}{self.values[0]}"
        )


def device_attr(device: Device, attr: str) -> object:
    if attr == "model":
        return device.model
    if attr == "memory":
        return device.memory
    return device.attrs.get(attr)


def _compare(req: DeviceRequirement, value: object) -> bool:
    try:
        have = _number(req.attr, value)
        want = _number(req.attr, req.values[0])
    except (InvalidInput, InvalidQuantity, ValueError):
        return False
    if req.op == ">=":
        return have >= want
    if req.op == "<=":
        return have <= want
    if req.op == ">":
        return have > want
    return have < want


def _number(attr: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # Memory-like attributes accept the ledger's units ("40Gi"); others are plain numbers.
    name = "memory" if attr.endswith("memory") else "count"
    return parse_quantity(name, str(value), field="constraints")


@dataclass(frozen=True, slots=True)
class Constraints:
    """Parsed constraints: node label terms and device terms."""

    labels: tuple[LabelRequirement, ...] = ()
    devices: tuple[DeviceRequirement, ...] = ()
    by_family: Mapping[str, tuple[DeviceRequirement, ...]] = field(
        init=False, repr=False, compare=False)
    """``devices`` grouped by family once: placement asks for a family's
    terms on every class check and every device grant."""

    def __post_init__(self) -> None:
        by: dict[str, list[DeviceRequirement]] = {}
        for d in self.devices:
            by.setdefault(d.family, []).append(d)
        object.__setattr__(self, "by_family", {f: tuple(ds) for f, ds in by.items()})

    def __bool__(self) -> bool:
        return bool(self.labels or self.devices)

    def device_terms(self, fam: str) -> tuple[DeviceRequirement, ...]:
        return self.by_family.get(fam, ())

    def describe(self) -> str:
        return ",".join([*(str(r) for r in self.labels), *(str(d) for d in self.devices)])


NO_CONSTRAINTS = Constraints()


def check_comparisons(constraints: Constraints, field: str = "constraints") -> None:
    """Refuse a comparison whose value is no number. Placement reads such a
    term as "no device matches", so a typo would leave a job waiting (or
    refused for another reason) instead of being answered at submission."""
    for term in constraints.devices:
        if term.op not in NUMERIC_OPS:
            continue
        try:
            _number(term.attr, term.values[0])
        except (InvalidInput, InvalidQuantity):
            wanted = ("a size such as 40Gi or 80G" if term.attr.endswith("memory")
                      else "a whole number")
            raise InvalidInput(
                f"{field}: {term}: {term.values[0]!r} is not {wanted}", field=field,
            ) from None


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def parse_constraints(
    terms: str | Iterable[str],
    device_families: Iterable[str] = ("gpu",),
    field: str = "constraints",
) -> Constraints:
    """Parse constraint text (comma separated) or a list of terms.

    ``device_families`` are the families whose ``<family>.<attr>`` keys are
    device terms (by default ``gpu``; the job model passes the families of the
    device resources it requests).
    """
    texts = _split_terms(terms) if isinstance(terms, str) else [
        t for text in terms for t in _split_terms(text)
    ]
    families = set(device_families)
    labels: list[LabelRequirement] = []
    devices: list[DeviceRequirement] = []
    for term in texts:
        if m := _NUMERIC_RE.match(term):
            key, op, value = m.groups()
            fam, _, attr = key.partition(".")
            if fam not in families or not attr:
                raise InvalidInput(
                    f"{field}: {term!r}: comparisons (>=, <=, >, <) apply to device attributes "
                    f"such as gpu.memory>=40Gi",
                    field=field,
                )
            devices.append(DeviceRequirement(fam, attr, op, (value,)))
            continue
        (req,) = parse_selector(term, field)
        fam, _, attr = req.key.partition(".")
        if fam in families and attr:
            devices.append(DeviceRequirement(fam, attr, req.op, req.values))
        else:
            labels.append(req)
    if not labels and not devices:
        # One object for "no constraints": job shapes holding it compare by
        # identity (the cycle compares shapes for every job it looks at).
        return NO_CONSTRAINTS
    return Constraints(tuple(labels), tuple(devices))


def labels_match(
    labels: Mapping[str, str], reqs: tuple[LabelRequirement, ...]
) -> LabelRequirement | None:
    """The first requirement ``labels`` fail, or None when all hold."""
    for req in reqs:
        if not req.matches(labels):
            return req
    return None
