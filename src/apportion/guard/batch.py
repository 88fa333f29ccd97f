"""Pick the largest batch that fits a device's free memory.

    size = max_batch_size(per_item="48Mi", overhead="1Gi", device="gpu:0")

``free`` is, by preference: the value given; the ledger's free amount for
that device; what the device reports free now (psutil for ``memory``, NVML
for ``gpu:N``). A safety margin (20 % by default) of the free memory is kept
back for allocator fragmentation and temporaries.

The per-item cost can be measured instead of guessed:
:func:`measure_item_cost` runs a function at a few batch sizes under a peak
meter (tracemalloc by default; :func:`torch_cuda_peak` for a GPU) and fits
``peak = overhead + per_item * batch``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

from apportion.core.resources import parse_quantity
from apportion.guard.capacity import gpu_memory_name
from apportion.guard.ledger import LocalLedger
from apportion.guard.nvml import AUTO, Nvml, NvmlChoice

DEFAULT_MARGIN = 0.20

PeakMeter = Callable[[Callable[[], object]], int]
"""Runs a thunk and returns the peak bytes it allocated on the device."""


def _bytes(value: int | str, field: str) -> int:
    return parse_quantity("memory", value, field)


def max_batch_size(
    per_item: int | str,
    *,
    overhead: int | str = 0,
    device: str = "memory",
    free: int | str | None = None,
    margin: float = DEFAULT_MARGIN,
    ledger: LocalLedger | None = None,
    limit: int | None = None,
    nvml: NvmlChoice = AUTO,
) -> int:
    """The largest ``n`` with ``overhead + n * per_item <= free * (1 - margin)``,
    capped at ``limit``; 0 when not even one item fits.

    ``device`` is ``"memory"`` (host) or ``"gpu:N"``.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    cost = _bytes(per_item, "per_item")
    if cost <= 0:
        raise ValueError("per_item must be positive")
    avail = _bytes(free, "free") if free is not None else free_memory(device, ledger, nvml)
    usable = int(avail * (1.0 - margin)) - _bytes(overhead, "overhead")
    n = max(0, usable // cost)
    return n if limit is None else min(n, limit)


def free_memory(device: str = "memory", ledger: LocalLedger | None = None,
                nvml: NvmlChoice = AUTO) -> int:
    """Free bytes on ``device``: the ledger's view when given, else the device's."""
    index = _gpu_index(device)
    if ledger is not None:
        name = "memory" if index is None else gpu_memory_name(index)
        if name not in ledger.capacity and index is not None:
            name = "gpu_memory"
        return max(0, ledger.free().get(name, 0))
    if index is None:
        return int(psutil.virtual_memory().available)
    handle = Nvml.open(nvml)
    if handle is None or index >= handle.count:
        raise ValueError(f"device {device!r}: no such GPU visible through NVML")
    return handle.free_memory(index) or 0


def _gpu_index(device: str) -> int | None:
    if device in ("memory", "cpu"):
        return None
    prefix, _, index = device.partition(":")
    if prefix in ("gpu", "cuda") and index.isdigit():
        return int(index)
    raise ValueError(f"device must be 'memory' or 'gpu:N', got {device!r}")


@dataclass(frozen=True, slots=True)
class ItemCost:
    """Fitted cost model: ``peak = overhead + per_item * batch``."""

    per_item: int
    overhead: int
    samples: tuple[tuple[int, int], ...]


def tracemalloc_peak(thunk: Callable[[], object]) -> int:
    """Peak bytes traced while ``thunk`` runs (Python objects and numpy buffers)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = thunk()
        peak = tracemalloc.get_traced_memory()[1] - base
        del result
    finally:
        if started:
            tracemalloc.stop()
    return max(0, peak)


def torch_cuda_peak(device: int = 0) -> PeakMeter:
    """A meter reading torch's CUDA allocator peak on ``cuda:device``."""
    torch = sys.modules.get("torch") or importlib.import_module("torch")

    def meter(thunk: Callable[[], object]) -> int:
        torch.cuda.synchronize(device)
        base = int(torch.cuda.memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)
        result = thunk()
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device)) - base
        del result
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        return max(0, peak)

    return meter


def measure_item_cost(
    fn: Callable[[int], object],
    sizes: Sequence[int] = (1, 2, 4, 8),
    *,
    meter: PeakMeter = tracemalloc_peak,
) -> ItemCost:
    """Run ``fn(batch)`` for each size under ``meter`` and fit a line.

    Use sizes small enough to be safe; the least-squares fit extrapolates.
    """
    if len(sizes) < 2 or len(set(sizes)) < 2:
        raise ValueError("measure_item_cost needs at least two different batch sizes")
    samples = tuple((n, meter(lambda n=n: fn(n))) for n in sorted(sizes))  # type: ignore[misc]
    per_item, overhead = _fit(samples)
    return ItemCost(per_item, overhead, samples)


def _fit(samples: Sequence[tuple[int, int]]) -> tuple[int, int]:
    xs = [float(n) for n, _ in samples]
    ys = [float(p) for _, p in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    slope = max(slope, 1.0)
    overhead = max(0.0, my - slope * mx)
    return round(slope), round(overhead)


def suggest_batch_size(
    fn: Callable[[int], object],
    *,
    probe_sizes: Sequence[int] = (1, 2, 4, 8),
    device: str = "memory",
    free: int | str | None = None,
    margin: float = DEFAULT_MARGIN,
    ledger: LocalLedger | None = None,
    limit: int | None = None,
    meter: PeakMeter = tracemalloc_peak,
) -> tuple[int, ItemCost]:
    """Measure ``fn``'s per-item cost, then the largest batch that fits."""
    cost = measure_item_cost(fn, probe_sizes, meter=meter)
    size = max_batch_size(
        cost.per_item, overhead=cost.overhead, device=device, free=free, margin=margin,
        ledger=ledger, limit=limit,
    )
    return size, cost
