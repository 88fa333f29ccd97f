"""GPU shares: the request arithmetic, the slot choice, and a stateful
property test that the ledger never gives out more than N shares of a GPU."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from apportion.core.gpu_shares import (
    ShareRequest,
    one_gpu,
    pick_slots,
    share_request,
    split_gpu,
    splits_offered,
    tasks_fit,
)
from apportion.core.ledger import Ledger
from apportion.core.model import Device, Node, ReleaseReason
from apportion.core.scheduling import (
    ClusterState,
    Job,
    SchedulerConfig,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.exceptions import InsufficientResources, InvalidInput, InvalidQuantity

F = "resources.gpu"


def shared_node(name: str = "n", gpus: int = 2, split: int = 4) -> Node:
    slots = tuple(s for i in range(gpus) for s in split_gpu(Device(str(i), "A100"), split))
    return Node(name, {"cpu": 8000}, devices={"gpu.shares": slots})


def test_split_gpu_names_slots_after_their_gpu() -> None:
    slots = split_gpu(Device("1", "A100", 40 << 30, "GPU-1"), 4)
    assert [s.id for s in slots] == ["1/0", "1/1", "1/2", "1/3"]
    assert {(s.uuid, s.attrs["parent"], s.attrs["shares"]) for s in slots} == {("GPU-1", "1", 4)}


@pytest.mark.parametrize("n", [0, 1, 101])
def test_split_out_of_range_names_the_limit(n: int) -> None:
    with pytest.raises(InvalidInput, match=r"gpu_shares: .* split a GPU in 2 to 100 shares"):
        split_gpu(Device("0"), n)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0.25, ShareRequest(1, 4)),
        ("0.5", ShareRequest(1, 2)),
        ("0.75", ShareRequest(3, 4)),
        (1, None),
        ("2", None),
        (2.0, None),
        ("1.0", None),
        ("1/4", ShareRequest(1, 4)),
        (" 2/4 ", ShareRequest(1, 2)),
    ],
)
def test_share_request(value: object, want: ShareRequest | None) -> None:
    assert share_request(value, {4, 2}, F) == want


def test_a_third_is_written_as_a_fraction() -> None:
    assert share_request("1/3", {3}, F) == ShareRequest(1, 3)
    assert share_request("2/3", {3}, F) == ShareRequest(2, 3)
    with pytest.raises(InvalidQuantity) as err:
        share_request("0.3333", {3}, F)
    assert str(err.value) == (
        "resources.gpu: '0.3333' is not a multiple of 1/3; GPUs here are split in 3 shares "
        "(e.g. 1/3, 2/3)"
    )


def test_share_percent() -> None:
    assert ShareRequest(1, 4).percent == 25
    assert ShareRequest(3, 4).percent == 75


def test_share_not_a_multiple_names_the_step() -> None:
    with pytest.raises(InvalidQuantity) as err:
        share_request(0.3, {4}, F)
    assert str(err.value) == (
        "resources.gpu: 0.3 is not a multiple of 1/4; GPUs here are split in 4 shares "
        "(e.g. 0.25, 0.5)"
    )
    assert err.value.data["field"] == "resources.gpu"


def test_fraction_above_one_is_refused() -> None:
    with pytest.raises(
        InvalidQuantity,
        match=r"resources.gpu: '1.5' GPUs is more than one GPU "
        r"and not whole",
    ):
        share_request("1.5", {4}, F)


def test_share_without_shared_gpus_says_how_to_offer_them() -> None:
    with pytest.raises(
        InvalidQuantity, match="no node offers GPU shares; start an agent with --gpu-shares N"
    ):
        share_request(0.25, set(), F)


def test_splits_offered() -> None:
    assert splits_offered(
        [shared_node("a", 1, 4), shared_node("b", 1, 2), Node("c", {"gpu": 1})]
    ) == {2, 4}


def test_pick_slots_fills_the_fullest_gpu_first() -> None:
    slots = {d.id: d for d in shared_node().devices["gpu.shares"]}
    free = ["0/2", "0/3", "1/0", "1/1", "1/2", "1/3"]
    assert pick_slots(free, slots, 1) == ("0/2",)
    assert pick_slots(free, slots, 3) == ("1/0", "1/1", "1/2")
    assert pick_slots(free, slots, 4) == ("1/0", "1/1", "1/2", "1/3")
    assert pick_slots(free, slots, 8) is None  # GPU 0 is not whole
    assert pick_slots(["0/3", "1/3"], slots, 2) is None  # two GPUs' leftovers: not one GPU
    assert one_gpu(["0/0", "0/1"], slots) and not one_gpu(["0/3", "1/3"], slots)


def test_ledger_keeps_a_grants_shares_on_one_gpu() -> None:
    ledger = Ledger()
    ledger.add_node(shared_node(gpus=2, split=4))
    a = ledger.grant("a", {"gpu.shares": 3}, now=0.0, node="n")
    b = ledger.grant("b", {"gpu.shares": 3}, now=0.0, node="n")
    assert a.devices == {"gpu.shares": ("0/0", "0/1", "0/2")}
    assert b.devices == {"gpu.shares": ("1/0", "1/1", "1/2")}
    with pytest.raises(InvalidInput, match=r"devices.gpu.shares: 0/3, 1/3 on node n span GPUs"):
        ledger.grant(
            "c", {"gpu.shares": 2}, now=0.0, node="n", devices={"gpu.shares": ["0/3", "1/3"]}
        )
    with pytest.raises(
        InsufficientResources,
        match=r"Node n has 2 free gpu\.shares but no GPU "
        r"with 2 of them free",
    ):
        ledger.grant("c", {"gpu.shares": 2}, now=0.0, node="n")
    c = ledger.grant("c", {"gpu.shares": 1}, now=0.0, node="n")
    assert c.devices == {"gpu.shares": ("0/3",)}


class SharesMachine(RuleBasedStateMachine):
    """Random grants and releases of shares on two nodes of split GPUs:
    no GPU ever has more than N slots held, a grant's slots sit on one GPU,
    and free + held == capacity."""

    @initialize(split=st.sampled_from([2, 3, 4, 8]), gpus=st.integers(1, 3))
    def setup(self, split: int, gpus: int) -> None:
        self.ledger = Ledger()
        self.split = split
        for name in ("a", "b"):
            self.ledger.add_node(shared_node(name, gpus, split))
        self.held: list[str] = []
        self.n = 0

    @rule(node=st.sampled_from(["a", "b", None]), k=st.integers(1, 9))
    def grant(self, node: str | None, k: int) -> None:
        self.n += 1
        try:
            self.ledger.grant(f"g{self.n}", {"gpu.shares": k}, now=0.0, node=node)
        except (InsufficientResources, InvalidInput):
            return
        self.held.append(f"g{self.n}")

    @rule(i=st.integers(0, 50))
    def release(self, i: int) -> None:
        if self.held:
            alloc = self.held.pop(i % len(self.held))
            self.ledger.release(alloc, ReleaseReason.COMPLETED, 1.0)

    @invariant()
    def shares_never_exceed_n(self) -> None:
        if not hasattr(self, "ledger"):
            return
        for name in ("a", "b"):
            per_gpu: dict[str, int] = {}
            held = 0
            for alloc in self.ledger.allocations_on(name):
                ids = alloc.devices["gpu.shares"]
                parents = {s.split("/")[0] for s in ids}
                assert len(ids) == alloc.resources["gpu.shares"]
                assert len(parents) == 1 or len(ids) == self.split * len(parents)
                for s in ids:
                    per_gpu[s.split("/")[0]] = per_gpu.get(s.split("/")[0], 0) + 1
                held += len(ids)
            assert all(v <= self.split for v in per_gpu.values())
            node = self.ledger.node(name)
            free = self.ledger.free(name)["gpu.shares"]
            assert free == len(self.ledger.free_devices(name)["gpu.shares"])
            assert free + held == node.resources["gpu.shares"]


SharesMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestShares = SharesMachine.TestCase


def test_tasks_fit_counts_per_gpu() -> None:
    slots = {d.id: d for d in shared_node().devices["gpu.shares"]}
    free = ["0/2", "0/3", "1/0", "1/1", "1/2", "1/3"]
    assert tasks_fit(free, slots, 1) == 6
    assert tasks_fit(free, slots, 2) == 3
    assert tasks_fit(free, slots, 3) == 1  # 6 // 3 would say 2
    assert tasks_fit(free, slots, 4) == 1
    assert tasks_fit(free, slots, 8) == 0


def test_scheduler_keeps_each_tasks_shares_on_one_gpu() -> None:
    quarter = parse_constraints("gpu.shares=4", device_families=("gpu",))

    def ask(name: str, k: int, t: float, constrained: bool = True) -> Job:
        if constrained:
            return job(name, {"gpu.shares": k}, submit_time=t, constraints=quarter)
        return job(name, {"gpu.shares": k}, submit_time=t)

    def cycle(*jobs: Job) -> tuple[dict[str, tuple[str, ...]], list[str]]:
        r = schedule_cycle(
            ClusterState([shared_node(gpus=2, split=4)]), list(jobs), 0.0, SchedulerConfig()
        )
        placed = {p.job_id: p.tasks[0].devices["gpu.shares"] for p in r.placements}
        return placed, sorted(r.unplaced)

    three = {"a": ("0/0", "0/1", "0/2"), "b": ("1/0", "1/1", "1/2")}
    # Two slots are free, one on each GPU: a task of two waits (and the
    # cycle ends), with or without the constraint a submitted gpu: 0.5 has.
    assert cycle(ask("a", 3, 0), ask("b", 3, 1), ask("c", 2, 2)) == (three, ["c"])
    assert cycle(ask("a", 3, 0), ask("b", 3, 1), ask("c", 2, 2, False)) == (three, ["c"])
    assert cycle(ask("a", 3, 0), ask("b", 3, 1), ask("d", 1, 2)) == ({**three, "d": ("0/3",)}, [])
