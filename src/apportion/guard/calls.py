"""``@resource_monitored``: what each call cost in time, CPU and memory.

Each call of a decorated function (sync or async) is recorded into a
:class:`CallHistory` (bounded) and logged at DEBUG on
``apportion.guard.calls``. Recorded per call:

- ``wall_seconds``: elapsed time.
- ``cpu_seconds``: CPU time of the calling thread. For a coroutine that is
  the event-loop thread's CPU while the call was pending, so other tasks
  that ran meanwhile are included.
- ``memory_delta``: resident set size after minus before.
- ``peak_memory_delta``: with tracemalloc tracing, the traced peak during the
  call minus the start (exact for Python and numpy allocations, but
  ``tracemalloc.reset_peak`` is process-wide, so overlapping calls share one
  peak). Without it, the rise of the process's high-water RSS when the call
  set a new one, else the RSS delta (a lower bound).
- ``gpu_memory_delta``: ``torch.cuda.memory_allocated()`` after minus before
  when torch is already imported and sees CUDA; else ``None``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

try:
    import resource as _resource
except ImportError:  # pragma: no cover - not on Windows
    _resource = None  # type: ignore[assignment]

import psutil

log = logging.getLogger("apportion.guard.calls")

P = ParamSpec("P")
R = TypeVar("R")
MemoryMode = Literal["auto", "rss", "tracemalloc", "off"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(slots=True)
class CallRecord:
    """One call's costs. Not frozen: a frozen dataclass's ``__init__`` costs
    about a microsecond more, and this is built on every monitored call."""

    name: str
    started: float
    wall_seconds: float
    cpu_seconds: float
    memory_delta: int | None
    peak_memory_delta: int | None
    gpu_memory_delta: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started": self.started,
            "wall_seconds": round(self.wall_seconds, 6),
            "cpu_seconds": round(self.cpu_seconds, 6),
            "memory_delta": self.memory_delta,
            "peak_memory_delta": self.peak_memory_delta,
            "gpu_memory_delta": self.gpu_memory_delta,
            "error": self.error,
        }


@dataclass(slots=True)
class CallStats:
    """Running totals for one function name."""

    calls: int = 0
    errors: int = 0
    wall_total: float = 0.0
    wall_max: float = 0.0
    cpu_total: float = 0.0
    peak_memory_max: int = 0

    def add(self, rec: CallRecord) -> None:
        self.calls += 1
        self.errors += rec.error is not None
        self.wall_total += rec.wall_seconds
        self.wall_max = max(self.wall_max, rec.wall_seconds)
        self.cpu_total += rec.cpu_seconds
        self.peak_memory_max = max(self.peak_memory_max, rec.peak_memory_delta or 0)

    def to_dict(self) -> dict[str, Any]:
        n = self.calls or 1
        return {
            "calls": self.calls,
            "errors": self.errors,
            "wall_mean": round(self.wall_total / n, 6),
            "wall_max": round(self.wall_max, 6),
            "cpu_mean": round(self.cpu_total / n, 6),
            "peak_memory_max": self.peak_memory_max,
        }


class CallHistory:
    """The last ``maxlen`` call records and per-name totals; thread-safe."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.records: deque[CallRecord] = deque(maxlen=maxlen)
        self._stats: dict[str, CallStats] = {}
        self._lock = threading.Lock()

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            self.records.append(rec)
            stats = self._stats.get(rec.name)
            if stats is None:
                stats = self._stats[rec.name] = CallStats()
            stats.add(rec)

    def recent(self, limit: int = 100) -> list[CallRecord]:
        with self._lock:
            return list(self.records)[-limit:]

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: s.to_dict() for name, s in sorted(self._stats.items())}

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self._stats.clear()


CALLS = CallHistory()
"""Where ``@resource_monitored`` records when no history is given."""


# -- cheap memory readings --------------------------------------------------


class _Rss:
    """Current RSS from ``/proc/self/statm`` through a kept file descriptor
    (a few µs; psutil takes several times longer), psutil elsewhere."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid = -1

    def __call__(self) -> int:
        if self._pid != os.getpid():  # reopen after fork: the fd names the parent
            self._open()
        if self._fd is None:
            return int(psutil.Process().memory_info().rss)
        return int(os.pread(self._fd, 64, 0).split()[1]) * _PAGE

    def _open(self) -> None:
        self._pid = os.getpid()
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None


_rss = _Rss()


def _max_rss() -> int:
    if _resource is None:  # pragma: no cover
        return 0
    # ru_maxrss is KiB on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return int(_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss) * scale


def _torch_allocated() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.memory_allocated())
    except Exception:  # a broken CUDA must not break the monitored call
        return None


_Start = tuple[float, float, int | None, int, int | None, int | None]
"""wall, cpu, rss, max_rss, traced, gpu at the start of a call (a tuple: cheapest)."""


class _Meter:
    """Reads before and after a call and turns them into a record."""

    __slots__ = ("gpu", "history", "level", "memory", "name")

    def __init__(
        self, name: str, history: CallHistory, memory: MemoryMode, gpu: bool, level: int
    ) -> None:
        self.name = name
        self.history = history
        self.memory = memory
        self.gpu = gpu
        self.level = level

    def start(self) -> _Start:
        traced = None
        rss = None
        max_rss = 0
        mode = self.memory
        # "tracemalloc" without tracing on falls back to RSS, like "auto".
        if mode in ("auto", "tracemalloc") and tracemalloc.is_tracing():
            traced = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        if mode != "off":
            rss = _rss()
            max_rss = _max_rss() if traced is None else 0
        gpu = _torch_allocated() if self.gpu else None
        return (time.perf_counter(), time.thread_time(), rss, max_rss, traced, gpu)

    def finish(self, s: _Start, error: BaseException | None) -> None:
        wall = time.perf_counter() - s[0]
        cpu = time.thread_time() - s[1]
        rss0, gpu0 = s[2], s[5]
        rss_delta = peak = None
        if rss0 is not None:
            rss_delta = _rss() - rss0
            peak = self._peak(s, rss0, rss_delta)
        gpu_delta = None
        if gpu0 is not None:
            now = _torch_allocated()
            gpu_delta = None if now is None else now - gpu0
        rec = CallRecord(
            self.name, time.time() - wall, wall, cpu, rss_delta, peak, gpu_delta,
            None if error is None else type(error).__name__,
        )
        self.history.record(rec)
        if log.isEnabledFor(self.level):
            log.log(self.level, "call %s wall=%.6fs cpu=%.6fs mem=%s peak=%s gpu=%s err=%s",
                    rec.name, wall, cpu, rss_delta, peak, gpu_delta, rec.error)

    @staticmethod
    def _peak(s: _Start, rss0: int, rss_delta: int) -> int:
        traced = s[4]
        if traced is not None and tracemalloc.is_tracing():
            return max(0, tracemalloc.get_traced_memory()[1] - traced)
        high = _max_rss()
        if high > s[3]:  # this call set a new high-water mark
            return max(0, high - rss0)
        return max(0, rss_delta)


@overload
def resource_monitored(func: Callable[P, R]) -> Callable[P, R]: ...


@overload
def resource_monitored(
    func: None = None,
    *,
    name: str | None = None,
    history: CallHistory | None = None,
    memory: MemoryMode = "auto",
    gpu: bool | None = None,
    log_level: int = logging.DEBUG,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def resource_monitored(
    func: Callable[P, R] | None = None,
    *,
    name: str | None = None,
    history: CallHistory | None = None,
    memory: MemoryMode = "auto",
    gpu: bool | None = None,
    log_level: int = logging.DEBUG,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Record wall time, CPU time, memory and GPU memory deltas of each call.

    Use bare (``@resource_monitored``) or with options. ``memory="off"``
    skips memory readings (cheapest); ``gpu=None`` reads torch's CUDA
    allocator only when torch is imported at decoration time.
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        use_gpu = gpu if gpu is not None else "torch" in sys.modules
        meter = _Meter(name or f.__qualname__, history or CALLS, memory, use_gpu, log_level)
        if inspect.iscoroutinefunction(f):
            return cast(Callable[P, R], _wrap_async(f, meter))
        return _wrap_sync(f, meter)

    if func is not None:
        return decorate(func)
    return decorate


def _wrap_sync(f: Callable[P, R], meter: _Meter) -> Callable[P, R]:
    @functools.wraps(f)
    def monitored(*args: P.args, **kwargs: P.kwargs) -> R:
        start = meter.start()
        try:
            result = f(*args, **kwargs)
        except BaseException as exc:
            meter.finish(start, exc)
            raise
        meter.finish(start, None)
        return result

    return monitored


def _wrap_async(f: Callable[P, Awaitable[Any]], meter: _Meter) -> Callable[P, Awaitable[Any]]:
    @functools.wraps(f)
    async def monitored(*args: P.args, **kwargs: P.kwargs) -> Any:
        start = meter.start()
        try:
            result = await f(*args, **kwargs)
        except BaseException as exc:
            meter.finish(start, exc)
            raise
        meter.finish(start, None)
        return result

    return monitored
