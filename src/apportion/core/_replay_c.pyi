# The replays' compiled kernels (_replay_c.pyx): the adaptive queues'
# response ratios and the conservative count profile's scan.
from collections.abc import Callable
from typing import Any, Literal

from apportion.core.scheduling.adaptive_parts import _Learner

def hrrn_values(
    now: float, heads: list[float], es: list[float], signs: list[float]
) -> list[float] | Literal[False] | None: ...

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

def learn_keys(history: _Learner, keys: list[tuple[str, object]], run_time: float) -> None: ...

def answer_of(history: Any, number: int) -> tuple[float | None, float | None]: ...

def floors_of(
    history: Any, jobs: Any, table: Any
) -> tuple[list[float | None], list[bool]]: ...

def levels_of(
    history: Any, levels: tuple[str, ...]
) -> tuple[tuple[str, ...], list[str], dict[str, float]]: ...
