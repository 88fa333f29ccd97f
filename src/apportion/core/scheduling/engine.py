"""The placement engine: the one place that decides which node a request
lands on, for both kinds of request, with the filter plugins of ``filters``.

* **A plain grant** (``POST /api/v1/allocations`` without a node →
  ``LedgerService.grant`` → ``Ledger.grant``): one resource vector, no job.
  ``choose_node`` is the engine's one-task fast path: it walks the ledger's
  index of free amounts of the requested resource that the fewest nodes can
  give, from the tightest fit up, asks each node it visits the plugins of
  ``filters.REQUEST_FILTERS`` (``NodeReady``, ``ResourcesFit``), and of the
  first ``BEST_FIT_CANDIDATES`` nodes they admit takes the one with the least
  left over. A grant on a named node asks that node the same plugins
  (``admits``). ``refuse`` and ``refuse_named`` say why not, in the words and
  fields the API has always answered with.
* **A job's tasks** (the scheduling cycle, the simulator, backfill,
  preemption and explain's probes): ``Placer`` (the pipeline in
  ``framework``: ``filters.CLASS_FILTERS`` once per node class, the
  aggregate check, a walk of the bucket index running
  ``filters.NODE_FILTERS`` on the nodes it offers alone, score plugins,
  grant).

Why a plain grant does not go through ``Placer`` as a one-task job: the
Placer decides on a ``ClusterState`` (node classes, buckets of identical
nodes, a blocked index over buckets), built for scoring many jobs against a
snapshot. Kept in step with the ledger for every grant, it moved the node
between buckets on each grant and release, and each request built a
``Job``: a grant cost 1.5 to 2 times as much (``bench/bench_ledger.py``).
The ledger's index moves an entry only when the next choice reads it, so the
common lease pattern (grant, release, grant) costs nothing there. The two
walks therefore share their filters and their refusals' words, and differ in
the index they walk (as Nomad's service and system stacks share their
feasibility checkers and differ in the iterator that feeds them); one index
for both needs ``ClusterState`` to move a node between buckets as lazily as
the ledger moves its entries.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from itertools import chain
from typing import NoReturn, Protocol

from sortedcontainers import SortedList

from apportion.core.errors import InsufficientResources, UnknownResource
from apportion.core.model import Node
from apportion.core.reasons import Reason, not_schedulable, refusal, short_on_node
from apportion.core.resources import Vector
from apportion.core.scheduling.filters import REQUEST_FILTERS, NodeReady
from apportion.core.scheduling.framework import Placer

__all__ = ["BEST_FIT_CANDIDATES", "Placer", "Slot", "admits", "choose_node", "refuse",
           "refuse_named", "shortages"]

BEST_FIT_CANDIDATES = 4
"""How many admitted nodes best fit compares before it picks; walking the
index in ascending free order finds the tightest ones first, so a few suffice."""


class Slot(Protocol):
    """What the engine reads of a ledger node: its description and free amounts."""

    @property
    def node(self) -> Node: ...

    @property
    def free(self) -> dict[str, int]: ...


_ADMITS = tuple(plugin.admits for plugin in REQUEST_FILTERS)
"""The plugins' tests, bound once: the walk calls them on every node it visits."""

_READY = NodeReady()


def admits(request: Vector, slot: Slot) -> bool:
    """Whether every request filter lets ``slot``'s node take ``request`` now."""
    node = slot.node
    free = slot.free
    for ok in _ADMITS:  # noqa: SIM110 (a plain loop: all() over a generator is slower)
        if not ok(request, node, free):
            return False
    return True


def choose_node(request: Vector, index: Mapping[str, SortedList], slots: Mapping[str, Slot]) -> str:
    """The node a plain grant of ``request`` lands on.

    ``index`` maps each resource to a ``SortedList`` of ``(free amount, node
    name)``, up to date; ``slots`` maps node names to their slots."""
    # Walk the resource with the fewest nodes able to give it: the
    # shortest list to scan, and ascending order means tightest fit first
    # (the first such resource in the request's order where several tie).
    # Plain loops, not min() over generators and sum() per node: this runs
    # on every grant, and those layers were half of its instructions.
    # The lists' own sublists, not ``bisect_left`` and ``islice``: those turn
    # a place into a position and back through the positional index, in
    # Python (~7,000 instructions a grant); the walk needs neither.
    walked: list[list[tuple[int, str]]] | None = None
    pos = at = fewest = 0
    for r, q in request.items():
        listed = index.get(r)
        if not listed:
            _unknown(request, index)
        key = (q, "")
        lists = listed._lists
        p = bisect_left(listed._maxes, key)
        i = bisect_left(lists[p], key) if p < len(lists) else 0
        able = len(listed) - sum(map(len, lists[:p])) - i  # entries at or after key
        if walked is None or able < fewest:
            walked, pos, at, fewest = lists, p, i, able
    assert walked is not None  # a request is never empty here (the ledger refuses that)
    best_name: str | None = None
    best_waste = 0.0
    seen = 0
    for _, name in _from(walked, pos, at):
        slot = slots[name]
        node = slot.node
        free = slot.free
        for ok in _ADMITS:
            if not ok(request, node, free):
                break
        else:  # every filter admits the node: a candidate
            # ``_leftover``, inline: the same sum in the same order.
            cap = node.resources
            waste: float = 0
            for r, q in request.items():
                waste += (free[r] - q) / cap[r]
            if best_name is None or waste < best_waste:
                best_waste, best_name = waste, name
            seen += 1
            if seen >= BEST_FIT_CANDIDATES:
                break
    if best_name is None:
        refuse(request, slots)
    return best_name


def _from(lists: list[list[tuple[int, str]]], pos: int, at: int
          ) -> Iterator[tuple[int, str]]:
    """A SortedList's entries from sublist ``pos``, item ``at`` on, lazily
    (what ``islice`` from that entry's position yields)."""
    if pos >= len(lists):
        return iter(())
    first = lists[pos]
    return chain(map(first.__getitem__, range(at, len(first))), *lists[pos + 1:])


def _unknown(request: Vector, index: Mapping[str, SortedList]) -> NoReturn:
    unknown = sorted(r for r in request if not index.get(r))
    raise UnknownResource(
        f"resources.{unknown[0]}: no node has {', '.join(unknown)}",
        field=f"resources.{unknown[0]}",
    )


def shortages(name: str, slot: Slot, request: Vector) -> list[Reason]:
    """Every resource ``name`` cannot give right now (empty when it fits)."""
    free = slot.free
    return [
        short_on_node(name, r, free.get(r, 0), q, offered=r in free)
        for r, q in request.items() if free.get(r, 0) < q
    ]


def refuse(request: Vector, slots: Mapping[str, Slot]) -> NoReturn:
    """No node admits ``request``: every node's reason, by name (not ready or
    unhealthy; otherwise each short resource)."""
    short: list[Reason] = []
    unready: list[Reason] = []
    for name, slot in sorted(slots.items()):
        if not _READY.admits(request, slot.node, slot.free):
            unready.append(_unschedulable(name, slot.node))
            continue
        short.extend(shortages(name, slot, request))
    raise InsufficientResources(refusal(short + unready), nodes_considered=len(slots))


def refuse_named(name: str, slot: Slot, request: Vector) -> NoReturn:
    """Say why node ``name`` cannot take ``request``: a resource it does not
    offer, not schedulable, or every short resource."""
    node = slot.node
    unknown = sorted(r for r in request if r not in node.resources)
    if unknown:
        raise UnknownResource(
            f"resources.{unknown[0]}: node {name} does not offer {', '.join(unknown)} "
            f"(it offers {', '.join(sorted(node.resources)) or 'nothing'})",
            field=f"resources.{unknown[0]}",
            node=name,
        )
    if not _READY.admits(request, node, slot.free):
        raise InsufficientResources(refusal([_unschedulable(name, node)]), nodes_considered=1)
    raise InsufficientResources(refusal(shortages(name, slot, request)), nodes_considered=1)


def _unschedulable(name: str, node: Node) -> Reason:
    if node.state.value != "ready":
        return not_schedulable(name, f"is {node.state.value}")
    return not_schedulable(name, f"is {node.health.value}", unhealthy=True)
