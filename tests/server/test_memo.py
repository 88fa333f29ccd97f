"""The grant path's bounded memo (``server/memo.py``)."""

from __future__ import annotations

import pytest

from apportion.server.memo import Memo


def test_an_answer_is_made_once_per_key() -> None:
    memo: Memo[str, int] = Memo()
    made: list[str] = []

    def make(key: str) -> int:
        made.append(key)
        return len(key)

    assert memo.get("ab", lambda: make("ab")) == 2
    assert memo.get("ab", lambda: make("ab")) == 2
    assert memo.get("abc", lambda: make("abc")) == 3
    assert made == ["ab", "abc"]


def test_a_full_memo_starts_over() -> None:
    memo: Memo[int, int] = Memo(limit=2)
    memo.get(1, lambda: 10)
    memo.get(2, lambda: 20)
    assert len(memo) == 2
    assert memo.get(3, lambda: 30) == 30
    assert len(memo) == 1
    assert memo.get(1, lambda: 11) == 11  # forgotten, made again


def test_a_refusal_is_not_remembered() -> None:
    memo: Memo[str, int] = Memo()

    def refuse() -> int:
        raise ValueError("cpu: not a quantity")

    for _ in range(2):
        with pytest.raises(ValueError, match="cpu: not a quantity"):
            memo.get("bad", refuse)
    assert len(memo) == 0
