"""The free index class the cluster state builds: the compiled one where it
was built, else the pure one.

``_freeindex_c`` (Cython, built by ``setup.py`` at install) is
``freeindex.FreeIndex`` with its hot methods compiled: the same data, the
same answers, fewer instructions a placement (bench/README.md, h26-native).
Without a C compiler the install goes on without it and this import falls
back; ``.ci/run`` runs ``tests/core`` on both (``tests/conftest.py``).
"""

from __future__ import annotations

from apportion.core.scheduling.freeindex import FreeIndex

Index: type[FreeIndex]
try:
    from apportion.core.scheduling._freeindex_c import FreeIndex as Index
except ImportError:
    Index = FreeIndex

NATIVE = Index is not FreeIndex
"""Whether the compiled index is in use."""
