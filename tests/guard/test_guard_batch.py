from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from apportion.guard import (
    LocalLedger,
    free_memory,
    max_batch_size,
    measure_item_cost,
    suggest_batch_size,
)

MIB = 2**20
GIB = 2**30


def test_largest_batch_with_the_default_margin() -> None:
    # 1 GiB free, 20 % kept back: 858993459 usable - 100 MiB = 754135859 -> 71 x 10 MiB.
    assert max_batch_size("10Mi", overhead="100Mi", free="1Gi") == 71


def test_margin_limit_and_nothing_fits() -> None:
    assert max_batch_size(MIB, free=100 * MIB, margin=0.0) == 100
    assert max_batch_size(MIB, free=100 * MIB, margin=0.0, limit=64) == 64
    assert max_batch_size("1Gi", free="512Mi") == 0
    assert max_batch_size("1Mi", overhead="2Gi", free="1Gi") == 0


def test_free_memory_from_the_ledger() -> None:
    ledger = LocalLedger({"memory": 100 * MIB, "gpu.0.memory": 10 * GIB, "gpu_memory": 10 * GIB})
    with ledger.reserve({"memory": "50Mi"}):
        assert max_batch_size("1Mi", ledger=ledger, margin=0.0) == 50
    assert free_memory("gpu:0", ledger) == 10 * GIB
    assert max_batch_size("1Gi", device="gpu:0", ledger=ledger, margin=0.5) == 5


def test_free_gpu_memory_through_fake_nvml(fake_nvml: Any) -> None:
    assert free_memory("gpu:1") == 10 * GIB
    assert max_batch_size("1Gi", overhead="2Gi", device="cuda:0") == 54  # 70Gi*0.8-2Gi


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        max_batch_size(0, free=10)
    with pytest.raises(ValueError):
        max_batch_size(1, free=10, margin=1.0)
    with pytest.raises(ValueError):
        max_batch_size(1, device="tpu:0", free=None)
    with pytest.raises(ValueError):
        measure_item_cost(lambda n: n, sizes=(4, 4))


def test_measure_item_cost_by_probing_real_allocations() -> None:
    def step(batch: int) -> int:
        overhead = np.ones(3 * MIB, dtype=np.uint8)
        acts = np.ones(batch * MIB, dtype=np.uint8)
        return int(overhead[0]) + int(acts[0])

    cost = measure_item_cost(step, sizes=(1, 2, 4, 8))
    assert [n for n, _ in cost.samples] == [1, 2, 4, 8]
    assert abs(cost.per_item - MIB) < 0.05 * MIB
    assert abs(cost.overhead - 3 * MIB) < 0.2 * MIB


def test_suggest_batch_size() -> None:
    def step(batch: int) -> object:
        return np.ones(batch * MIB, dtype=np.uint8)

    size, cost = suggest_batch_size(step, free="100Mi", margin=0.2)
    assert abs(cost.per_item - MIB) < 0.05 * MIB
    assert 78 <= size <= 80


def test_custom_meter() -> None:
    def meter(thunk: Callable[[], object]) -> int:
        batch = thunk()
        assert isinstance(batch, int)
        return 10 + 5 * batch

    cost = measure_item_cost(lambda n: n, sizes=(1, 3), meter=meter)
    assert (cost.per_item, cost.overhead) == (5, 10)
