# The compiled free index (_freeindex_c.pyx): the pure class's interface,
# and the one-task walk, ranking and grant ``fastindex.pick`` exposes.
from collections.abc import Callable
from typing import Literal

from apportion.core.scheduling.capacity import FreeCapacity, NodeRec
from apportion.core.scheduling.filters import NeedPast, Verdict
from apportion.core.scheduling.freeindex import FreeIndex as PureFreeIndex
from apportion.core.scheduling.jobs import TaskSpec
from apportion.core.scheduling.state import ClusterState

class FreeIndex(PureFreeIndex): ...

def pick(
    state: ClusterState, spec: TaskSpec, verdict: Verdict, loose: bool, limit: int,
    first_is_best: bool, scoring: tuple[tuple[int, float], ...], job_id: str | None,
    need_past: Callable[[ClusterState, Verdict, str, TaskSpec], NeedPast],
) -> tuple[NodeRec, tuple[int, ...], bool] | Literal[False] | None: ...

def score(
    code: int, cap: tuple[int, ...], free: tuple[int, ...], aligned: tuple[int, ...]
) -> float | None: ...

def move_free(
    state: FreeCapacity, rec: NodeRec, old: tuple[int, ...], new: tuple[int, ...]
) -> None: ...

def frozen(cls: type, slots: tuple[object, ...], *values: object) -> object: ...
