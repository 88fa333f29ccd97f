"""The free index class the cluster state builds: the compiled one where it
was built, else the pure one.

``_freeindex_c`` (Cython, built by ``setup.py`` at install) is
``freeindex.FreeIndex`` with its hot methods compiled: the same data, the
same answers, fewer instructions a placement (bench/README.md, h26-native).
Without a C compiler the install goes on without it and this import falls
back; ``.ci/run`` runs ``tests/core`` on both (``tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from apportion.core.scheduling.freeindex import FreeIndex

if TYPE_CHECKING:
    from apportion.core.scheduling.capacity import FreeCapacity, NodeRec
    from apportion.core.scheduling.filters import NeedPast, Verdict
    from apportion.core.scheduling.jobs import TaskSpec
    from apportion.core.scheduling.state import ClusterState

Index: type[FreeIndex]
pick: Callable[
    [ClusterState, TaskSpec, Verdict, bool, int, bool, tuple[tuple[int, float], ...],
     str | None, Callable[[ClusterState, Verdict, str, TaskSpec], NeedPast]],
    tuple[NodeRec, tuple[int, ...], bool] | Literal[False] | None,
] | None
"""``_freeindex_c.pick``, a one-task placement's walk, ranking and (given
a job id, where no device is asked of the node) grant in one C call
(``Placer._place_one``), or None: the walk and ranking in Python."""
move_free: Callable[[FreeCapacity, NodeRec, tuple[int, ...], tuple[int, ...]], None] | None
"""``_freeindex_c.move_free``, ``capacity.FreeCapacity._move`` compiled
(every grant and release), or None: the Python method."""
frozen: Callable[..., Any] | None
"""``_freeindex_c.frozen`` (``maker``'s compiled constructor), or None."""
try:
    from apportion.core.scheduling._freeindex_c import FreeIndex as Index
    from apportion.core.scheduling._freeindex_c import frozen, move_free, pick
except ImportError:
    Index = FreeIndex
    pick = move_free = frozen = None

NATIVE = Index is not FreeIndex
"""Whether the compiled index is in use."""

_T = TypeVar("_T")


def maker(cls: type[_T]) -> Callable[..., _T]:
    """``cls``'s constructor with every field given in order, for a frozen
    slots dataclass made once or more a placement (``TaskPlacement``,
    ``RunningJob``, ``Placement``): the compiled ``frozen`` sets the slots
    in C, without the type call and ``quick_init``'s Python ``__init__``
    (bench/README.md, h29-place); ``cls`` itself where it is not built or
    ``cls``'s ``__init__`` is not ``quick_init``'s (which refuses a
    ``__post_init__``, init-only and keyword-only fields; a hand-written
    ``__init__`` would be skipped).

    Callers give every field, positionally: the compiled constructor takes
    no keyword and fills no default, while ``cls`` itself (the pure path)
    would, so a call relying on either works on one path only."""
    init = cls.__dict__.get("__init__")
    if frozen is None or not getattr(init, "quick_init", False):
        return cls
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    slots = tuple(cls.__dict__.get(f.name) for f in fields)
    if not all(type(d) is MemberDescriptorType for d in slots):
        return cls
    return partial(frozen, cls, slots)
