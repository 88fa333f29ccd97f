"""Fair share's order on the counted pool (``poolsim.PoolCluster``).

``FairShare.order`` pops queues from a heap of their shares at every cycle,
after computing every queue's share from a copy of its use. On the pool the
queues are kept filed by share between cycles and only those whose use or
pending jobs changed are filed again, so a cycle pays for what it takes.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping
from typing import Any

from apportion.core.scheduling.jobs import Job, Queue

__all__ = ["FairQueues"]


class FairQueues:
    """The pending jobs of each queue in the queue's order, and the queues
    filed by their share of the pool's one resource."""

    def __init__(self, resource: str, amount: int, size: int,
                 queues: Mapping[str, Queue]) -> None:
        self.resource = resource
        self.amount = amount
        self.capacity = size * amount
        self.queues = queues
        self.by_queue: dict[str, list[tuple[Any, ...]]] = {}
        """Each queue with pending jobs, in the queue's order (a plain list:
        one user's queue is short, and a cycle walks several): entries
        (-priority, submit time, id, estimate, task count), the last two
        after the unique id, so outside the order (``PoolCluster._entries``)."""
        self._entry_of: dict[str, tuple[Any, ...]] = {}
        self._weight: dict[str, float] = {}
        """Each queue's weight as a share divides by it (``share``)."""
        self.ranked: list[tuple[float, str]] = []
        """(share of its use, name) of each queue with pending jobs, sorted:
        the order a cycle's heap of shares would pop them."""
        self.filed: dict[str, float] = {}
        """The share each queue is filed under in ``ranked``."""
        self.stale: set[str] = set()
        """Queues whose use or pending jobs changed since they were filed
        (``refile``)."""

    def add(self, job: Job, estimate: object) -> None:
        q = self.by_queue.get(job.queue)
        if q is None:
            q = self.by_queue[job.queue] = []
            self.stale.add(job.queue)
        entry = self._entry_of[job.id] = (-job.priority, job.submit_time, job.id, estimate,
                                          job.task_count)
        insort(q, entry)

    def remove(self, job: Job) -> None:
        q = self.by_queue[job.queue]
        del q[bisect_left(q, self._entry_of.pop(job.id))]
        if not q:
            del self.by_queue[job.queue]
            self.stale.add(job.queue)

    def order(self, usage: Mapping[str, Mapping[str, int]]) -> Iterator[tuple[Any, ...]]:
        """``FairShare.order`` of the pending jobs' entries given each
        queue's ``usage``."""
        self.refile(usage)
        return self._merge(usage)

    def _merge(self, usage: Mapping[str, Mapping[str, int]]) -> Iterator[tuple[Any, ...]]:
        """``FairShare.order``, lazily: its heap of queue shares, as a merge
        of the queues filed by share (``ranked``) with a heap of those the
        cycle has taken from (each under its share grown by what it gave),
        each queue already sorted, so that a cycle pays for what it took."""
        ranked = list(self.ranked)  # the pool's starts mark queues stale meanwhile
        n, p = len(ranked), 0
        pushed: list[tuple[float, str]] = []
        # Each queue is walked with an iterator and a count of the jobs it
        # has left.
        walks: dict[str, tuple[Iterator[tuple[Any, ...]], list[int]]] = {}
        # A queue's use of the pool's one resource as the cycle began (read
        # before its first job is given out, so before any of its jobs
        # starts): what its later shares grow from.
        # A job's total of the one resource is its task count of whole nodes.
        resource, share, amount = self.resource, self.share, self.amount
        used: dict[str, int] = {}
        while True:
            if pushed and (p == n or pushed[0] < ranked[p]):
                name = heapq.heappop(pushed)[1]
            elif p < n:
                name = ranked[p][1]
                p += 1
            else:
                return
            walk = walks.get(name)
            if walk is None:
                q = self.by_queue[name]
                walk = walks[name] = (iter(q), [len(q)])
            entries, left = walk
            u = used.get(name)
            if u is None:
                u = usage.get(name, {}).get(resource, 0)
            while True:
                if p == n and not pushed:  # the last queue with jobs left: shares choose no more
                    yield from entries
                    return
                entry = next(entries)
                left[0] -= 1
                yield entry
                u = used[name] = u + entry[4] * amount
                if not left[0]:
                    break
                key = (share(u, name), name)
                # The heap would give this queue back at once while its grown
                # share stays under every other queue's: no push and pop.
                if pushed and (p == n or pushed[0] < ranked[p]):
                    if not key < pushed[0]:
                        heapq.heappush(pushed, key)
                        break
                elif p < n and not key < ranked[p]:
                    heapq.heappush(pushed, key)
                    break

    def share(self, used: int, name: str) -> float:
        """``FairShare._share`` of a queue using ``used`` of the pool's one
        resource (every job's total names it alone), on ints: a fair-share
        order asks it for nearly every job it gives out, and the dictionary
        copies and walks of the general one showed
        (``tests/core/test_poolsim.py`` holds the two equal)."""
        weight = self._weight.get(name)
        if weight is None:
            queue = self.queues.get(name)
            weight = self._weight[name] = (queue.weight if queue is not None and queue.weight > 0
                                           else 1.0)
        capacity = self.capacity
        return (used / capacity if capacity else 0.0) / weight

    def refile(self, usage: Mapping[str, Mapping[str, int]]) -> None:
        """File again in ``ranked`` the queues changed since the last cycle:
        between two cycles a job or two start or end, and the shares of the
        other queues stand."""
        ranked, filed, by_queue = self.ranked, self.filed, self.by_queue
        resource = self.resource
        for name in self.stale:
            old = filed.pop(name, None)
            if old is not None:
                del ranked[bisect_left(ranked, (old, name))]
            if name in by_queue:
                share = filed[name] = self.share(usage.get(name, {}).get(resource, 0), name)
                insort(ranked, (share, name))
        self.stale.clear()
