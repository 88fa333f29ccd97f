from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.exceptions import ApportionError
from apportion.guard import (
    InsufficientHostResources,
    LocalLedger,
    Profiles,
    Reservation,
    ReservationError,
    UnknownProfile,
)
from support import cancel_later

MIB = 2**20
GIB = 2**30


def make_ledger(**capacity: int) -> LocalLedger:
    profiles = Profiles({
        "facebook/musicgen-medium": {"memory": "6Gi", "gpu_memory": "12Gi"},
        "small": {"memory": "1Gi"},
    })
    return LocalLedger(capacity or {"cpu": 2000, "memory": 8 * GIB}, profiles=profiles)


def test_validate_names_each_short_resource() -> None:
    ledger = make_ledger(memory=4 * GIB, gpu_memory=8 * GIB)
    with pytest.raises(InsufficientHostResources) as err:
        ledger.validate("facebook/musicgen-medium")
    exc = err.value
    assert isinstance(exc, ApportionError)
    assert exc.message == (
        "not enough resources for facebook/musicgen-medium: "
        "memory: 4Gi available, 6Gi required; gpu_memory: 8Gi available, 12Gi required"
    )
    assert [(s.resource, s.available, s.required) for s in exc.shortages] == [
        ("memory", 4 * GIB, 6 * GIB),
        ("gpu_memory", 8 * GIB, 12 * GIB),
    ]
    assert exc.to_dict()["shortages"][0] == {
        "resource": "memory",
        "available": "4Gi",
        "required": "6Gi",
        "available_base": 4 * GIB,
        "required_base": 6 * GIB,
    }


def test_the_message_shows_human_units_and_the_dict_keeps_exact_ones() -> None:
    free = 6170948 * 1024  # as /proc/meminfo counts it, in Ki
    with pytest.raises(InsufficientHostResources) as err:
        make_ledger(memory=free, gpu_memory=16 * GIB).validate("facebook/musicgen-medium")
    assert err.value.message == ("not enough resources for facebook/musicgen-medium: "
                                 "memory: 5.9Gi available, 6Gi required")
    assert err.value.to_dict()["shortages"][0]["available"] == "6170948Ki"


def test_validate_on_a_host_without_the_resource() -> None:
    with pytest.raises(InsufficientHostResources) as err:
        make_ledger(memory=8 * GIB).validate("facebook/musicgen-medium")
    assert err.value.message.endswith("gpu_memory: 0 available, 12Gi required")


def test_validate_passes_and_counts_current_holds() -> None:
    ledger = make_ledger(memory=2 * GIB)
    assert ledger.validate("small").name == "small"
    with ledger.reserve("small"), pytest.raises(InsufficientHostResources):
        ledger.validate({"memory": "1536Mi"})
    ledger.validate({"memory": "1536Mi"}, against_capacity=True)


def test_reserve_holds_inside_the_block_and_releases_after() -> None:
    ledger = make_ledger()
    with ledger.reserve("small") as res:
        assert ledger.free()["memory"] == 7 * GIB
        assert res.held == {"memory": GIB}
        assert ledger.holds == 1
    assert ledger.free()["memory"] == 8 * GIB
    assert ledger.holds == 0
    assert res.held is None


def test_reserve_releases_on_exception() -> None:
    ledger = make_ledger()
    with pytest.raises(RuntimeError), ledger.reserve({"memory": "3Gi"}):
        raise RuntimeError("boom")
    assert ledger.free() == {"cpu": 2000, "memory": 8 * GIB}


def test_refused_reservation_holds_nothing() -> None:
    ledger = make_ledger(memory=GIB)
    with pytest.raises(InsufficientHostResources) as err, ledger.reserve({"memory": "2Gi"}):
        pass  # pragma: no cover
    assert err.value.message == (
        "not enough resources for {memory=2Gi}: memory: 1Gi available, 2Gi required"
    )
    assert ledger.free() == {"memory": GIB}
    assert ledger.refusals == 1


def test_unknown_profile_name() -> None:
    with pytest.raises(UnknownProfile):
        make_ledger().reserve("nope")


def test_decorator_holds_per_call() -> None:
    ledger = make_ledger()
    seen: list[int] = []

    @ledger.reserve("small")
    def work(x: int) -> int:
        seen.append(ledger.free()["memory"])
        return x * 2

    assert work(21) == 42
    assert work(1) == 2
    assert seen == [7 * GIB, 7 * GIB]
    assert ledger.free()["memory"] == 8 * GIB


def test_decorator_releases_when_the_call_raises() -> None:
    ledger = make_ledger()

    @ledger.reserve("small")
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        fail()
    assert ledger.free()["memory"] == 8 * GIB


def test_async_context_and_decorator() -> None:
    ledger = make_ledger()

    @ledger.reserve("small")
    async def work() -> int:
        await asyncio.sleep(0)
        return ledger.free()["memory"]

    async def main() -> tuple[int, int, int]:
        async with ledger.reserve({"memory": "2Gi"}):
            inside = ledger.free()["memory"]
            nested = await work()
        return inside, nested, ledger.free()["memory"]

    assert asyncio.run(main()) == (6 * GIB, 5 * GIB, 8 * GIB)


def test_async_reservation_is_released_on_cancellation() -> None:
    ledger = make_ledger()

    async def main() -> int:
        started = asyncio.Event()

        async def held() -> None:
            async with ledger.reserve("small"):
                started.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(held())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ledger.free()["memory"]

    assert asyncio.run(main()) == 8 * GIB


def test_entering_twice_is_an_error() -> None:
    ledger = make_ledger()
    res = ledger.reserve("small")
    with res, pytest.raises(ReservationError):
        res.acquire()
    with pytest.raises(ReservationError):
        res.release()


def test_waiting_reservation_gets_room_from_a_release() -> None:
    ledger = make_ledger(memory=GIB)
    first = ledger.reserve("small").acquire()
    released = threading.Timer(0.05, first.release)
    released.start()
    with ledger.reserve("small", timeout=30.0) as second:
        assert second.held == {"memory": GIB}
    released.join()
    assert ledger.free() == {"memory": GIB}


def test_waiting_reservation_times_out() -> None:
    ledger = make_ledger(memory=GIB)
    with ledger.reserve("small"), pytest.raises(InsufficientHostResources):
        ledger.reserve("small", timeout=0.05).acquire()
    assert ledger.free() == {"memory": GIB}


def test_async_waiting_reservation_gets_room() -> None:
    ledger = make_ledger(memory=GIB)

    async def main() -> list[str]:
        order: list[str] = []

        async def holder() -> None:
            async with ledger.reserve("small"):
                order.append("first in")
                await asyncio.sleep(0.05)
            order.append("first out")

        async def waiter() -> None:
            await asyncio.sleep(0)
            async with ledger.reserve("small", timeout=30.0):
                order.append("second in")

        await asyncio.gather(holder(), waiter())
        return order

    assert asyncio.run(main()) == ["first in", "first out", "second in"]
    assert ledger.free() == {"memory": GIB}


def test_async_waiting_reservation_times_out() -> None:
    ledger = make_ledger(memory=GIB)

    async def main() -> None:
        async with ledger.reserve("small"):
            await ledger.reserve("small", timeout=0.05).acquire_async()

    with pytest.raises(InsufficientHostResources):
        asyncio.run(main())
    assert ledger.free() == {"memory": GIB}


def test_reclaim_asks_reclaimers_for_the_shortfall() -> None:
    ledger = make_ledger(memory=4 * GIB)
    cached = ledger.reserve({"memory": "3Gi"}).acquire()
    asked: list[Mapping[str, int]] = []

    def reclaimer(need: Mapping[str, int]) -> int:
        asked.append(dict(need))
        cached.release()
        return 3 * GIB

    ledger.add_reclaimer(reclaimer)
    with pytest.raises(InsufficientHostResources):
        ledger.reserve({"memory": "2Gi"}).acquire()
    assert asked == []
    with ledger.reserve({"memory": "2Gi"}, reclaim=True):
        assert asked == [{"memory": GIB}]


def test_gpu_memory_is_charged_to_the_tightest_gpu_that_fits() -> None:
    ledger = LocalLedger(
        {"gpu_memory": 120 * GIB, "gpu.0.memory": 80 * GIB, "gpu.1.memory": 40 * GIB}
    )
    with ledger.reserve({"gpu_memory": "30Gi"}) as res:
        assert res.held == {"gpu_memory": 30 * GIB, "gpu.1.memory": 30 * GIB}
        with ledger.reserve({"gpu_memory": "30Gi"}) as res2:
            assert res2.held == {"gpu_memory": 30 * GIB, "gpu.0.memory": 30 * GIB}
    with ledger.reserve({"gpu_memory": "50Gi"}, device=0) as pinned:
        assert pinned.held == {"gpu_memory": 50 * GIB, "gpu.0.memory": 50 * GIB}
    with pytest.raises(InsufficientHostResources) as err:
        ledger.reserve({"gpu_memory": "90Gi"}).acquire()
    assert err.value.message.endswith("gpu.0.memory: 80Gi available, 90Gi required")


def test_status_prints_canonical_quantities() -> None:
    ledger = make_ledger(memory=4 * GIB)
    with ledger.reserve("small"):
        status = ledger.status()
    assert status["capacity"] == {"memory": "4Gi"}
    assert status["used"] == {"memory": "1Gi"}
    assert status["used_percent"] == {"memory": 25.0}
    assert status["holds"] == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5)), max_size=40))
def test_free_plus_held_is_always_capacity(ops: list[tuple[bool, int]]) -> None:
    ledger = LocalLedger({"memory": 10 * MIB})
    held: list[Reservation] = []
    for release, mib in ops:
        if release and held:
            held.pop(0).release()
        else:
            with contextlib.suppress(InsufficientHostResources):
                held.append(ledger.reserve({"memory": mib * MIB}).acquire())
        total = sum(r.held["memory"] for r in held if r.held)
        assert ledger.free()["memory"] + total == 10 * MIB
        assert 0 <= ledger.free()["memory"] <= 10 * MIB
    for res in held:
        res.release()
    assert ledger.free() == {"memory": 10 * MIB}
    assert ledger.holds == 0


def test_threads_never_oversubscribe() -> None:
    ledger = LocalLedger({"memory": 3 * MIB})
    peak = [0]
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            try:
                with ledger.reserve({"memory": MIB}), lock:
                    used = 3 * MIB - ledger.free()["memory"]
                    peak[0] = max(peak[0], used)
            except InsufficientHostResources:
                pass

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 3 * MIB
    assert ledger.free() == {"memory": 3 * MIB}


def test_the_old_name_of_the_hosts_refusal_still_imports() -> None:
    from apportion.guard import InsufficientResources

    assert InsufficientResources is InsufficientHostResources
    assert InsufficientHostResources.code == "insufficient_resources"


def test_async_waiter_cancelled_as_room_comes_back_keeps_its_cancel() -> None:
    # On Python 3.11, asyncio.wait_for could swallow a cancel that landed as
    # the release woke the waiter: the "cancelled" waiter then took the room.
    # Cancel at each step of the wake-up (callbacks chained through the
    # loop's ready queue); a cancel that was accepted must end the waiter.
    vector = {"memory": 8 * GIB}

    async def one(steps: int) -> tuple[bool, int]:
        ledger = make_ledger()
        assert ledger.take(vector)
        waiter = asyncio.create_task(ledger.take_waiting_async(vector, 60.0, False, "all"))
        while not ledger._waiters:
            await asyncio.sleep(0)
        accepted: list[bool] = []

        cancel_later(waiter, steps, accepted)
        ledger.give(vector)
        try:
            await waiter
            took = True
        except asyncio.CancelledError:
            took = False
        if took:
            ledger.give(vector)
        return any(accepted) and took, ledger.holds

    async def main() -> list[tuple[bool, int]]:
        return [await one(steps) for steps in range(8)]

    assert asyncio.run(main()) == [(False, 0)] * 8
