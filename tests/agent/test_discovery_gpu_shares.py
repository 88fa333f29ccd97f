"""Discovery of MIG instances (fake NVML) and of GPUs split into shares
(``--gpu-shares``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.fake_nvml import H100_UUID, a100_mig, h100_pair
from apportion.agent.discovery import Discovery, discover
from apportion.exceptions import InvalidInput

GiB = 2**30
HOST = {"cpu": 16_000, "memory": 64 * GiB, "storage": 1000 * GiB}


def found(tmp_path: Path, nvml: object, **kwargs: object) -> Discovery:
    declared = {**HOST, **kwargs.pop("declared", {})}  # type: ignore[dict-item]
    return discover(tmp_path, nvml=nvml, declared=declared, **kwargs)  # type: ignore[arg-type]


def test_mig_profile_from_attributes_when_the_name_lacks_it(tmp_path: Path) -> None:
    result = found(tmp_path, a100_mig(named=False))
    assert [d.attrs["mig"] for d in result.devices["gpu"]] == ["1g.5gb", "3g.20gb"]


def test_mig_mode_without_instances_offers_nothing_and_says_so(tmp_path: Path) -> None:
    nvml = a100_mig()
    nvml.gpus[0].migs.clear()
    result = found(tmp_path, nvml)
    assert "gpu" not in result.resources
    assert result.specs["gpu_errors"] == ["gpu 0: MIG mode is on but no MIG instance is configured"]


def test_gpu_shares_split_gpus_into_slots(tmp_path: Path) -> None:
    result = found(tmp_path, h100_pair(), gpu_shares=4)
    assert "gpu" not in result.resources
    assert result.resources["gpu.shares"] == 8
    slots = result.devices["gpu.shares"]
    assert [s.id for s in slots] == ["0/0", "0/1", "0/2", "0/3", "1/0", "1/1", "1/2", "1/3"]
    assert {(s.uuid, s.attrs["parent"], s.attrs["shares"]) for s in slots[:4]} == {
        (H100_UUID[0], "0", 4)
    }
    assert result.labels["gpu.shares"] == "4"
    assert result.labels["type"] == "gpu"
    assert result.labels["gpu.model"] == "H100"


def test_gpu_shares_on_some_gpus_leave_the_others_whole(tmp_path: Path) -> None:
    result = found(tmp_path, None, declared={"gpu": 2}, gpu_shares=4, shared_gpus=["1"])
    assert result.resources["gpu"] == 1
    assert result.resources["gpu.shares"] == 4
    assert [d.id for d in result.devices["gpu"]] == ["0"]
    assert [d.id for d in result.devices["gpu.shares"]] == ["1/0", "1/1", "1/2", "1/3"]


def test_gpu_shares_refused_without_gpus_or_for_an_unknown_gpu(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="gpu_shares: this machine offers no GPU to split"):
        found(tmp_path, None, gpu_shares=4)
    with pytest.raises(InvalidInput, match="shared_gpus: no GPU 7 here; the GPUs are 0, 1"):
        found(tmp_path, None, declared={"gpu": 2}, gpu_shares=4, shared_gpus=["7"])
