"""A cheaper constructor for the frozen dataclasses made once per job.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__(self, name, value)``, which looks the slot up by name
on every call; a replay makes several such records per job (its placement,
its running job, its task placements, its record) and their constructors
were about a tenth of a Philly replay. ``quick_init`` gives a frozen slots
dataclass an ``__init__`` that sets each slot through its descriptor,
fetched once: the same fields, defaults and default factories, so the
instances are the same; the class stays a frozen dataclass (equality,
hashing, ``replace`` and the refusal to assign are its own).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")

_FACTORY: Any = object()
"""Stands as the default of a field with a default factory (a fresh value per
instance, as the dataclass's own ``__init__`` makes it)."""


def quick_init(cls: type[_T]) -> type[_T]:
    """Replace ``cls``'s ``__init__`` (a frozen slots dataclass without
    ``__post_init__``, init-only or keyword-only fields) with one that sets
    its slots directly."""
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__
            or hasattr(cls, "__post_init__")
            or any(f.kw_only or not f.init for f in params)):
        raise TypeError(f"quick_init: {cls.__name__} is not a plain frozen slots dataclass")
    env: dict[str, Any] = {"_FACTORY": _FACTORY}
    args: list[str] = []
    body: list[str] = []
    for f in params:
        name = f.name
        env[f"_set_{name}"] = getattr(cls, name).__set__
        if f.default is not dataclasses.MISSING:
            env[f"_default_{name}"] = f.default
            args.append(f"{name}=_default_{name}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_factory_{name}"] = f.default_factory
            args.append(f"{name}=_FACTORY")
            body.append(f"    if {name} is _FACTORY: {name} = _factory_{name}()")
        else:
            args.append(name)
        body.append(f"    _set_{name}(self, {name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body or ["    pass"])
    exec(source, env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.quick_init = True  # what ``fastindex.maker`` builds natively
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
