"""Real-GPU check of the in-process guard (run by scripts/device_gpu_check.sh
on a machine with an NVIDIA GPU and torch; CI tests the same code against a
fake NVML and a fake torch).

Prints JSON lines: the monitor's GPU sample, the batch helper's measured
per-item cost and the batch it allows (then allocates that batch for real),
and the model cache evicting a GPU-resident model (torch tensors) to make
room, with NVML's free memory before and after.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections.abc import Callable
from typing import Any

import torch

from apportion.guard import (
    InsufficientHostResources,
    LocalLedger,
    ModelCache,
    Sampler,
    discover_local_capacity,
    max_batch_size,
    measure_item_cost,
    torch_cuda_peak,
)
from apportion.guard.nvml import Nvml

GI = 2**30
MI = 2**20


def show(name: str, fn: Callable[[], dict[str, Any]]) -> None:
    try:
        print(json.dumps({"check": name, **fn()}, default=str))
    except Exception:  # a device check reports every failure and goes on
        print(json.dumps({"check": name, "error": traceback.format_exc()}))


def nvml_free() -> int:
    handle = Nvml.open()
    assert handle is not None
    return int(handle.free_memory(0) or 0)


def monitor_sample() -> dict[str, Any]:
    sample = Sampler()()
    return {"gpus": [dataclasses.asdict(g) for g in sample.gpus]}


def batch_helper() -> dict[str, Any]:
    item = 256 * MI

    def step(n: int) -> object:
        return torch.empty(n * item // 4, dtype=torch.float32, device="cuda:0")

    cost = measure_item_cost(step, (1, 2, 4, 8), meter=torch_cuda_peak(0))
    free = nvml_free()
    n = max_batch_size(cost.per_item, overhead=cost.overhead, device="gpu:0")
    batch = step(n)  # the batch the helper allowed really fits
    torch.cuda.synchronize()
    fitted = batch.numel() * 4
    del batch
    torch.cuda.empty_cache()
    over = int(n / 0.8 * 1.1)  # past the free memory the margin kept back
    try:
        step(over)
        over_result = "fit"
    except torch.OutOfMemoryError:
        over_result = "OutOfMemoryError"
    torch.cuda.empty_cache()
    return {"per_item": cost.per_item, "overhead": cost.overhead, "samples": cost.samples,
            "free_before": free, "batch": n, "allocated": fitted,
            "batch_x1.375": over, "batch_x1.375_result": over_result}


def model_cache() -> dict[str, Any]:
    capacity = discover_local_capacity()
    ledger = LocalLedger(capacity)
    evicted: list[str] = []
    cache = ModelCache(ledger, on_evict=[lambda entry: evicted.append(entry.key)])
    model = 50 * GI

    def load() -> object:
        return torch.empty(model // 2, dtype=torch.float16, device="cuda:0")

    steps = []
    for key in ("model-a", "model-b", "model-c"):
        before = nvml_free()
        cache.get_or_load(key, load, gpu_memory=model, device=0)
        torch.cuda.synchronize()
        steps.append({"loaded": key, "nvml_free_before": before, "nvml_free_after": nvml_free(),
                      "cached": cache.keys(), "evicted_so_far": list(evicted)})
    try:
        cache.get_or_load("model-huge", load, gpu_memory=200 * GI, device=0)
        refused = None
    except InsufficientHostResources as exc:
        refused = str(exc)
    return {"gpu_capacity": capacity.resources, "steps": steps, "huge_refused": refused,
            "stats": dataclasses.asdict(cache.stats)}


if __name__ == "__main__":
    show("monitor_sample", monitor_sample)
    show("batch_helper", batch_helper)
    show("model_cache", model_cache)
