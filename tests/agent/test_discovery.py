"""Discovery against the fake NVML, fake cgroup trees and a monkeypatched host."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from agent.fake_nvml import (
    A100_NAME,
    A100_UUID,
    H100_UUID,
    MIG_MEMORY,
    MIG_MEMORY_3G,
    MIG_UUIDS,
    FakeNvml,
    a100_mig,
    consumer_card,
    h100_pair,
    nvswitch_box,
)
from apportion.agent import discovery
from apportion.agent.discovery import (
    Discovery,
    apply_reserve,
    cpu_model,
    discover,
    load_devices_file,
    normalize_bus_id,
    own_cgroup_limits,
    short_gpu_model,
)
from apportion.core.model import Device
from apportion.exceptions import InvalidInput, InvalidQuantity

GiB = 2**30
# Declaring the host resources makes every expected value below a literal,
# whatever machine the tests run on.
HOST = {"cpu": 16_000, "memory": 64 * GiB, "storage": 1000 * GiB}


def found(tmp_path: Path, nvml: object, **kwargs: object) -> Discovery:
    declared = {**HOST, **kwargs.pop("declared", {})}  # type: ignore[dict-item]
    return discover(tmp_path, nvml=nvml, declared=declared, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- GPUs


def test_two_h100s_with_nvlink(tmp_path: Path) -> None:
    nvml = h100_pair()
    result = found(tmp_path, nvml)
    assert result.resources == {"cpu": 16_000, "memory": 64 * GiB, "storage": 1000 * GiB, "gpu": 2}
    assert result.devices == {
        "gpu": (
            Device(
                id="0",
                model="H100",
                memory=85_520_809_984,
                uuid="GPU-0d9f1c5e-7a1b-4c2d-9e3f-000000000000",
                serial="1650123000000",
                attrs={
                    "index": 0,
                    "name": "NVIDIA H100 80GB HBM3",
                    "mig": False,
                    "nvlink_links": 4,
                    "nvlink_peers": [1],
                    "pci_bus_id": "00000000:18:00.0",
                    "numa_node": 0,
                },
            ),
            Device(
                id="1",
                model="H100",
                memory=85_520_809_984,
                uuid="GPU-0d9f1c5e-7a1b-4c2d-9e3f-000000000001",
                serial="1650123000001",
                attrs={
                    "index": 1,
                    "name": "NVIDIA H100 80GB HBM3",
                    "mig": False,
                    "nvlink_links": 4,
                    "nvlink_peers": [0],
                    "pci_bus_id": "00000000:2A:00.0",
                    "numa_node": 1,
                },
            ),
        )
    }
    assert result.specs["nvml"] == "ok"
    assert result.specs["nvidia_driver"] == "550.54.15"
    assert result.specs["cuda_driver"] == "12.4"
    assert result.labels["type"] == "gpu"
    assert result.labels["gpu.model"] == "H100"
    assert "gpu.mig" not in result.labels


def test_each_gpus_device_minor_is_recorded_for_the_gpu_fence(tmp_path: Path) -> None:
    from apportion.agent.main import _gpu_minors

    nvml = h100_pair()
    nvml.gpus[0].minor, nvml.gpus[1].minor = 2, 5  # /dev/nvidia2 and /dev/nvidia5
    result = found(tmp_path, nvml)
    assert [d.attrs["minor"] for d in result.devices["gpu"]] == [2, 5]
    assert _gpu_minors(result) == {"0": 2, "1": 5}
    declared = found(tmp_path, None, declared={"gpu": 2})
    assert _gpu_minors(declared) == {"0": 0, "1": 1}  # no NVML: the index stands for it


def test_nvml_is_initialised_and_shut_down_once(tmp_path: Path) -> None:
    nvml = h100_pair()
    found(tmp_path, nvml)
    assert nvml.calls[0] == "nvmlInit"
    assert nvml.calls[-1] == "nvmlShutdown"
    assert nvml.calls.count("nvmlInit") == 1
    assert nvml.refcount == 0


def test_old_bindings_returning_bytes_give_the_same_devices(tmp_path: Path) -> None:
    assert found(tmp_path, h100_pair(legacy_bytes=True)) == found(tmp_path, h100_pair())


def test_a100_in_mig_mode_offers_its_instances(tmp_path: Path) -> None:
    result = found(tmp_path, a100_mig())
    assert result.resources["gpu"] == 2
    common = {
        "index": 0,
        "name": A100_NAME,
        "pci_bus_id": "00000000:07:00.0",
        "gpu_uuid": A100_UUID,
    }
    assert result.devices["gpu"] == (
        Device(
            id="0-mig0",
            model="A100",
            memory=MIG_MEMORY,
            uuid=MIG_UUIDS[0],
            attrs={**common, "mig": "1g.5gb", "mig_slot": 0},
        ),
        Device(
            id="0-mig2",
            model="A100",
            memory=MIG_MEMORY_3G,
            uuid=MIG_UUIDS[1],
            attrs={**common, "mig": "3g.20gb", "mig_slot": 2},
        ),
    )
    assert result.labels["gpu.mig"] == "true"


def test_card_without_ecc_mig_nvlink_or_serial(tmp_path: Path) -> None:
    (gpu,) = found(tmp_path, consumer_card()).devices["gpu"]
    assert gpu == Device(
        id="0",
        model="RTX-4090",
        memory=25_757_220_864,
        uuid="GPU-40904090-0000-4000-8000-000000004090",
        serial=None,
        attrs={
            "index": 0,
            "name": "NVIDIA GeForce RTX 4090",
            "mig": False,
            "pci_bus_id": "00000000:01:00.0",
        },
    )


def test_nvswitch_connects_every_gpu(tmp_path: Path) -> None:
    devices = found(tmp_path, nvswitch_box(4)).devices["gpu"]
    assert [d.attrs["nvlink_peers"] for d in devices] == [
        [1, 2, 3],
        [0, 2, 3],
        [0, 1, 3],
        [0, 1, 2],
    ]
    assert [d.attrs["nvlink_links"] for d in devices] == [18, 18, 18, 18]
    assert all(d.attrs["nvswitch"] is True for d in devices)


def test_lost_gpu_is_left_out_and_named(tmp_path: Path) -> None:
    nvml = h100_pair()
    nvml.gpus[1].lost = True
    result = found(tmp_path, nvml)
    assert result.resources["gpu"] == 1
    assert [d.uuid for d in result.devices["gpu"]] == [H100_UUID[0]]
    # Its link partner is gone, so the links stay active but lead to no known GPU.
    assert result.devices["gpu"][0].attrs["nvlink_peers"] == []
    assert result.specs["gpu_errors"] == ["gpu 1: GPU is lost"]
    assert nvml.refcount == 0


def test_missing_nvml_library_means_no_gpus(tmp_path: Path) -> None:
    result = found(tmp_path, FakeNvml([], library_missing=True))
    assert "gpu" not in result.resources
    assert result.devices == {}
    assert result.specs["nvml"] == "unavailable: NVML Shared Library Not Found"
    assert result.labels["type"] == "cpu"


def test_without_the_nvidia_extra(tmp_path: Path) -> None:
    result = found(tmp_path, None)
    assert result.specs["nvml"] == "not installed"
    assert "gpu" not in result.resources


def test_default_nvml_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "load_nvml", lambda: None)
    assert discover(tmp_path, declared=HOST).specs["nvml"] == "not installed"


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("Quadro RTX 8000", "RTX-8000"),
        ("NVIDIA", "NVIDIA"),
    ],
)
def test_short_gpu_model(name: str, short: str) -> None:
    assert short_gpu_model(name) == short


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("00000000:3B:00.0", "00000000:3B:00.0"),
        ("0000:3b:00.0", "00000000:3B:00.0"),
        ("00000001:3B:00.0", "00000001:3B:00.0"),
        ("3b:00.0", "00000000:3B:00.0"),
        ("", None),
        ("zz:3b:00.0", None),
    ],
)
def test_normalize_bus_id(text: str, normal: str | None) -> None:
    assert normalize_bus_id(text) == normal


# ---------------------------------------------------------------- declared and reserve


def test_declared_gpus_without_nvml_get_ids(tmp_path: Path) -> None:
    result = found(tmp_path, None, declared={"gpu": 3})
    assert result.resources["gpu"] == 3
    assert result.devices["gpu"] == tuple(
        Device(id=str(i), attrs={"index": i, "declared": True}) for i in range(3)
    )
    assert result.specs["declared"] == ["cpu", "gpu", "memory", "storage"]


def test_declaring_fewer_gpus_than_found_offers_the_first(tmp_path: Path) -> None:
    result = found(tmp_path, nvswitch_box(4), declared={"gpu": 2})
    assert result.resources["gpu"] == 2
    assert [d.id for d in result.devices["gpu"]] == ["0", "1"]


def test_declaring_more_gpus_than_found_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        found(tmp_path, h100_pair(), declared={"gpu": 4})
    assert err.value.message == (
        "resources.gpu: declares 4 but only 2 gpu devices were found (0, 1); declare at most 2"
    )
    assert err.value.data == {"field": "resources.gpu"}


def test_declaring_zero_removes_a_resource(tmp_path: Path) -> None:
    result = found(tmp_path, h100_pair(), declared={"gpu": 0})
    assert "gpu" not in result.resources
    assert result.devices == {}


def test_declared_negative_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidQuantity, match=r"^resources\.fpga: expected a whole number"):
        found(tmp_path, None, declared={"fpga": -1})


def test_reserve_is_subtracted(tmp_path: Path) -> None:
    result = found(tmp_path, h100_pair(), reserve={"cpu": 500, "memory": GiB})
    assert result.resources == {"cpu": 15_500, "memory": 63 * GiB, "storage": 1000 * GiB, "gpu": 2}
    assert result.capacity == {"cpu": 16_000, "memory": 64 * GiB, "storage": 1000 * GiB, "gpu": 2}
    assert result.reserved == {"cpu": 500, "memory": GiB}


def test_reserving_a_gpu_keeps_the_lowest_indexes() -> None:
    gpus = tuple(Device(id=str(i)) for i in range(4))
    offered, devices = apply_reserve({"gpu": 4}, {"gpu": gpus}, {"gpu": 1})
    assert offered == {"gpu": 3}
    assert [d.id for d in devices["gpu"]] == ["0", "1", "2"]


def test_reserving_everything_drops_the_resource() -> None:
    offered, devices = apply_reserve({"gpu": 1, "cpu": 1000}, {"gpu": (Device("0"),)}, {"gpu": 1})
    assert offered == {"cpu": 1000}
    assert devices == {}


def test_reserve_above_capacity_names_the_resource(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        found(tmp_path, None, reserve={"memory": 65 * GiB})
    assert err.value.message == "reserve.memory: reserves 65Gi but the node has 64Gi memory"
    assert err.value.data == {"field": "reserve.memory"}


def test_reserve_of_a_resource_the_node_lacks(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^reserve\.gpu: reserves 1 but the node has 0 gpu$"):
        found(tmp_path, None, reserve={"gpu": 1})


def test_reserve_cpu_in_millicores(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"reserves 16500m but the node has 16 cpu"):
        found(tmp_path, None, reserve={"cpu": 16_500})


# ---------------------------------------------------------------- devices file

EXAMPLE = """
[[device]]
resource = "asic.s19"
id = "s19-0001"
serial = "S19XP-0001"
model = "Antminer S19 XP"

[[device]]
resource = "asic.s19"
id = "s19-0002"
serial = "S19XP-0002"
model = "Antminer S19 XP"
memory = "512Mi"
attrs = { rack = "r12", hashrate_th = 140 }

[[device]]
resource = "license.matlab"
count = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_devices_file_identified_and_counted(tmp_path: Path) -> None:
    custom = load_devices_file(write(tmp_path, EXAMPLE))
    assert custom.counts == {"asic.s19": 2, "license.matlab": 4}
    assert custom.devices == {
        "asic.s19": (
            Device(id="s19-0001", model="Antminer S19 XP", serial="S19XP-0001"),
            Device(
                id="s19-0002",
                model="Antminer S19 XP",
                serial="S19XP-0002",
                memory=512 * 2**20,
                attrs={"rack": "r12", "hashrate_th": 140},
            ),
        )
    }


def test_devices_file_joins_discovery(tmp_path: Path) -> None:
    result = found(tmp_path, None, devices_file=write(tmp_path, EXAMPLE))
    assert result.resources == {**HOST, "asic.s19": 2, "license.matlab": 4}
    assert [d.id for d in result.devices["asic.s19"]] == ["s19-0001", "s19-0002"]
    assert "license.matlab" not in result.devices
    assert result.labels["type"] == "asic"


def test_empty_devices_file(tmp_path: Path) -> None:
    custom = load_devices_file(write(tmp_path, ""))
    assert (custom.counts, custom.devices) == ({}, {})


def test_devices_file_gpu_for_cards_nvml_cannot_see(tmp_path: Path) -> None:
    path = write(tmp_path, '[[device]]\nresource = "gpu"\nid = "mi300x-0"\nmodel = "MI300X"\n')
    result = found(tmp_path, None, devices_file=path)
    assert result.devices["gpu"] == (Device(id="mi300x-0", model="MI300X"),)


def test_devices_file_gpu_clashing_with_nvml(tmp_path: Path) -> None:
    path = write(tmp_path, '[[device]]\nresource = "gpu"\ncount = 2\n')
    with pytest.raises(InvalidInput, match=r"resource 'gpu' is already discovered on this machine"):
        found(tmp_path, h100_pair(), devices_file=path)


def test_declared_resources_override_the_devices_file(tmp_path: Path) -> None:
    result = found(tmp_path, None, devices_file=write(tmp_path, EXAMPLE), declared={"asic.s19": 1})
    assert result.resources["asic.s19"] == 1
    assert [d.id for d in result.devices["asic.s19"]] == ["s19-0001"]


BAD_FILES = [
    ('[[device]]\nid = "x"\n', "device[0]: 'resource' is required", "device[0].resource"),
    (
        '[[device]]\nresource = "fpga"\n',
        "device[0]: give 'id' (one identified device) or 'count'",
        "device[0].id",
    ),
    (
        '[[device]]\nresource = "fpga"\ncount = 2\nid = "f0"\n',
        "device[0]: 'id' does not go with 'count'",
        "device[0].id",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = "f0"\nserail = "x"\n',
        "device[0]: unknown field 'serail'",
        "device[0].serail",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = "f0"\n[[device]]\nresource = "fpga"\nid = "f0"\n',
        "device[1]: id 'f0' of 'fpga' repeats device[0]",
        "device[1].id",
    ),
    (
        '[[device]]\nresource = "fpga"\ncount = 0\n',
        "device[0].count: expected a whole number >= 1, got 0",
        "device[0].count",
    ),
    (
        '[[device]]\nresource = "fpga"\ncount = "2"\n',
        "device[0].count: expected a whole number >= 1, got '2'",
        "device[0].count",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = "f0"\n[[device]]\nresource = "fpga"\ncount = 1\n',
        "device[1]: resource 'fpga' is already given in device[0]",
        "device[1].resource",
    ),
    (
        '[[device]]\nresource = "fpga"\ncount = 1\n[[device]]\nresource = "fpga"\nid = "f0"\n',
        "device[1]: resource 'fpga' is already given in device[0]",
        "device[1].resource",
    ),
    (
        '[[device]]\nresource = "memory"\ncount = 1\n',
        "device[0].resource: 'memory' is measured in bytes, not counted",
        "device[0].resource",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = ""\n',
        "device[0].id: expected 1-128 printable characters, got ''",
        "device[0].id",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = "f0"\nmodel = 7\n',
        "device[0].model: expected 1-253 printable characters, got 7",
        "device[0].model",
    ),
    (
        '[[device]]\nresource = "fpga"\nid = "f0"\nattrs = { "bad key" = 1 }\n',
        "device[0].attrs: key 'bad key' must be",
        "device[0].attrs",
    ),
    ('[[devices]]\nresource = "fpga"\n', "unknown top-level key 'devices'", "devices"),
    ('device = "fpga"\n', "'device' must be [[device]] tables", "device"),
    ("[[device]\n", "not valid TOML", "devices"),
]


@pytest.mark.parametrize(("text", "message", "field"), BAD_FILES)
def test_devices_file_errors_name_the_field(
    tmp_path: Path, text: str, message: str, field: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidInput) as err:
        load_devices_file(path)
    assert err.value.message.startswith(str(path))
    assert message in err.value.message
    assert err.value.data == {"field": field}


def test_devices_file_bad_resource_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[[device]]\nresource = "Big FPGA"\ncount = 1\n')
    with pytest.raises(Exception, match=r"device\[0\]\.resource: resource name 'Big FPGA'"):
        load_devices_file(path)


def test_devices_file_bad_memory(tmp_path: Path) -> None:
    path = write(tmp_path, '[[device]]\nresource = "fpga"\nid = "f0"\nmemory = "8 parsecs"\n')
    with pytest.raises(
        InvalidQuantity, match=r"device\[0\]\.memory: unknown unit 'parsecs' in '8 parsecs'"
    ):
        load_devices_file(path)


def test_devices_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read devices file"):
        load_devices_file(tmp_path / "nope.toml")


# ---------------------------------------------------------------- host


def fake_host(monkeypatch: pytest.MonkeyPatch, limits: tuple[int | None, int | None]) -> None:
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 64 if logical else 32)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(48)))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=512 * GiB))
    monkeypatch.setattr(psutil, "disk_usage", lambda path: SimpleNamespace(total=3840 * GiB))
    monkeypatch.setattr(discovery, "own_cgroup_limits", lambda: limits)
    monkeypatch.setattr(discovery, "cpu_model", lambda: "AMD EPYC 9654 96-Core Processor")


def test_host_resources_from_affinity_and_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_host(monkeypatch, (None, None))
    result = discover(tmp_path / "not-yet", nvml=None)
    assert result.resources == {"cpu": 48_000, "memory": 512 * GiB, "storage": 3840 * GiB}
    assert result.specs["cpu_cores_physical"] == 32
    assert result.specs["cpu_cores_logical"] == 64
    assert result.specs["cpu_cores_usable"] == 48
    assert result.specs["cpu_model"] == "AMD EPYC 9654 96-Core Processor"
    assert result.specs["work_dir"] == str(tmp_path / "not-yet")
    assert "memory_limit_cgroup" not in result.specs


def test_host_resources_lowered_to_own_cgroup_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_host(monkeypatch, (8_500, 32 * GiB))
    result = discover(tmp_path, nvml=None, reserve={"cpu": 500})
    assert result.resources == {"cpu": 8_000, "memory": 32 * GiB, "storage": 3840 * GiB}
    assert result.specs["cpu_limit_cgroup"] == 8_500
    assert result.specs["memory_limit_cgroup"] == 32 * GiB


def test_real_host(tmp_path: Path) -> None:
    result = discover(tmp_path, nvml=None)
    assert result.resources["cpu"] >= 1000
    assert result.resources["cpu"] % 10 == 0
    assert 0 < result.resources["memory"] <= psutil.virtual_memory().total
    assert result.resources["storage"] > 0
    assert result.specs["cpu_model"]
    assert result.specs["python"].startswith("3.")
    assert result.labels["type"] == "cpu"


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 5 Model B\n")
    assert cpu_model(x86) == "AMD EPYC 7763"
    assert cpu_model(arm) == "Raspberry Pi 5 Model B"
    assert cpu_model(tmp_path / "missing")  # falls back to platform, never empty


def cgroup_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_own_limits_cgroup_v2_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    cgroup_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "agents.slice/memory.max": "2147483648\n",
            "agents.slice/cpu.max": "max 100000\n",
            "agents.slice/a1.service/memory.max": "4294967296\n",
            "agents.slice/a1.service/cpu.max": "150000 100000\n",
            "proc": "0::/agents.slice/a1.service\n",
        },
    )
    assert own_cgroup_limits(tmp_path, tmp_path / "proc") == (1500, 2 * GiB)


def test_own_limits_cgroup_v1(tmp_path: Path) -> None:
    cgroup_tree(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "proc": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        },
    )
    assert own_cgroup_limits(tmp_path, tmp_path / "proc") == (2000, GiB)


def test_own_limits_host_path_invisible_in_container(tmp_path: Path) -> None:
    # Without a cgroup namespace /proc/self/cgroup names the host's path, but
    # the container sees its own cgroup at the mount's root.
    cgroup_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "memory.max": "1073741824\n",
            "cpu.max": "50000 100000\n",
            "proc": "0::/system.slice/docker-abc.scope\n",
        },
    )
    assert own_cgroup_limits(tmp_path, tmp_path / "proc") == (500, GiB)


def test_own_limits_unlimited_or_unreadable(tmp_path: Path) -> None:
    cgroup_tree(
        tmp_path,
        {"cgroup.controllers": "cpu memory", "memory.max": "max\n", "proc": "0::/\n"},
    )
    assert own_cgroup_limits(tmp_path, tmp_path / "proc") == (None, None)
    assert own_cgroup_limits(tmp_path, tmp_path / "no-proc") == (None, None)
    (tmp_path / "cpu.max").write_text("lots 100000\n")
    assert own_cgroup_limits(tmp_path, tmp_path / "proc") == (None, None)
