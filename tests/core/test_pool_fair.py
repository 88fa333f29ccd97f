"""Fair share's order on the counted pool (``pool_fair.FairQueues``) against
``FairShare.order``, the policy the node model asks: the same jobs in the
same order, round after round of arrivals, starts and finishes (the queues
filed between rounds, refiled only where their use or jobs changed)."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from apportion.core.pool_fair import FairQueues
from apportion.core.scheduling import TaskSpec
from apportion.core.scheduling.jobs import Job, Queue
from apportion.core.scheduling.policies import FairShare, OrderContext

CPU = 1000
SIZE = 10
NAMES = ("a", "b", "c", "d")


class _Use:
    """``QueueUse`` from a dictionary of each queue's nodes in use."""

    def __init__(self, used: Mapping[str, Mapping[str, int]]) -> None:
        self.used = used

    def capacity_total(self) -> dict[str, int]:
        return {"cpu": SIZE * CPU}

    def usage(self, queue: str) -> Mapping[str, int]:
        return self.used.get(queue, {})


jobs = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 4),  # queue, nodes
                          st.sampled_from([0.0, 1.0, 2.0]), st.integers(0, 1)),  # submit, prio
                max_size=12)
rounds = st.lists(st.tuples(jobs,  # arrivals
                            st.lists(st.tuples(st.sampled_from(NAMES), st.integers(-3, 6)),
                                     max_size=4),  # use changes, in nodes
                            st.integers(0, 4)),  # jobs leaving from the head of the order
                  min_size=1, max_size=5)


@given(rounds, st.dictionaries(st.sampled_from(NAMES),
                               st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, 3.0]), max_size=4),
       st.integers(0, 3))
def test_the_pools_fair_order_is_fair_shares(
    plan: list[tuple[list[tuple[str, int, float, int]], list[tuple[str, int]], int]],
    weights: dict[str, float], read: int,
) -> None:
    queues = {name: Queue(name, weight=w) for name, w in weights.items()}
    fair = FairQueues("cpu", CPU, SIZE, queues)
    pending: dict[str, Job] = {}
    usage: dict[str, dict[str, int]] = {}
    k = 0
    for arrivals, changes, leaving in plan:
        for queue, n, submit, prio in arrivals:
            job = Job(f"j{k:02d}", (TaskSpec({"cpu": CPU}, n),), gang=n > 1, queue=queue,
                      submit_time=submit, priority=prio)
            k += 1
            pending[job.id] = job
            fair.add(job, None)
        for queue, nodes in changes:
            used = usage.setdefault(queue, {})
            used["cpu"] = max(0, used.get("cpu", 0) + nodes * CPU)
            fair.stale.add(queue)
        ctx = OrderContext(0.0, queues, _Use(usage), lambda j: None, 0.0)
        want = [j.id for j in FairShare().order(list(pending.values()), ctx)]
        got = [entry[2] for entry in fair.order(usage)]
        assert got == want
        # A pass may read part of the order only; the next is whole again.
        it = fair.order(usage)
        assert [entry[2] for _, entry in zip(range(read), it, strict=False)] == want[:read]
        for job_id in want[:leaving]:
            fair.remove(pending.pop(job_id))
