"""The free index class the cluster state builds: the compiled one where it
was built, else the pure one.

``_freeindex_c`` (Cython, built by ``setup.py`` at install) is
``freeindex.FreeIndex`` with its hot methods compiled: the same data, the
same answers, fewer instructions a placement (bench/README.md, h26-native).
Without a C compiler the install goes on without it and this import falls
back; ``.ci/run`` runs ``tests/core`` on both (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from apportion.core.scheduling.freeindex import Entry, FreeIndex

if TYPE_CHECKING:
    from apportion.core.scheduling.capacity import Bucket, FreeCapacity, NodeRec

Index: type[FreeIndex]
pick: Callable[
    [FreeIndex, int, int, bool, int, tuple[tuple[str, int], ...], dict[int, tuple[int, int]],
     dict[int, tuple[tuple[int, int], ...]], dict[int, tuple[int, int]], Mapping[int, Bucket],
     Mapping[int, tuple[int, ...]], int, bool, tuple[tuple[int, float], ...]],
    Entry | Literal[False] | None,
] | None
"""``_freeindex_c.pick``, a one-task placement's walk and ranking in one C
call (``Placer._place_one``), or None: the walk and ranking in Python."""
move_free: Callable[[FreeCapacity, NodeRec, tuple[int, ...], tuple[int, ...]], None] | None
"""``_freeindex_c.move_free``, ``capacity.FreeCapacity._move`` compiled
(every grant and release), or None: the Python method."""
try:
    from apportion.core.scheduling._freeindex_c import FreeIndex as Index
    from apportion.core.scheduling._freeindex_c import move_free, pick
except ImportError:
    Index = FreeIndex
    pick = move_free = None

NATIVE = Index is not FreeIndex
"""Whether the compiled index is in use."""
