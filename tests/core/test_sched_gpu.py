"""GPUs as users ask for them: by model and memory, linked sets, shares."""

from __future__ import annotations

from apportion.core.model import Device, Node
from apportion.core.scheduling import (
    ClusterState,
    SchedulerConfig,
    explain,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.devices import share_devices

GI = 2**30


def gpus(model: str, memory_gi: int, n: int, links: dict[int, list[int]] | None = None
         ) -> tuple[Device, ...]:
    out = []
    for k in range(n):
        attrs: dict[str, object] = {"numa": k // 4}
        if links and k in links:
            attrs["nvlink"] = [f"GPU-{p}" for p in links[k]]
        out.append(Device(f"GPU-{k}", model, memory_gi * GI, attrs=attrs))
    return tuple(out)


def mixed_fleet() -> ClusterState:
    return ClusterState([
        Node("t4", {"cpu": 16000}, devices={"gpu": gpus("T4", 16, 4)}),
        Node("a100", {"cpu": 16000}, devices={"gpu": gpus("A100", 40, 4)}),
        Node("h100", {"cpu": 16000}, devices={"gpu": gpus("H100", 80, 8)}),
    ])


def run(state: ClusterState, *jobs_: object) -> dict[str, tuple[str, tuple[str, ...]]]:
    r = schedule_cycle(state, list(jobs_), 0.0, SchedulerConfig())  # type: ignore[arg-type]
    return {p.job_id: (p.tasks[0].node, p.tasks[0].devices.get("gpu", ())) for p in r.placements}


def test_gpu_model_constraint_picks_a_matching_node() -> None:
    j = job("j", {"gpu": 2}, constraints=parse_constraints("gpu.model in (A100,H100)"))
    node, devices = run(mixed_fleet(), j)["j"]
    assert node == "a100"
    assert len(devices) == 2


def test_gpu_memory_constraint_skips_small_cards() -> None:
    j = job("j", {"gpu": 1}, constraints=parse_constraints("gpu.memory>=64Gi"))
    assert run(mixed_fleet(), j)["j"][0] == "h100"


def test_explain_reports_device_model_and_largest_free() -> None:
    state = mixed_fleet()
    j = job("j", {"gpu": 9}, constraints=parse_constraints("gpu.model=H100"))
    e = explain(state, j)
    assert e.status == "never"
    assert e.counts == {"capacity gpu": 3}
    assert "needs 9 gpu; largest free on any ready node: 8" in e.hints
    k = job("k", {"gpu": 2}, constraints=parse_constraints("gpu.model=V100"))
    assert explain(state, k).counts == {"device gpu": 3}


def test_multi_gpu_task_gets_linked_devices() -> None:
    # GPU pairs (0,3) and (1,2) have NVLink; a 2-GPU task must get a linked pair.
    state = ClusterState([Node("n", {"cpu": 8000}, devices={"gpu": gpus(
        "A100", 40, 4, links={0: [3], 3: [0], 1: [2], 2: [1]})})])
    _, devices = run(state, job("j", {"gpu": 2}))["j"]
    assert sorted(devices) in (["GPU-0", "GPU-3"], ["GPU-1", "GPU-2"])


def test_single_gpu_task_leaves_linked_pairs_whole() -> None:
    state = ClusterState([Node("n", {"cpu": 8000}, devices={"gpu": gpus(
        "A100", 40, 3, links={0: [1], 1: [0]})})])
    assert run(state, job("j", {"gpu": 1}))["j"][1] == ("GPU-2",)


def test_mixed_node_gets_checked_per_device() -> None:
    devices = (*gpus("T4", 16, 2), Device("GPU-9", "H100", 80 * GI))
    state = ClusterState([Node("mix", {"cpu": 8000}, devices={"gpu": devices})])
    first = job("a", {"gpu": 1}, constraints=parse_constraints("gpu.model=H100"))
    second = job("b", {"gpu": 1}, constraints=parse_constraints("gpu.model=H100"))
    r = schedule_cycle(state, [first, second], 0.0, SchedulerConfig())
    assert [p.tasks[0].devices["gpu"] for p in r.placements] == [("GPU-9",)]
    assert r.unplaced["b"].kind.value == "busy"


def test_shares_never_exceed_a_device() -> None:
    base = gpus("A100", 40, 2)
    slots = share_devices(base[0], 4) + share_devices(base[1], 4)
    state = ClusterState([Node("s", {"cpu": 64000}, devices={"gpu.shares": slots})])
    small = [job(f"s{i}", {"gpu.shares": 1}, submit_time=i) for i in range(6)]
    pair = job("p", {"gpu.shares": 3}, submit_time=10)
    r = schedule_cycle(state, [*small, pair], 0.0, SchedulerConfig())
    used: dict[str, int] = {}
    for p in r.placements:
        for slot in p.tasks[0].devices["gpu.shares"]:
            parent = slot.split("/")[0]
            used[parent] = used.get(parent, 0) + 1
    assert used == {"GPU-0": 4, "GPU-1": 2}
    assert "p" in r.unplaced
    # Small jobs fill one device first, so the other stays whole.
    assert {p.tasks[0].devices["gpu.shares"][0].split("/")[0]
            for p in r.placements[:4]} == {"GPU-0"}


def test_share_request_with_a_model_constraint() -> None:
    slots = share_devices(Device("GPU-0", "T4", 16 * GI), 2) + share_devices(
        Device("GPU-1", "A100", 40 * GI), 2)
    state = ClusterState([Node("s", {"cpu": 8000}, devices={"gpu.shares": slots})])
    j = job("j", {"gpu.shares": 1}, constraints=parse_constraints(
        "gpu.model=A100", device_families=("gpu",)))
    r = schedule_cycle(state, [j], 0.0, SchedulerConfig())
    assert r.placements[0].tasks[0].devices == {"gpu.shares": ("GPU-1/0",)}
