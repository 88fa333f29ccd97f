"""Heartbeat usage samples: real host sensors, fake NVML GPUs, broken sensors."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from agent.fake_nvml import (
    A100_MEMORY,
    A100_UUID,
    H100_MEMORY,
    H100_UUID,
    FakeNvml,
    a100_mig,
    consumer_card,
    h100_pair,
)
from apportion.agent import usage
from apportion.agent.usage import XidCounter, sample_gpus, sample_usage

KEYS = {
    "cpu_percent",
    "memory_used",
    "memory_total",
    "memory_percent",
    "disk_used",
    "disk_total",
    "disk_percent",
    "load_average",
    "gpus",
}


def test_real_host_sample(tmp_path: Path) -> None:
    sample = sample_usage(tmp_path, None)
    assert set(sample) == KEYS
    assert sample["gpus"] == []
    assert sample["memory_total"] == psutil.virtual_memory().total
    assert 0 < sample["memory_used"] <= sample["memory_total"]
    assert 0 <= sample["memory_percent"] <= 100
    assert 0 < sample["disk_used"] <= sample["disk_total"]
    assert len(sample["load_average"]) == 3


def test_cpu_percent_is_none_until_there_is_an_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "_cpu_started", False)
    assert sample_usage(tmp_path, None)["cpu_percent"] is None
    second = sample_usage(tmp_path, None)["cpu_percent"]
    assert isinstance(second, float)
    assert 0.0 <= second <= 100.0


def test_work_dir_not_created_yet(tmp_path: Path) -> None:
    sample = sample_usage(tmp_path / "a" / "b", None)
    assert sample["disk_total"] == psutil.disk_usage(str(tmp_path)).total


def test_broken_host_sensors_read_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("sensor gone")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    monkeypatch.setattr(psutil, "disk_usage", broken)
    monkeypatch.setattr(psutil, "cpu_percent", broken)
    monkeypatch.setattr(os, "getloadavg", broken)
    sample = sample_usage(tmp_path, None)
    assert sample == {
        "cpu_percent": None,
        "memory_used": None,
        "memory_total": None,
        "memory_percent": None,
        "disk_used": None,
        "disk_total": None,
        "disk_percent": None,
        "load_average": None,
        "gpus": [],
    }


def test_h100_pair_readings() -> None:
    nvml = h100_pair()
    assert sample_gpus(nvml) == [
        {
            "index": 0,
            "uuid": H100_UUID[0],
            "utilization_percent": 97,
            "memory_used": 104_857_600,
            "memory_total": H100_MEMORY,
            "temperature_c": 31,
            "ecc_errors": 0,
            "xid_errors": None,
            "last_xid": None,
        },
        {
            "index": 1,
            "uuid": H100_UUID[1],
            "utilization_percent": 87,
            "memory_used": 105_906_176,
            "memory_total": H100_MEMORY,
            "temperature_c": 32,
            "ecc_errors": 0,
            "xid_errors": None,
            "last_xid": None,
        },
    ]
    assert nvml.refcount == 0


def test_old_bindings_returning_bytes() -> None:
    assert sample_gpus(h100_pair(legacy_bytes=True)) == sample_gpus(h100_pair())


def test_unsupported_sensors_read_none() -> None:
    # MIG mode: NVML answers NotSupported for utilization; a GeForce has no ECC.
    (mig,) = sample_gpus(a100_mig())
    assert mig["utilization_percent"] is None
    assert mig["memory_total"] == A100_MEMORY
    assert mig["uuid"] == A100_UUID
    (geforce,) = sample_gpus(consumer_card())
    assert geforce["ecc_errors"] is None
    assert geforce["temperature_c"] == 40


def test_ecc_errors_are_volatile_uncorrected() -> None:
    nvml = h100_pair()
    nvml.gpus[1].ecc_uncorrected = 3
    assert [g["ecc_errors"] for g in sample_gpus(nvml)] == [0, 3]


def test_lost_gpu_still_gets_an_entry() -> None:
    nvml = h100_pair()
    nvml.gpus[0].lost = True
    lost, ok = sample_gpus(nvml)
    assert lost == {
        "index": 0,
        "uuid": None,
        "utilization_percent": None,
        "memory_used": None,
        "memory_total": None,
        "temperature_c": None,
        "ecc_errors": None,
        "xid_errors": None,
        "last_xid": None,
    }
    assert ok["uuid"] == H100_UUID[1]


def test_no_nvml_library_means_no_gpus() -> None:
    assert sample_gpus(FakeNvml([], library_missing=True)) == []
    assert sample_gpus(None) == []


def test_xid_errors_counted_from_events(tmp_path: Path) -> None:
    nvml = h100_pair()
    with XidCounter(nvml) as xids:
        assert nvml.refcount == 1  # held open so events keep arriving
        nvml.inject_xid(1, 79)
        nvml.inject_xid(1, 48)
        gpus = sample_usage(tmp_path, nvml, xids=xids)["gpus"]
        assert [(g["xid_errors"], g["last_xid"]) for g in gpus] == [(0, None), (2, 48)]
        nvml.inject_xid(0, 13)
        gpus = sample_usage(tmp_path, nvml, xids=xids)["gpus"]
        assert [(g["xid_errors"], g["last_xid"]) for g in gpus] == [(1, 13), (2, 48)]
    assert nvml.refcount == 0
    assert "nvmlEventSetFree" in nvml.calls


def test_xid_errors_none_where_events_unsupported() -> None:
    nvml = a100_mig()
    with XidCounter(nvml) as xids:
        nvml.inject_xid(0, 79)
        assert sample_gpus(nvml, xids)[0]["xid_errors"] is None
    assert nvml.refcount == 0


def test_xid_counter_without_nvml() -> None:
    with XidCounter(None) as xids:
        xids.poll()
        assert xids.count(0) is None
    with XidCounter(FakeNvml([], library_missing=True)) as xids:
        xids.poll()
        assert xids.count(0) is None
