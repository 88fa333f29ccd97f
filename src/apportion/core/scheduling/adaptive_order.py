"""The ``adaptive`` strategy's order: response ratio, or shortest predicted
first, with an aging bound (the design is in ``adaptive``'s docstring)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from apportion.core.scheduling.jobs import Job

if TYPE_CHECKING:
    from apportion.core.scheduling.policies import OrderContext

_fifo_key = attrgetter("fifo_key")


class AdaptiveOrder:
    """Jobs past the aging bound first, in submit order; then the rest by
    ``by``: ``"sjf"`` (shortest predicted run time) or ``"hrrn"`` (highest
    response ratio, ``(wait + estimate) / estimate``). Jobs with no estimate
    at all come after those with one, in submit order."""

    name = "adaptive"

    def __init__(self, by: str = "hrrn") -> None:
        if by not in ("sjf", "hrrn"):
            raise ValueError(f"by: {by!r} is not sjf or hrrn")
        self.by = by

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        return self.order_at(jobs, ctx.now, ctx.aging_bound, ctx.rank or ctx.estimate,
                             ctx.ranks)

    def order_at(self, jobs: Sequence[Job], now: float, bound: float,
                 rank: Callable[[Job], float | None],
                 ranks: Callable[[Sequence[Job]], list[float | None]] | None = None
                 ) -> list[Job]:
        """``order`` with the context's parts (``rank``: its ``rank`` or
        ``estimate``): a replay asks at every event, and building a context
        each time showed in its profile."""
        # A queue is ordered at every event, by ratios that move with the
        # clock, so this is the hot path of a learning replay. In submit
        # order, the jobs past the bound are a prefix; the rest are ranked
        # in one call and sorted by one float, stably, so that equal values
        # keep submit order as ``_key`` has them.
        fifo = sorted(jobs, key=_fifo_key)
        cut = 0
        while cut < len(fifo) and now - fifo[cut].submit_time >= bound:
            cut += 1
        rest = fifo[cut:] if cut else fifo
        ests = ranks(rest) if ranks is not None else [rank(j) for j in rest]
        hrrn = self.by == "hrrn"
        ranked: list[Job] = []
        unranked: list[Job] = []
        values: list[float] = []
        for j, est in zip(rest, ests, strict=True):
            if est is None:
                unranked.append(j)
                continue
            ranked.append(j)
            if hrrn:
                wait = now - j.submit_time
                e = est if est > 1.0 else 1.0
                values.append(-((wait if wait > 0.0 else 0.0) + e) / e)
            else:
                values.append(est)
        total = sum(values)
        if total != total:  # a NaN (an infinite estimate) would not sort alike
            return sorted(jobs, key=self._key(now, bound, rank))
        out = fifo[:cut]
        out.extend(map(ranked.__getitem__, sorted(range(len(values)), key=values.__getitem__)))
        out.extend(unranked)
        return out

    def _key(self, now: float, bound: float, rank: Callable[[Job], float | None]
             ) -> Callable[[Job], tuple[int, float, float, str]]:
        """The order as one sort key (what ``order`` does faster)."""
        hrrn = self.by == "hrrn"

        def key(j: Job) -> tuple[int, float, float, str]:
            wait = now - j.submit_time
            if wait >= bound:
                return (0, 0.0, j.submit_time, j.id)
            est = rank(j)
            if est is None:
                return (2, 0.0, j.submit_time, j.id)
            if hrrn:
                e = est if est > 1.0 else 1.0
                return (1, -((wait if wait > 0.0 else 0.0) + e) / e, j.submit_time, j.id)
            return (1, est, j.submit_time, j.id)

        return key
