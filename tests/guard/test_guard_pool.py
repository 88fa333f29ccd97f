from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.guard import AsyncObjectPool, GuardError, ObjectPool, PoolClosed, PoolTimeout
from support import cancel_later


class Tracker:
    """A factory that counts live objects and catches double checkouts."""

    def __init__(self) -> None:
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.live = 0
        self.peak_live = 0
        self.out: set[int] = set()
        self.double_checkouts = 0
        self.peak_out = 0

    def make(self) -> dict[str, int]:
        with self.lock:
            self.live += 1
            self.peak_live = max(self.peak_live, self.live)
            return {"id": next(self.ids)}

    def destroy(self, obj: dict[str, int]) -> None:
        with self.lock:
            self.live -= 1

    def lend(self, obj: dict[str, int]) -> None:
        with self.lock:
            if obj["id"] in self.out:
                self.double_checkouts += 1
            self.out.add(obj["id"])
            self.peak_out = max(self.peak_out, len(self.out))

    def back(self, obj: dict[str, int]) -> None:
        with self.lock:
            self.out.discard(obj["id"])


@settings(max_examples=25, deadline=None)
@given(
    max_size=st.integers(1, 4),
    min_size=st.integers(0, 4),
    workers=st.integers(1, 8),
    rounds=st.integers(1, 6),
    hold=st.sampled_from([0.0, 0.0005]),
)
def test_threads_never_exceed_max_size(
    max_size: int, min_size: int, workers: int, rounds: int, hold: float
) -> None:
    min_size = min(min_size, max_size)
    tracker = Tracker()
    pool = ObjectPool(
        tracker.make, min_size=min_size, max_size=max_size, destroy=tracker.destroy,
        acquire_timeout=None,
    )

    def work() -> None:
        for _ in range(rounds):
            with pool.checkout() as obj:
                tracker.lend(obj)
                time.sleep(hold)
                tracker.back(obj)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = pool.stats()
    assert tracker.double_checkouts == 0
    assert tracker.peak_live <= max_size
    assert tracker.peak_out <= max_size
    assert stats["peak_size"] <= max_size
    assert stats["acquisitions"] == workers * rounds
    assert stats["in_use"] == 0
    assert stats["created"] == tracker.peak_live
    pool.close()
    assert tracker.live == 0


@settings(max_examples=25, deadline=None)
@given(
    max_size=st.integers(1, 4),
    tasks=st.integers(1, 10),
    rounds=st.integers(1, 5),
    async_factory=st.booleans(),
)
def test_asyncio_never_exceeds_max_size(
    max_size: int, tasks: int, rounds: int, async_factory: bool
) -> None:
    tracker = Tracker()

    async def make_async() -> dict[str, int]:
        await asyncio.sleep(0)
        return tracker.make()

    async def main() -> dict[str, Any]:
        pool: AsyncObjectPool[dict[str, int]] = AsyncObjectPool(
            make_async if async_factory else tracker.make,
            max_size=max_size, destroy=tracker.destroy, acquire_timeout=None,
        )

        async def work() -> None:
            for _ in range(rounds):
                async with pool.checkout() as obj:
                    tracker.lend(obj)
                    await asyncio.sleep(0)
                    tracker.back(obj)

        await asyncio.gather(*(work() for _ in range(tasks)))
        stats = pool.stats()
        await pool.close()
        return stats

    stats = asyncio.run(main())
    assert tracker.double_checkouts == 0
    assert tracker.peak_live <= max_size
    assert stats["peak_in_use"] <= max_size
    assert stats["acquisitions"] == tasks * rounds
    assert tracker.live == 0


def test_prewarm_and_reuse_statistics() -> None:
    tracker = Tracker()
    pool = ObjectPool(tracker.make, min_size=2, max_size=3)
    assert pool.stats()["idle"] == 2
    for _ in range(4):
        with pool.checkout():
            pass
    stats = pool.stats()
    assert (stats["created"], stats["reuses"], stats["acquisitions"]) == (2, 4, 4)
    assert stats["reuse_rate"] == 1.0
    assert stats["waits"] == 0


def test_acquisition_timeout() -> None:
    pool = ObjectPool(object, max_size=1)
    held = pool.acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0.02)
    stats = pool.stats()
    assert (stats["waits"], stats["timeouts"]) == (1, 1)
    pool.release(held)


def test_waiting_checkout_gets_the_released_object() -> None:
    pool = ObjectPool(object, max_size=1)
    held = pool.acquire()
    timer = threading.Timer(0.05, pool.release, args=(held,))
    timer.start()
    assert pool.acquire(timeout=30) is held
    timer.join()
    assert pool.stats()["waits"] == 1


def test_health_check_replaces_broken_objects() -> None:
    tracker = Tracker()
    broken: set[int] = set()
    pool = ObjectPool(
        tracker.make, max_size=2, check=lambda o: o["id"] not in broken, destroy=tracker.destroy
    )
    first = pool.acquire()
    pool.release(first)
    broken.add(first["id"])
    second = pool.acquire()
    assert second["id"] == 1
    stats = pool.stats()
    assert (stats["failed_checks"], stats["destroyed"], stats["size"]) == (1, 1, 1)
    assert tracker.live == 1


def test_idle_timeout_drops_idle_objects_down_to_min_size() -> None:
    now = [0.0]
    tracker = Tracker()
    pool = ObjectPool(
        tracker.make, min_size=1, max_size=3, idle_timeout=10.0, destroy=tracker.destroy,
        clock=lambda: now[0],
    )
    objs = [pool.acquire() for _ in range(3)]
    for obj in objs:
        pool.release(obj)
    now[0] = 100.0
    assert pool.sweep() == 2
    assert pool.stats()["size"] == 1
    assert tracker.live == 1


def test_discard_and_foreign_objects() -> None:
    pool = ObjectPool(object, max_size=1)
    obj = pool.acquire()
    pool.release(obj, discard=True)
    assert pool.stats()["size"] == 0
    with pytest.raises(GuardError):
        pool.release(object())


def test_factory_failure_frees_the_slot() -> None:
    calls = itertools.count()

    def flaky() -> object:
        if next(calls) == 0:
            raise ConnectionError("backend down")
        return object()

    pool = ObjectPool(flaky, max_size=1)
    with pytest.raises(ConnectionError):
        pool.acquire()
    with pool.checkout(timeout=0):
        pass
    assert pool.stats()["creation_failures"] == 1


def test_closed_pool_refuses_checkouts() -> None:
    tracker = Tracker()
    with ObjectPool(tracker.make, min_size=1, destroy=tracker.destroy) as pool:
        obj = pool.acquire()
    with pytest.raises(PoolClosed):
        pool.acquire()
    pool.release(obj)
    assert tracker.live == 0


def test_async_timeout_health_check_and_prewarm() -> None:
    async def main() -> dict[str, object]:
        made = itertools.count()
        broken: set[int] = set()

        async def check(obj: int) -> bool:
            return obj not in broken

        async with AsyncObjectPool(lambda: next(made), min_size=1, max_size=1,
                                   check=check) as pool:
            assert pool.stats()["idle"] == 1
            first = await pool.acquire()
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=0.02)
            await pool.release(first)
            broken.add(first)
            second = await pool.acquire()
            assert second == 1
            await pool.release(second)
            return pool.stats()

    stats = asyncio.run(main())
    assert (stats["timeouts"], stats["failed_checks"], stats["created"]) == (1, 1, 2)


@pytest.mark.parametrize(("min_size", "max_size"), [(0, 0), (3, 2), (-1, 2)])
def test_bad_sizes(min_size: int, max_size: int) -> None:
    with pytest.raises(ValueError):
        ObjectPool(object, min_size=min_size, max_size=max_size)



def test_async_waiter_cancelled_as_an_object_comes_back_keeps_its_cancel() -> None:
    # On Python 3.11, asyncio.wait_for could swallow a cancel that landed
    # just as the awaited wait ended: the "cancelled" waiter went on and took
    # the object. Cancel at each step of the wake-up (callbacks chained
    # through the loop's ready queue) and check that a cancel that was
    # accepted is the waiter's end.
    async def one(steps: int) -> tuple[bool, int]:
        pool: AsyncObjectPool[int] = AsyncObjectPool(lambda: 7, max_size=1,
                                                      acquire_timeout=60)
        held = await pool.acquire()
        waiter = asyncio.create_task(pool.acquire())
        while not pool.stats()["waits"]:
            await asyncio.sleep(0)
        accepted: list[bool] = []

        cancel_later(waiter, steps, accepted)
        await pool.release(held)
        try:
            got: int | None = await waiter
        except asyncio.CancelledError:
            got = None
        if got is not None:
            await pool.release(got)
        return any(accepted) and got is not None, pool.stats()["in_use"]

    async def main() -> list[tuple[bool, int]]:
        return [await one(steps) for steps in range(8)]

    assert asyncio.run(main()) == [(False, 0)] * 8


def test_async_wake_up_of_a_cancelled_waiter_passes_to_the_next() -> None:
    # A release wakes one waiter; if that one is cancelled before it runs,
    # the next waiter must get the object now, not at its deadline.
    async def main() -> tuple[bool, int]:
        pool: AsyncObjectPool[int] = AsyncObjectPool(lambda: 7, max_size=1,
                                                      acquire_timeout=600)
        held = await pool.acquire()
        first = asyncio.create_task(pool.acquire())
        second = asyncio.create_task(pool.acquire())
        while pool.stats()["waits"] < 2:
            await asyncio.sleep(0)
        await pool.release(held)
        first.cancel()
        for _ in range(100):  # loop turns, not time: a lost wake-up never ends
            if second.done():
                break
            await asyncio.sleep(0)
        got = second.result() if second.done() else None
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        return first.cancelled(), got or 0

    assert asyncio.run(main()) == (True, 7)
