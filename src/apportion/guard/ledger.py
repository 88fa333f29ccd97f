"""The local ledger: one host's (or one task's) capacity and what is held.

Why not :class:`apportion.core.ledger.Ledger`: that ledger builds an
``Allocation`` value, picks devices and keeps free-capacity indexes on every
grant, which measured about 15 µs per grant + release on the development
machine; the guard's goal is 5 µs. Here a hold is a few in-place updates of
one ``dict`` under one lock. Quantities, names, parsing and printing are the
cluster's (``apportion.core.resources``), so a profile means the same here
and in a job.

Invariant (checked by the tests): for every resource, ``0 <= free <= capacity``
and ``capacity - free`` is the sum of what live reservations and cache
entries hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from apportion.core.resources import format_vector
from apportion.guard.capacity import LocalCapacity, discover_local_capacity, gpu_memory_name
from apportion.guard.errors import InsufficientHostResources, ReservationError, Short
from apportion.guard.nvml import AUTO, NvmlChoice
from apportion.guard.profiles import Profiles, Requirement

P = ParamSpec("P")
R = TypeVar("R")

Reclaimer = Callable[[Mapping[str, int]], int]
"""Frees up to the given shortfall (resource -> amount) and returns how much
it freed in total; the model cache is one."""

GPU_MEMORY = "gpu_memory"


class LocalLedger:
    """Capacity and holds for this process; thread-safe, usable from asyncio.

    ``reserve`` is the way in. Holding never blocks the event loop: the
    lock guards a handful of dictionary operations only.
    """

    def __init__(
        self,
        capacity: Mapping[str, int] | LocalCapacity,
        *,
        profiles: Profiles | None = None,
    ) -> None:
        self.source: LocalCapacity | None = None
        if isinstance(capacity, LocalCapacity):
            self.source = capacity
            capacity = capacity.resources
        self._capacity = {k: int(v) for k, v in capacity.items()}
        self._free = dict(self._capacity)
        self._gpu_keys = sorted(
            (k for k in self._capacity if k.startswith("gpu.") and k.endswith(".memory")),
            key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else 0,
        )
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []
        self._reclaimers: list[Reclaimer] = []
        self._profiles = profiles if profiles is not None else Profiles()
        self._by_name = self._profiles.by_name
        self.holds = 0
        self.refusals = 0
        self.grants = 0

    @classmethod
    def from_local_capacity(
        cls,
        *,
        margin: float = 0.10,
        profiles: Profiles | None = None,
        environ: Mapping[str, str] | None = None,
        nvml: NvmlChoice = AUTO,
    ) -> LocalLedger:
        """A ledger over the task's allocation, or the machine, less ``margin``."""
        capacity = discover_local_capacity(margin=margin, environ=environ, nvml=nvml)
        return cls(capacity, profiles=profiles)

    # The name this constructor had before it said what it discovers: kept
    # for services that build their ledger with it.
    discover = from_local_capacity

    @property
    def profiles(self) -> Profiles:
        return self._profiles

    @profiles.setter
    def profiles(self, profiles: Profiles) -> None:
        self._profiles = profiles
        self._by_name = profiles.by_name

    # -- reading --------------------------------------------------------

    @property
    def capacity(self) -> dict[str, int]:
        return dict(self._capacity)

    def free(self) -> dict[str, int]:
        with self._lock:
            return dict(self._free)

    def used(self) -> dict[str, int]:
        with self._lock:
            return {r: cap - self._free[r] for r, cap in self._capacity.items()}

    def shortages(self, what: object, *, against_capacity: bool = False) -> list[Short]:
        """Every resource that cannot be given now (or ever, with
        ``against_capacity``); empty when the requirement fits."""
        vector = self._vector(self.profiles.resolve(what), None)
        with self._lock:
            pool = self._capacity if against_capacity else self._free
            return _shorts(vector, pool, self._capacity)

    def validate(self, what: object, *, against_capacity: bool = False) -> Requirement:
        """Raise :class:`InsufficientHostResources` naming each short resource
        when ``what`` (profile name, mapping or requirement) does not fit."""
        req = self.profiles.resolve(what)
        shorts = self.shortages(req, against_capacity=against_capacity)
        if shorts:
            raise InsufficientHostResources(shorts, what=req.describe())
        return req

    def fits(self, what: object) -> bool:
        return not self.shortages(what)

    def status(self) -> dict[str, Any]:
        with self._lock:
            free = dict(self._free)
            holds, grants, refusals = self.holds, self.grants, self.refusals
        used = {r: cap - free[r] for r, cap in self._capacity.items()}
        return {
            "capacity": format_vector(self._capacity),
            "free": format_vector(free),
            "used": format_vector(used),
            "used_percent": {
                r: round(100.0 * u / self._capacity[r], 2)
                for r, u in used.items()
                if self._capacity[r]
            },
            "holds": holds,
            "grants": grants,
            "refusals": refusals,
            "source": None if self.source is None else self.source.to_dict(),
        }

    # -- reserving ------------------------------------------------------

    def reserve(
        self,
        what: object,
        *,
        timeout: float = 0.0,
        device: int | None = None,
        reclaim: bool = False,
    ) -> Reservation:
        """A reservation of ``what``: a context manager (sync and async) and a
        decorator. Nothing is held until it is entered (or the decorated
        function called); it is released on every exit path.

        ``timeout`` is how long to wait for a release before refusing (0 =
        refuse at once); ``device`` pins ``gpu_memory`` to GPU ``cuda:N``;
        ``reclaim`` lets registered reclaimers (the model cache) free room.
        """
        if type(what) is str:
            # The hot path: one dict look-up; unknown names go the slow way
            # for a helpful error.
            req = self._by_name.get(what) or self.profiles.get(what)
        elif type(what) is Requirement:
            req = what
        else:
            req = self.profiles.resolve(what)
        return Reservation(self, req, timeout, device, reclaim)

    def notify_on_release(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` once, at the next release or shrink of any hold."""
        with self._lock:
            self._waiters.append(wake)

    def add_reclaimer(self, reclaimer: Reclaimer) -> None:
        self._reclaimers.append(reclaimer)

    def take(self, vector: Mapping[str, int]) -> bool:
        """Hold ``vector`` now if it fits; the low-level form of ``reserve``."""
        with self._lock:
            free = self._free
            for r, q in vector.items():
                if free.get(r, -1) < q:
                    return False
            for r, q in vector.items():
                free[r] -= q
            self.holds += 1
            self.grants += 1
        return True

    def give(self, vector: Mapping[str, int]) -> None:
        """Return a held ``vector`` and wake whoever waits for room."""
        with self._lock:
            free = self._free
            for r, q in vector.items():
                free[r] += q
            self.holds -= 1
            if not self._waiters:
                return
            wakers, self._waiters = self._waiters, []
        for wake in wakers:
            wake()

    def adjust(self, held: Mapping[str, int], new: Mapping[str, int]) -> bool:
        """Change one hold from ``held`` to ``new`` in one step, or leave it
        unchanged and return False when the growth does not fit. An empty
        ``held`` starts a hold; an empty ``new`` ends one."""
        delta = {r: new.get(r, 0) - held.get(r, 0) for r in {*held, *new}}
        with self._lock:
            free = self._free
            for r, d in delta.items():
                if d > 0 and free.get(r, -1) < d:
                    return False
            for r, d in delta.items():
                if d:
                    free[r] -= d
            self.holds += bool(new) - bool(held)
            self.grants += bool(new) and not held
            wakers: list[Callable[[], None]] = []
            if self._waiters and any(d < 0 for d in delta.values()):
                wakers, self._waiters = self._waiters, []
        for wake in wakers:
            wake()
        return True

    def take_waiting(
        self, vector: Mapping[str, int], timeout: float, reclaim: bool, what: str
    ) -> None:
        """Hold ``vector``, reclaiming and waiting up to ``timeout`` seconds;
        raise :class:`InsufficientHostResources` when it cannot be had."""
        if self.take(vector) or (reclaim and self._reclaim(vector)):
            return
        deadline = time.monotonic() + timeout
        event = threading.Event()
        while (remaining := deadline - time.monotonic()) > 0:
            if self._park(vector, event.set):
                return
            event.wait(remaining)
            event.clear()
        if not self.take(vector):  # one last try: room may have come at the deadline
            self._refuse(vector, what)

    async def take_waiting_async(
        self, vector: Mapping[str, int], timeout: float, reclaim: bool, what: str
    ) -> None:
        if self.take(vector) or (reclaim and self._reclaim(vector)):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            fut: asyncio.Future[None] = loop.create_future()
            if self._park(vector, functools.partial(wake_future, loop, fut)):
                return
            try:
                # Not wait_for: on 3.11 it can swallow a cancel that lands as
                # the wake-up does, and the cancelled caller would take.
                async with asyncio.timeout(remaining):
                    await asyncio.shield(fut)
            except TimeoutError:
                break
        if not self.take(vector):
            self._refuse(vector, what)

    def resolve_device(self, req: Requirement, device: int | None) -> dict[str, int]:
        return self._vector(req, device)

    # -- internals -------------------------------------------------------

    def _park(self, vector: Mapping[str, int], wake: Callable[[], None]) -> bool:
        """Take ``vector`` if it fits now, else register ``wake`` for the next
        release; one lock, so no release can slip between check and wait."""
        with self._lock:
            free = self._free
            if all(free.get(r, -1) >= q for r, q in vector.items()):
                for r, q in vector.items():
                    free[r] -= q
                self.holds += 1
                self.grants += 1
                return True
            self._waiters.append(wake)
            return False

    def _reclaim(self, vector: Mapping[str, int]) -> bool:
        for reclaimer in self._reclaimers:
            with self._lock:
                need = {r: q - self._free.get(r, 0) for r, q in vector.items()}
            need = {r: q for r, q in need.items() if q > 0}
            if not need:
                break
            reclaimer(need)
            if self.take(vector):
                return True
        return self.take(vector)

    def _refuse(self, vector: Mapping[str, int], what: str) -> None:
        with self._lock:
            self.refusals += 1
            shorts = _shorts(vector, self._free, self._capacity)
        if not shorts:  # room came back after the last try; report the ask
            shorts = [Short(r, 0, q) for r, q in vector.items()]
        raise InsufficientHostResources(shorts, what=what)

    def _vector(self, req: Requirement, device: int | None) -> dict[str, int]:
        """The concrete amounts to hold: ``gpu_memory`` is also charged to one
        GPU (``device``, or the one with the least room that still fits)."""
        vector = dict(req.vector)
        need = vector.get(GPU_MEMORY)
        if not need or not self._gpu_keys:
            return vector
        if device is not None:
            vector[gpu_memory_name(device)] = need
            return vector
        with self._lock:
            fitting = [(self._free[k], k) for k in self._gpu_keys if self._free[k] >= need]
        key = min(fitting)[1] if fitting else self._gpu_keys[0]
        vector[key] = need
        return vector


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def wake_future(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    # A waiter that timed out stays registered until the next release; its
    # loop may be closed by then, and a release must never fail for that.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_done, fut)


def _shorts(
    vector: Mapping[str, int], pool: Mapping[str, int], capacity: Mapping[str, int]
) -> list[Short]:
    out = []
    for r, q in vector.items():
        have = pool.get(r, 0) if r in capacity else 0
        if have < q:
            out.append(Short(r, have, q))
    return out


class Reservation:
    """Holds a requirement while a block or call runs; see :meth:`LocalLedger.reserve`.

    As a context manager it is single-use at a time (entering it again while
    held is an error). As a decorator every call holds its own amounts, so
    concurrent calls are each counted.
    """

    __slots__ = ("_device", "_held", "_ledger", "_reclaim", "_timeout", "requirement")

    def __init__(
        self,
        ledger: LocalLedger,
        requirement: Requirement,
        timeout: float = 0.0,
        device: int | None = None,
        reclaim: bool = False,
    ) -> None:
        self._ledger = ledger
        self.requirement = requirement
        self._timeout = timeout
        self._device = device
        self._reclaim = reclaim
        self._held: Mapping[str, int] | None = None

    @property
    def held(self) -> Mapping[str, int] | None:
        """The amounts held now, or ``None`` when not entered."""
        return self._held

    # -- one hold ---------------------------------------------------------

    def acquire(self) -> Reservation:
        if self._held is not None:
            raise ReservationError("this reservation is already held; create another one")
        vector = self._concrete()
        ledger = self._ledger
        if not ledger.take(vector):
            ledger.take_waiting(
                vector, self._timeout, self._reclaim, self.requirement.describe()
            )
        self._held = vector
        return self

    async def acquire_async(self) -> Reservation:
        if self._held is not None:
            raise ReservationError("this reservation is already held; create another one")
        vector = self._concrete()
        ledger = self._ledger
        if not ledger.take(vector):
            await ledger.take_waiting_async(
                vector, self._timeout, self._reclaim, self.requirement.describe()
            )
        self._held = vector
        return self

    def release(self) -> None:
        held = self._held
        if held is None:
            raise ReservationError("this reservation holds nothing to release")
        self._held = None
        self._ledger.give(held)

    def __enter__(self) -> Reservation:
        # acquire() inlined: this pair is the 5 µs budget.
        if self._held is None and self._device is None:
            vector = self.requirement.vector
            if GPU_MEMORY not in vector and self._ledger.take(vector):
                self._held = vector
                return self
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._held
        if held is None:
            raise ReservationError("this reservation holds nothing to release")
        self._held = None
        self._ledger.give(held)

    async def __aenter__(self) -> Reservation:
        return await self.acquire_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- as a decorator ----------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            return cast(Callable[P, R], self._wrap_async(func))
        return self._wrap_sync(func)

    def _wrap_sync(self, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def held(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._fresh():
                return func(*args, **kwargs)

        return held

    def _wrap_async(
        self, func: Callable[P, Awaitable[Any]]
    ) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(func)
        async def held(*args: P.args, **kwargs: P.kwargs) -> Any:
            async with self._fresh():
                return await func(*args, **kwargs)

        return held

    def _fresh(self) -> Reservation:
        return Reservation(
            self._ledger, self.requirement, self._timeout, self._device, self._reclaim
        )

    def _concrete(self) -> Mapping[str, int]:
        if self._device is None and GPU_MEMORY not in self.requirement.vector:
            return self.requirement.vector
        return self._ledger.resolve_device(self.requirement, self._device)
