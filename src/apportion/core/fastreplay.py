"""The replays' compiled kernels where they were built, else None each (the
callers then run their own Python).

``_replay_c`` (Cython, built by ``setup.py`` at install, beside the compiled
free index) holds the replays' hot loops on C doubles and integers: the
adaptive queues' response ratios, the conservative count profile's scan and
the adaptive history's pass over a finished job's keys and its answers.
Each gives the answers of the Python it stands for, or hands back where it
cannot (bench/README.md, h28-adaptive). Without a C compiler the install
goes on without it; ``tests/conftest.py`` hides it for the second,
pure pass of ``tests/core`` in ``.ci/run``, as it hides the index. (The
switch is the tests', not a setting, so it is not named here:
tests/test_settings.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

_Answer = tuple[float | None, float | None]
_Entries = list[tuple[str, float | None, int]]

hrrn_values: Callable[[float, list[float], list[float], list[float]],
                      list[float] | Literal[False] | None] | None
"""``adaptive_queue._Kept.plain``'s values on C doubles, or None."""
hrrn_top: Callable[[list[float]], int] | None
"""``min``/``index``/``count`` of ``_Kept.merge``'s values in one pass, or None."""
hrrn_ranked: Callable[[float, list[tuple[float, str, int, int, Any]], dict[int, _Answer],
                       Callable[[int], _Answer]],
                      tuple[_Entries, _Entries, list[float]]] | None
"""``pool_adaptive._rated`` compiled, or None."""
count_place: Callable[[list[float], list[int], int, float | None, int, bool, int],
                      float | Literal[False] | None] | None
"""``countprofile.CountProfile.place``'s scan compiled, or None."""
learn_keys: Callable[[Any, list[tuple[str, object]], float], None] | None
"""``adaptive_parts.learn_keys`` (``RuntimeHistory.record``'s key pass) compiled, or None."""
answer_of: Callable[[Any, int], _Answer] | None
"""``RuntimeHistory._answer`` compiled, or None."""
floors_of: Callable[[Any, Any, Any], tuple[list[float | None], list[bool]]] | None
"""``RuntimeHistory.floors``'s loop compiled, or None."""
levels_of: Callable[[Any, tuple[str, ...]],
                    tuple[tuple[str, ...], list[str], dict[str, float]]] | None
"""``adaptive._levels_py`` (the levels' table) compiled, or None."""
try:
    from apportion.core._replay_c import (
        answer_of,
        count_place,
        floors_of,
        hrrn_ranked,
        hrrn_top,
        hrrn_values,
        learn_keys,
        levels_of,
    )
except ImportError:
    hrrn_values = hrrn_top = hrrn_ranked = count_place = learn_keys = answer_of = None
    floors_of = levels_of = None

NATIVE = hrrn_values is not None
"""Whether the compiled kernels are in use."""
