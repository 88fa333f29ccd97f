"""Answers remembered per input on the grant path, bounded in size."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Computed answers by key. Grants come in a few shapes, so a memo that
    fills up is seeing odd inputs: it empties itself whole, which costs less
    than keeping track of the oldest entry."""

    __slots__ = ("_answers", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._answers: dict[K, V] = {}
        self.limit = limit

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The answer for ``key``, made by ``make`` the first time (an
        exception from ``make`` is not remembered: it raises every time)."""
        answer = self._answers.get(key)
        if answer is None:
            answer = make()
            if len(self._answers) >= self.limit:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def __len__(self) -> int:
        return len(self._answers)
