"""A task holding a share of a GPU: which GPU it sees and how much of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apportion.agent.gpu_isolation import granted_minors
from apportion.agent.protocol import Assignment, mps_percent, share_parents, task_env

SLOT = {"uuid": "GPU-bbb", "model": "A100", "memory": 40 << 30, "parent": "1", "shares": 4}


def shares(ids: list[str], info: list[dict[str, Any]] | None = None) -> Assignment:
    info = [{"id": i, **SLOT} for i in ids] if info is None else info
    return Assignment(
        "t1",
        "j-1",
        0,
        1,
        "alloc-1",
        ("env",),
        {"gpu.shares": str(len(ids))},
        {"gpu.shares": len(ids)},
        {"gpu.shares": ids},
        {"gpu.shares": info},
    )


def test_a_share_pins_its_gpu_and_sets_the_mps_percentage(tmp_path: Path) -> None:
    env = task_env(shares(["1/0"]), "n1", tmp_path, tmp_path / "c", None, base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-bbb"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    env = task_env(shares(["1/2", "1/3"]), "n1", tmp_path, tmp_path / "c", None, base={})
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]) == (
        "GPU-bbb",
        "50",
    )


def test_a_share_without_uuid_is_pinned_by_index() -> None:
    bare = shares(["1/0"], [{"id": "1/0", "parent": "1", "shares": 4}])
    assert (
        task_env(bare, "n1", Path("/t"), Path("/c"), None, base={})["CUDA_VISIBLE_DEVICES"] == "1"
    )
    assert share_parents(shares(["2/1"], []))["2"] == {}  # no info at all: the id says


def test_no_share_no_mps_percentage_even_if_the_agent_had_one(tmp_path: Path) -> None:
    whole = Assignment(
        "t1",
        "j-1",
        0,
        1,
        "alloc-1",
        ("env",),
        {"gpu": "1"},
        {"gpu": 1},
        {"gpu": ["0"]},
        {"gpu": [{"id": "0"}]},
    )
    env = task_env(
        whole,
        "n1",
        tmp_path,
        tmp_path / "c",
        None,
        base={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "10"},
    )
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert mps_percent(whole) is None


def test_the_fence_lets_a_share_reach_its_gpu() -> None:
    a = shares(["1/0"])
    assert granted_minors([*a.devices.get("gpu", []), *share_parents(a)], {"1": 5}) == [5]
