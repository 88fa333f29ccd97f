"""In-process resource guard: apportion as a library inside one service.

    from apportion import guard

    g = guard.Guard.create(profiles="profiles.toml")   # capacity: task or machine
    g.validate("facebook/musicgen-medium")              # InsufficientHostResources if short
    with g.reserve("facebook/musicgen-medium"):         # held until the block ends
        ...

The ASGI/FastAPI integration lives in :mod:`apportion.guard.asgi` (imported
on demand so the library does not pull in FastAPI). See ``docs/guard.md``.
"""

from __future__ import annotations

from apportion.guard.batch import (
    ItemCost,
    free_memory,
    max_batch_size,
    measure_item_cost,
    suggest_batch_size,
    torch_cuda_peak,
    tracemalloc_peak,
)
from apportion.guard.cache import CacheEntry, CacheStats, ModelCache, torch_empty_cache
from apportion.guard.calls import CALLS, CallHistory, CallRecord, resource_monitored
from apportion.guard.capacity import GpuDevice, LocalCapacity, discover_local_capacity
from apportion.guard.errors import (
    GuardError,
    InsufficientHostResources,
    PoolClosed,
    PoolTimeout,
    ProfileFileError,
    ReservationError,
    Short,
    TaskEnvironmentError,
    UnknownProfile,
)
from apportion.guard.guard import Guard
from apportion.guard.ledger import LocalLedger, Reservation
from apportion.guard.monitor import (
    DEFAULT_THRESHOLDS,
    Alert,
    Level,
    PressureMonitor,
    Sample,
    Sampler,
    Threshold,
    Trend,
)
from apportion.guard.pool import AsyncObjectPool, ObjectPool, PoolStats
from apportion.guard.profiles import Profiles, Requirement
from apportion.guard.profiling import ProfileReport, profile_block
from apportion.guard.sizing import Size, estimate_size
from apportion.protocol import DEVICES_ENV, RESOURCES_ENV, USAGE_FILE_ENV

# Old names of public guard API, kept so that services written against the
# guard still import them: the host's refusal, before the cluster's error of
# that name was told apart from it, and what the capacity function discovers
# (the agent's ``discover`` is another thing: the hardware a node offers).
InsufficientResources = InsufficientHostResources
discover = discover_local_capacity

__all__ = [
    "CALLS",
    "DEFAULT_THRESHOLDS",
    "DEVICES_ENV",
    "RESOURCES_ENV",
    "USAGE_FILE_ENV",
    "Alert",
    "AsyncObjectPool",
    "CacheEntry",
    "CacheStats",
    "CallHistory",
    "CallRecord",
    "GpuDevice",
    "Guard",
    "GuardError",
    "InsufficientHostResources",
    "InsufficientResources",
    "ItemCost",
    "Level",
    "LocalCapacity",
    "LocalLedger",
    "ModelCache",
    "ObjectPool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "PressureMonitor",
    "ProfileFileError",
    "ProfileReport",
    "Profiles",
    "Requirement",
    "Reservation",
    "ReservationError",
    "Sample",
    "Sampler",
    "Short",
    "Size",
    "TaskEnvironmentError",
    "Threshold",
    "Trend",
    "UnknownProfile",
    "discover",
    "discover_local_capacity",
    "estimate_size",
    "free_memory",
    "max_batch_size",
    "measure_item_cost",
    "profile_block",
    "resource_monitored",
    "suggest_batch_size",
    "torch_cuda_peak",
    "torch_empty_cache",
    "tracemalloc_peak",
]
