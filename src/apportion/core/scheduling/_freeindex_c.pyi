# The compiled free index (_freeindex_c.pyx): the pure class's interface,
# and the one-task walk and ranking ``fastindex.pick`` exposes.
from collections.abc import Mapping
from typing import Literal

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
