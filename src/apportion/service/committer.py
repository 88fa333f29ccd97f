"""Group commit: many concurrent writes share one transaction and one fsync.

Requests queue their write and await a future. One drain task on the event
loop takes everything queued (up to ``batch_max``), hands the batchable
payloads to one ``write_batch`` call inside one transaction, commits, and
only then resolves the futures, so an answer is never sent for a write that
is not durable. Writes that may hit a constraint (node changes) run
``alone``: a transaction of their own, in the same queue, so SQLite sees one
writer.

Units and lone writes run their statements on the loop's own thread: they
take microseconds on SQLite, and a worker thread would pay a GIL hand-off
for every statement. The COMMIT waits for fsync: on a disk that answers
slowly it runs in a worker thread, so the loop keeps serving requests
meanwhile and their writes form the next batch; on a disk whose commits
take under ``INLINE_COMMIT_S`` the hand-off to a thread costs more than the
wait (0.5 ms against 0.1 ms measured here, on each of the four commits of a
device switch), so a transaction of one write runs its COMMIT on the loop.
A batch of several grants and releases runs its whole transaction, its few
multi-row statements and the COMMIT, in a worker thread: SQLite executes
them without the GIL, so the loop reads and answers other requests on the
other core meanwhile. Under a stream of grants the loop is what limits the
rate, and the batch's statements were a seventh of its work (the figures
are in ``bench/README.md``). The commits' recent durations are measured
either way.
On PostgreSQL each statement waits for a network round trip, so the whole
transaction runs in a worker thread (and the batch writer sends its
statements in one pipeline: see ``store/batches.py``).

A batch writer may find the store disagreeing with the batch (another
server granted first): it raises ``BatchConflict``, the whole transaction is
rolled back, and the batch is written again in a fresh transaction by
``write_each``, one payload at a time, so each gets its own answer. The
common case pays for no savepoint.

A *unit* (``submit_unit``) is a write that must commit whole or not at all
but need not wait for a transaction of its own: a task's start with its
grants, a task's end with its release. Units queued together share one
transaction. They first run one after another without savepoints: the store
refuses a unit rarely, and two SAVEPOINT statements per unit were a sixth of
the statements a job's life costs the server. When one is refused (a
``Refused`` it raises, or a constraint), the transaction rolls back whole and
the units run again, each inside a SAVEPOINT, so the refused one is rolled
back alone and the others still commit with one fsync; a unit alone in its
transaction needs none.
A unit must read what it decides on inside its own transaction and touch no
memory: it may run again after a retry. A
*heavy* unit (a thousand tasks' ends, say) runs its transaction in a worker
thread too: the event loop goes on answering while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.exceptions import ApportionError, Refused, StoreUnavailable

log = structlog.get_logger(__name__)

INLINE_COMMIT_S = 0.001
"""A SQLite COMMIT runs on the event loop while commits take less than this."""

Write = Callable[[sa.Connection], Any]
"""A write that runs alone in its own transaction and returns a result."""

BatchWriter = Callable[[sa.Connection, list[Any]], list[Any]]
"""Writes a list of payloads in the caller's transaction; one result each
(an ``ApportionError`` instance is a per-payload failure)."""

UnitsScope = Callable[[sa.Connection, Callable[[], list[Any]]], list[Any]]
"""Runs units that share a transaction without savepoints (the callable
given) and may write, after them, what they left for the end (a unit of
work's events: one statement for all of them)."""


def _no_scope(conn: sa.Connection, run: Callable[[], list[Any]]) -> list[Any]:
    return run()


class BatchConflict(Exception):
    """Raised by a batch writer when the store disagrees with the batch: roll
    back everything and write the payloads one at a time."""


class _LoneUnitRefused(Exception):
    """A unit alone in its transaction was refused: the transaction rolls
    back whole, and the unit is answered with ``error``."""

    def __init__(self, error: ApportionError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    alone: bool
    unit: bool = False
    heavy: bool = False


class GroupCommitter:
    """Batches writes from the event loop into shared transactions."""

    def __init__(self, engine: sa.Engine, write_batch: BatchWriter, *,
                 write_each: BatchWriter | None = None, batch_max: int = 256,
                 retries: int = 3, units_scope: UnitsScope = _no_scope) -> None:
        self._engine = engine
        self._units_scope = units_scope
        self._write_batch = write_batch
        self._write_each = write_each
        self._batch_max = batch_max
        self._retries = retries
        self._pending: list[_Item] = []
        self._draining: asyncio.Task[None] | None = None
        self._networked = engine.dialect.name != "sqlite"
        self.commit_s = 0.0
        """Recent SQLite COMMIT duration (moving average, seconds)."""
        self.batches = 0
        self.writes = 0

    def submit(self, payload: Any) -> asyncio.Future[Any]:
        """Queue a payload for the next batch."""
        return self._put(payload, alone=False)

    def submit_alone(self, write: Write) -> asyncio.Future[Any]:
        """Queue a write that gets a transaction of its own."""
        return self._put(write, alone=True)

    def submit_unit(self, write: Write, *, heavy: bool = False) -> asyncio.Future[Any]:
        """Queue a write that commits whole or not at all, beside others."""
        return self._put(write, alone=False, unit=True, heavy=heavy)

    def close(self) -> None:
        """At shutdown, writes that never reached the store are refused, not lost
        silently: their callers hear 503 and nothing was written."""
        pending, self._pending = self._pending, []
        refusal = StoreUnavailable("the server is shutting down; nothing was written")
        _resolve_all([(i.future, refusal) for i in pending])

    def _put(self, payload: Any, *, alone: bool, unit: bool = False,
             heavy: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Item(payload, future, alone, unit, heavy))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self._pending:
                items = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                units = [i for i in items if i.unit]
                if units:
                    writes = [i.payload for i in units]
                    heavy = any(i.heavy for i in units)
                    _settle(units, await self._attempt(
                        partial(_call_units_at_once, writes, self._units_scope), len(units),
                        partial(_call_units, writes), in_thread=heavy))
                batch = [i for i in items if not i.alone and not i.unit]
                if batch:
                    payloads = [i.payload for i in batch]
                    run = partial(_call_batch, self._write_batch, payloads)
                    each = (partial(_call_batch, self._write_each, payloads)
                            if self._write_each is not None else None)
                    _settle(batch, await self._attempt(run, len(batch), each,
                                                       in_thread=len(batch) > 1))
                for item in items:
                    if item.alone:
                        _settle([item], await self._attempt(partial(_call_alone, item.payload), 1))
        finally:
            self._draining = None

    async def _attempt(self, run: Callable[[sa.Connection], list[Any]], n: int,
                       each: Callable[[sa.Connection], list[Any]] | None = None, *,
                       in_thread: bool = False) -> list[Any]:
        for attempt in range(self._retries):
            try:
                try:
                    results = await self._run(run, in_thread=in_thread, lone=n == 1)
                except BatchConflict:
                    if each is None:
                        raise
                    # Rolled back whole; now one payload at a time.
                    results = await self._run(each, in_thread=in_thread)
            except sa.exc.OperationalError as exc:
                # Lock timeouts and PostgreSQL deadlock/serialization aborts
                # are worth another try; the whole transaction rolled back.
                log.warning("batch_retry", attempt=attempt, error=str(exc).splitlines()[0])
                if attempt + 1 < self._retries:
                    # SQLite answers "database is locked" at once, without its
                    # busy timeout, when a transaction that has read wants to
                    # write while another connection (leadership, history: own
                    # threads) commits; retried at once, all three tries fell
                    # in that one commit and the write was refused with a 503.
                    await asyncio.sleep(0.02 * 5 ** attempt)
                continue
            except ApportionError as exc:
                return [exc] * n
            except _LoneUnitRefused as refused:
                return [refused.error]
            except Exception as exc:
                log.error("batch_failed", error=repr(exc))
                return [StoreUnavailable(f"the store refused the write: {exc}")] * n
            self.batches += 1
            self.writes += n
            return results
        return [StoreUnavailable("the store stayed busy; nothing was written")] * n

    async def _run(self, run: Callable[[sa.Connection], list[Any]], *,
                   in_thread: bool = False, lone: bool = False) -> list[Any]:
        if self._networked or in_thread:
            # PostgreSQL: statements wait on round trips, so the whole
            # transaction goes to a worker thread (psycopg releases the GIL
            # while it waits); on SQLite a batch or a heavy unit does.
            return await asyncio.to_thread(self._transaction, run)
        return await self._local_transaction(run, lone)

    def _transaction(self, run: Callable[[sa.Connection], list[Any]]) -> list[Any]:
        if self._networked:
            with self._engine.begin() as conn:
                return run(conn)
        # SQLite in a worker thread: its commit is timed like the loop's, so
        # a lone write decides on every recent commit, batches included.
        with self._engine.connect() as conn:
            results, transaction = _begun(conn, run)
            self._note_commit(_timed_commit(transaction))
            return results

    async def _local_transaction(self, run: Callable[[sa.Connection], list[Any]],
                                 lone: bool) -> list[Any]:
        """SQLite: statements on the loop (microseconds each), the fsync-bound
        COMMIT on the loop for a ``lone`` write while commits are fast, else
        in a worker thread."""
        with self._engine.connect() as conn:
            results, transaction = _begun(conn, run)
            if lone and self.commit_s < INLINE_COMMIT_S:
                took = _timed_commit(transaction)
            else:
                took = await asyncio.to_thread(_timed_commit, transaction)
            self._note_commit(took)
            return results

    def _note_commit(self, took: float) -> None:
        # One slow commit moves the next ones to a thread; a run of fast
        # ones brings them back.
        self.commit_s = 0.7 * self.commit_s + 0.3 * took


def _begun(conn: sa.Connection, run: Callable[[sa.Connection], list[Any]]
           ) -> tuple[list[Any], sa.RootTransaction]:
    """``run`` in a transaction begun on ``conn`` (rolled back if it raises),
    and that transaction, left for the caller to commit."""
    transaction = conn.begin()
    try:
        return run(conn), transaction
    except BaseException:
        transaction.rollback()
        raise


def _timed_commit(transaction: sa.RootTransaction) -> float:
    started = time.perf_counter()
    transaction.commit()
    return time.perf_counter() - started


def _call_batch(write_batch: BatchWriter, payloads: list[Any], conn: sa.Connection) -> list[Any]:
    return write_batch(conn, payloads)


def _call_alone(write: Write, conn: sa.Connection) -> list[Any]:
    return [write(conn)]


def _call_units_at_once(writes: list[Write], scope: UnitsScope,
                        conn: sa.Connection) -> list[Any]:
    """Every unit in the shared transaction without savepoints (in
    ``scope``); the first one refused sends them all to ``_call_units``
    (``BatchConflict``)."""
    if len(writes) == 1:
        return _call_units(writes, conn)
    try:
        return scope(conn, lambda: [write(conn) for write in writes])
    except (ApportionError, sa.exc.IntegrityError) as exc:
        raise BatchConflict(str(exc)) from exc


def _call_units(writes: list[Write], conn: sa.Connection) -> list[Any]:
    """Each unit in a savepoint of the shared transaction; a refused one is
    rolled back alone and answered with its error."""
    if len(writes) == 1:
        # Alone, the transaction is the unit: a savepoint would add two
        # statements to every change that commits by itself (most of them).
        try:
            return [writes[0](conn)]
        except ApportionError as exc:
            raise _LoneUnitRefused(exc) from exc
        except sa.exc.IntegrityError as exc:
            raise _LoneUnitRefused(Refused(f"the store refused the change: {exc.orig}")) from exc
    results: list[Any] = []
    for write in writes:
        savepoint = conn.begin_nested()
        try:
            results.append(write(conn))
        except (ApportionError, sa.exc.IntegrityError) as exc:
            savepoint.rollback()
            results.append(exc if isinstance(exc, ApportionError)
                           else Refused(f"the store refused the change: {exc.orig}"))
            continue
        savepoint.commit()
    return results


def _settle(batch: list[_Item], results: list[Any]) -> None:
    _resolve_all([(item.future, result) for item, result in zip(batch, results, strict=True)])


def _resolve_all(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in pairs:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
