# The compiled free index (_freeindex_c.pyx): the pure class's interface,
# the one-task walk and ranking ``fastindex.pick`` exposes, and the replay
# kernels of the adaptive queues and the conservative count profile.
from collections.abc import Callable, Mapping
from typing import Any, Literal

from apportion.core.scheduling.capacity import Bucket, FreeCapacity, NodeRec
from apportion.core.scheduling.freeindex import Entry
from apportion.core.scheduling.freeindex import FreeIndex as PureFreeIndex

class FreeIndex(PureFreeIndex): ...

def pick(
    index: PureFreeIndex, k0: int, i0: int, loose: bool, vmask: int,
    need: tuple[tuple[str, int], ...], first_of: dict[int, tuple[int, int]],
    need_of: dict[int, tuple[tuple[int, int], ...]], walked_of: dict[int, tuple[int, int]],
    buckets: Mapping[int, Bucket], aligned_of: Mapping[int, tuple[int, ...]], limit: int,
    first: bool, scoring: tuple[tuple[int, float], ...],
) -> Entry | Literal[False] | None: ...

def score(
    code: int, cap: tuple[int, ...], free: tuple[int, ...], aligned: tuple[int, ...]
) -> float | None: ...

def move_free(
    state: FreeCapacity, rec: NodeRec, old: tuple[int, ...], new: tuple[int, ...]
) -> None: ...

def hrrn_values(
    now: float, heads: list[float], es: list[float], signs: list[float]
) -> list[float] | None: ...

def count_place(
    times: list[float], free: list[int], need: int, duration: float | None, idle: int,
    first_only: bool, i: int,
) -> float | Literal[False] | None: ...

def hrrn_ranked(
    now: float, fifo: list[tuple[float, str, int, int, Any]],
    answers: dict[int, tuple[float | None, float | None]],
    answer: Callable[[int], tuple[float | None, float | None]],
) -> tuple[
    list[tuple[str, float | None, int]], list[tuple[str, float | None, int]], list[float]
]: ...

def hrrn_top(values: list[float]) -> int: ...
