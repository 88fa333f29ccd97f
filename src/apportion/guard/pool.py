"""Object pools, sync and async: reuse expensive objects (clients, sessions,
loaded pipelines) instead of building one per request.

Why not a library: the pool packages on PyPI are either unmaintained
(``object-pool`` 2013, ``generic-pool`` 2022) or pool coroutines rather
than objects (``asyncio-pool``), and none offers sync and async forms with
health checks, idle expiry and statistics together. The stdlib's
``threading.Condition`` and ``asyncio.Condition`` are all the machinery this
needs; the bookkeeping is shared by both forms in :class:`_Core`.

Invariant (property-tested): ``in_use + idle + being_created <= max_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from apportion.guard.errors import GuardError, PoolClosed, PoolTimeout

T = TypeVar("T")

_DEFAULT: Any = object()


@dataclass(slots=True)
class PoolStats:
    created: int = 0
    destroyed: int = 0
    creation_failures: int = 0
    acquisitions: int = 0
    reuses: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    timeouts: int = 0
    failed_checks: int = 0
    expired: int = 0
    peak_in_use: int = 0
    peak_size: int = 0

    @property
    def reuse_rate(self) -> float:
        return self.reuses / self.acquisitions if self.acquisitions else 0.0


class _Core(Generic[T]):
    """Pool bookkeeping without waiting; callers hold the pool's lock."""

    def __init__(
        self, min_size: int, max_size: int, idle_timeout: float | None,
        clock: Callable[[], float],
    ) -> None:
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, "
                             f"got min_size={min_size}, max_size={max_size}")
        self.min_size = min_size
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.idle: deque[tuple[T, float]] = deque()
        self.in_use: dict[int, T] = {}
        self.size = 0
        self.closed = False
        self.stats = PoolStats()

    def next_step(self, doomed: list[T]) -> tuple[str, T | None]:
        """``("idle", obj)``, ``("create", None)`` with a slot reserved, or
        ``("wait", None)``; expired idle objects go to ``doomed``."""
        if self.closed:
            raise PoolClosed("the pool is closed")
        self.expire(doomed)
        if self.idle:
            obj, _ = self.idle.pop()  # the most recently used one is warmest
            self._lend(obj)
            self.stats.reuses += 1
            return "idle", obj
        if self.size < self.max_size:
            self.size += 1
            self.stats.peak_size = max(self.stats.peak_size, self.size)
            return "create", None
        return "wait", None

    def expire(self, doomed: list[T]) -> None:
        if self.idle_timeout is None:
            return
        limit = self.clock() - self.idle_timeout
        while self.idle and self.idle[0][1] < limit and self.size > self.min_size:
            doomed.append(self.idle.popleft()[0])
            self.size -= 1
            self.stats.expired += 1

    def _lend(self, obj: T) -> None:
        self.in_use[id(obj)] = obj
        self.stats.acquisitions += 1
        self.stats.peak_in_use = max(self.stats.peak_in_use, len(self.in_use))

    def created(self, obj: T, lend: bool) -> None:
        self.stats.created += 1
        if lend:
            self._lend(obj)
        else:
            self.idle.append((obj, self.clock()))

    def creation_failed(self) -> None:
        self.size -= 1
        self.stats.creation_failures += 1

    def check_failed(self, obj: T) -> None:
        self.in_use.pop(id(obj), None)
        self.size -= 1
        self.stats.failed_checks += 1
        self.stats.acquisitions -= 1
        self.stats.reuses -= 1

    def put(self, obj: T, discard: bool) -> bool:
        """Return ``obj``; True when the caller must destroy it."""
        if self.in_use.pop(id(obj), None) is None:
            raise GuardError("this object is not checked out from this pool")
        if discard or self.closed:
            self.size -= 1
            return True
        self.idle.append((obj, self.clock()))
        return False

    def drain_idle(self) -> list[T]:
        doomed = [obj for obj, _ in self.idle]
        self.idle.clear()
        self.size -= len(doomed)
        return doomed

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "size": self.size,
            "in_use": len(self.in_use),
            "idle": len(self.idle),
            "min_size": self.min_size,
            "max_size": self.max_size,
            "created": s.created,
            "destroyed": s.destroyed,
            "creation_failures": s.creation_failures,
            "acquisitions": s.acquisitions,
            "reuses": s.reuses,
            "reuse_rate": round(s.reuse_rate, 4),
            "waits": s.waits,
            "wait_seconds": round(s.wait_seconds, 6),
            "timeouts": s.timeouts,
            "failed_checks": s.failed_checks,
            "expired": s.expired,
            "peak_in_use": s.peak_in_use,
            "peak_size": s.peak_size,
            "closed": self.closed,
        }


class ObjectPool(Generic[T]):
    """A thread-safe pool. ``factory()`` builds an object, ``check(obj)``
    (optional) says on checkout whether it is still good, ``destroy(obj)``
    (optional) cleans up one leaving the pool. ``min_size`` objects are
    built at once when ``prewarm``; idle ones beyond ``min_size`` are
    dropped after ``idle_timeout`` seconds. ``acquire_timeout`` (None: wait
    forever) bounds how long a checkout waits for a free object."""

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        min_size: int = 0,
        max_size: int = 10,
        idle_timeout: float | None = 300.0,
        check: Callable[[T], bool] | None = None,
        destroy: Callable[[T], object] | None = None,
        acquire_timeout: float | None = 30.0,
        prewarm: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core: _Core[T] = _Core(min_size, max_size, idle_timeout, clock)
        self._factory = factory
        self._check = check
        self._destroy = destroy
        self.acquire_timeout = acquire_timeout
        self._cond = threading.Condition()
        if prewarm:
            self.prewarm()

    def prewarm(self) -> int:
        """Build idle objects up to ``min_size``; the number built."""
        built = 0
        while True:
            with self._cond:
                if self._core.size >= self._core.min_size:
                    return built
                self._core.size += 1
            obj = self._create()
            with self._cond:
                self._core.created(obj, lend=False)
                self._cond.notify()
            built += 1

    def acquire(self, timeout: float | None = _DEFAULT) -> T:
        """Check out an object, waiting up to ``timeout`` seconds."""
        timeout = self.acquire_timeout if timeout is _DEFAULT else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        waited_since: float | None = None
        while True:
            doomed: list[T] = []
            with self._cond:
                step, obj = self._core.next_step(doomed)
                while step == "wait":
                    waited_since = self._wait(deadline, waited_since)
                    step, obj = self._core.next_step(doomed)
                self._note_wait(waited_since)
            self._destroy_all(doomed)
            if step == "create":
                return self._create_lent()
            assert obj is not None
            if self._healthy(obj):
                return obj

    def _wait(self, deadline: float | None, since: float | None) -> float:
        now = time.monotonic()
        if since is None:
            self._core.stats.waits += 1
            since = now
        remaining = None if deadline is None else deadline - now
        if remaining is not None and remaining <= 0:
            self._core.stats.timeouts += 1
            self._core.stats.wait_seconds += now - since
            raise PoolTimeout(
                f"no pooled object free within {round(now - since, 3)} s "
                f"(max_size {self._core.max_size}, all in use)"
            )
        self._cond.wait(remaining)
        return since

    def _note_wait(self, since: float | None) -> None:
        if since is not None:
            self._core.stats.wait_seconds += time.monotonic() - since

    def _create_lent(self) -> T:
        try:
            obj = self._create()
        except BaseException:
            with self._cond:
                self._core.creation_failed()
                self._cond.notify()
            raise
        with self._cond:
            self._core.created(obj, lend=True)
        return obj

    def _create(self) -> T:
        return self._factory()

    def _healthy(self, obj: T) -> bool:
        if self._check is None:
            return True
        try:
            ok = bool(self._check(obj))
        except Exception:
            ok = False
        if not ok:
            with self._cond:
                self._core.check_failed(obj)
                self._cond.notify()
            self._destroy_all([obj])
        return ok

    def release(self, obj: T, *, discard: bool = False) -> None:
        """Return ``obj``; ``discard`` destroys it instead (it broke)."""
        with self._cond:
            doomed = self._core.put(obj, discard)
            self._cond.notify()
        if doomed:
            self._destroy_all([obj])

    @contextlib.contextmanager
    def checkout(self, timeout: float | None = _DEFAULT) -> Iterator[T]:
        """``with pool.checkout() as obj:``; returned on every exit path."""
        obj = self.acquire(timeout)
        try:
            yield obj
        finally:
            self.release(obj)

    def sweep(self) -> int:
        """Drop idle objects past ``idle_timeout`` (down to ``min_size``)."""
        doomed: list[T] = []
        with self._cond:
            self._core.expire(doomed)
        self._destroy_all(doomed)
        return len(doomed)

    def close(self) -> None:
        """Destroy idle objects now and in-use ones when they come back."""
        with self._cond:
            self._core.closed = True
            doomed = self._core.drain_idle()
            self._cond.notify_all()
        self._destroy_all(doomed)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return self._core.snapshot()

    def _destroy_all(self, doomed: list[T]) -> None:
        for obj in doomed:
            with self._cond:
                self._core.stats.destroyed += 1
            if self._destroy is not None:
                with contextlib.suppress(Exception):  # a failing close must not leak the slot
                    self._destroy(obj)

    def __enter__(self) -> ObjectPool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AsyncObjectPool(Generic[T]):
    """The asyncio form of :class:`ObjectPool`, for one event loop.
    ``factory``, ``check`` and ``destroy`` may be plain or async functions."""

    def __init__(
        self,
        factory: Callable[[], T | Awaitable[T]],
        *,
        min_size: int = 0,
        max_size: int = 10,
        idle_timeout: float | None = 300.0,
        check: Callable[[T], bool | Awaitable[bool]] | None = None,
        destroy: Callable[[T], object] | None = None,
        acquire_timeout: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core: _Core[T] = _Core(min_size, max_size, idle_timeout, clock)
        self._factory = factory
        self._check = check
        self._destroy = destroy
        self.acquire_timeout = acquire_timeout
        self._cond: asyncio.Condition | None = None

    @property
    def _condition(self) -> asyncio.Condition:
        # Made on first use so the pool can be built outside a running loop.
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def prewarm(self) -> int:
        """Build idle objects up to ``min_size`` (call once at start-up)."""
        built = 0
        cond = self._condition
        while True:
            async with cond:
                if self._core.size >= self._core.min_size:
                    return built
                self._core.size += 1
            obj = await self._create()
            async with cond:
                self._core.created(obj, lend=False)
                cond.notify()
            built += 1

    async def acquire(self, timeout: float | None = _DEFAULT) -> T:
        timeout = self.acquire_timeout if timeout is _DEFAULT else timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waited_since: float | None = None
        cond = self._condition
        while True:
            doomed: list[T] = []
            async with cond:
                step, obj = self._core.next_step(doomed)
                while step == "wait":
                    waited_since = await self._wait(cond, deadline, waited_since)
                    step, obj = self._core.next_step(doomed)
                if waited_since is not None:
                    self._core.stats.wait_seconds += loop.time() - waited_since
            await self._destroy_all(doomed)
            if step == "create":
                return await self._create_lent()
            assert obj is not None
            if await self._healthy(obj):
                return obj

    async def _wait(
        self, cond: asyncio.Condition, deadline: float | None, since: float | None
    ) -> float:
        now = asyncio.get_running_loop().time()
        if since is None:
            self._core.stats.waits += 1
            since = now
        remaining = None if deadline is None else deadline - now
        if remaining is not None and remaining <= 0:
            self._core.stats.timeouts += 1
            self._core.stats.wait_seconds += now - since
            raise PoolTimeout(
                f"no pooled object free within {round(now - since, 3)} s "
                f"(max_size {self._core.max_size}, all in use)"
            )
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
        # cancel that lands as the wait ends, and the cancelled caller would
        # go on to take an object.
        try:
            async with asyncio.timeout(remaining):
                await cond.wait()
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            # A release may have woken this waiter alone (notify wakes one):
            # pass the wake-up on, or the next waiter sleeps to its deadline
            # beside an idle object. The lock is held again here.
            cond.notify()
            raise
        return since

    async def _create_lent(self) -> T:
        try:
            obj = await self._create()
        except BaseException:
            async with self._condition:
                self._core.creation_failed()
                self._condition.notify()
            raise
        async with self._condition:
            self._core.created(obj, lend=True)
        return obj

    async def _create(self) -> T:
        return await _maybe_await(self._factory())  # type: ignore[no-any-return]

    async def _healthy(self, obj: T) -> bool:
        if self._check is None:
            return True
        try:
            ok = bool(await _maybe_await(self._check(obj)))
        except Exception:
            ok = False
        if not ok:
            async with self._condition:
                self._core.check_failed(obj)
                self._condition.notify()
            await self._destroy_all([obj])
        return ok

    async def release(self, obj: T, *, discard: bool = False) -> None:
        async with self._condition:
            doomed = self._core.put(obj, discard)
            self._condition.notify()
        if doomed:
            await self._destroy_all([obj])

    @contextlib.asynccontextmanager
    async def checkout(self, timeout: float | None = _DEFAULT) -> AsyncIterator[T]:
        """``async with pool.checkout() as obj:``; returned on every exit path."""
        obj = await self.acquire(timeout)
        try:
            yield obj
        finally:
            await self.release(obj)

    async def sweep(self) -> int:
        doomed: list[T] = []
        async with self._condition:
            self._core.expire(doomed)
        await self._destroy_all(doomed)
        return len(doomed)

    async def close(self) -> None:
        async with self._condition:
            self._core.closed = True
            doomed = self._core.drain_idle()
            self._condition.notify_all()
        await self._destroy_all(doomed)

    def stats(self) -> dict[str, Any]:
        # Single loop: no await happens here, so the snapshot is consistent.
        return self._core.snapshot()

    async def _destroy_all(self, doomed: list[T]) -> None:
        for obj in doomed:
            self._core.stats.destroyed += 1
            if self._destroy is not None:
                with contextlib.suppress(Exception):
                    await _maybe_await(self._destroy(obj))

    async def __aenter__(self) -> AsyncObjectPool[T]:
        await self.prewarm()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
