from __future__ import annotations

import json
import sys
from typing import Any

import psutil
import pytest

from apportion.guard import LocalLedger, TaskEnvironmentError, discover_local_capacity
from apportion.guard.capacity import apply_margin

GIB = 2**30

TASK_ENV = {
    "APPORTION_RESOURCES": json.dumps({"cpu": "2", "memory": "4Gi", "gpu": "2"}),
    "APPORTION_DEVICES": json.dumps({
        "gpu": [
            {"id": "3", "uuid": "GPU-aaa", "memory": "80Gi", "model": "H100"},
            {"id": "5", "uuid": "GPU-bbb", "memory": "40Gi"},
        ]
    }),
}


def test_task_allocation_is_the_capacity() -> None:
    cap = discover_local_capacity(margin=0.0, environ=TASK_ENV, nvml=None)
    assert cap.source == "task"
    assert cap.resources == {
        "cpu": 2000,
        "memory": 4 * GIB,
        "gpu": 2,
        "gpu.0.memory": 80 * GIB,
        "gpu.1.memory": 40 * GIB,
        "gpu_memory": 120 * GIB,
    }
    assert [(g.index, g.id, g.uuid, g.model) for g in cap.gpus] == [
        (0, "3", "GPU-aaa", "H100"),
        (1, "5", "GPU-bbb", None),
    ]


def test_margin_keeps_back_divisible_resources_only() -> None:
    cap = discover_local_capacity(margin=0.25, environ=TASK_ENV, nvml=None)
    assert cap.resources["cpu"] == 1500
    assert cap.resources["memory"] == 3 * GIB
    assert cap.resources["gpu"] == 2
    assert cap.resources["gpu_memory"] == 90 * GIB
    assert cap.total["memory"] == 4 * GIB


def test_task_without_devices_has_no_gpu_memory() -> None:
    cap = discover_local_capacity(
        margin=0.0, environ={"APPORTION_RESOURCES": '{"memory": "1Gi"}'}, nvml=None)
    assert cap.resources == {"memory": GIB}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APPORTION_RESOURCES": "{"}, "APPORTION_RESOURCES is not valid JSON"),
        ({"APPORTION_RESOURCES": "[1]"}, "APPORTION_RESOURCES must be a JSON object"),
        ({"APPORTION_RESOURCES": '{"memory": "lots"}'}, "APPORTION_RESOURCES: "),
        (
            {"APPORTION_RESOURCES": '{"cpu": "1"}', "APPORTION_DEVICES": '{"gpu": 3}'},
            "APPORTION_DEVICES: 'gpu' must be a list of devices",
        ),
    ],
)
def test_malformed_task_environment_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(TaskEnvironmentError) as err:
        discover_local_capacity(environ=env, nvml=None)
    assert err.value.message.startswith(message)


def test_host_capacity_without_gpus() -> None:
    cap = discover_local_capacity(margin=0.0, environ={}, nvml=None)
    assert cap.source == "host"
    assert set(cap.resources) == {"cpu", "memory"}
    assert 0 < cap.resources["memory"] <= psutil.virtual_memory().total
    assert cap.resources["cpu"] >= 1000


def test_host_gpus_through_fake_nvml(fake_nvml: Any) -> None:
    cap = discover_local_capacity(margin=0.1, environ={})
    assert fake_nvml.inits == 1
    assert cap.resources["gpu"] == 2
    assert cap.total["gpu_memory"] == 160 * GIB
    assert cap.total["gpu.1.memory"] == 80 * GIB
    assert cap.resources["gpu.0.memory"] == int(80 * GIB * 0.9)
    assert [g.uuid for g in cap.gpus] == ["GPU-fake-0", "GPU-fake-1"]
    assert cap.gpus[0].model == "NVIDIA H100 80GB HBM3"


def test_broken_nvml_means_no_gpus(monkeypatch: pytest.MonkeyPatch, make_nvml: Any) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_nvml([], broken_init=True))
    assert "gpu" not in discover_local_capacity(environ={}).resources


def test_ledger_discovers_from_task_environment() -> None:
    ledger = LocalLedger.from_local_capacity(margin=0.0, environ=TASK_ENV, nvml=None)
    assert ledger.capacity["memory"] == 4 * GIB
    assert ledger.status()["source"]["source"] == "task"


def test_apply_margin_rejects_nothing_whole() -> None:
    assert apply_margin({"fpga": 3, "memory": 1000, "cpu": 999}, 0.1) == {
        "fpga": 3,
        "memory": 900,
        "cpu": 899,
    }


def test_the_old_names_still_discover() -> None:
    from apportion.guard import discover

    assert discover is discover_local_capacity
    assert LocalLedger.discover(margin=0.0, environ=TASK_ENV, nvml=None).capacity == \
        LocalLedger.from_local_capacity(margin=0.0, environ=TASK_ENV, nvml=None).capacity
