"""The free index the cluster state builds: the compiled one where it was
built, else the pure one.

``_freeindex_c`` (Cython, built by ``setup.py`` at install) is
``freeindex.FreeIndex`` with its hot methods compiled: the same data, the
same answers, about twice as fast a placement (bench/README.md,
h26-native). Without a C compiler the install skips it and this import
falls back; ``tests/core`` runs against both (``tests/conftest.py``).
"""

from __future__ import annotations

from apportion.core.scheduling.freeindex import FreeIndex as PureFreeIndex

try:
    from apportion.core.scheduling._freeindex_c import FreeIndex
except ImportError:
    FreeIndex = PureFreeIndex  # type: ignore[misc]

NATIVE = FreeIndex is not PureFreeIndex
"""Whether the compiled index is in use."""

__all__ = ["NATIVE", "FreeIndex", "PureFreeIndex"]
