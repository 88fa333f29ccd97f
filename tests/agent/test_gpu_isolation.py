"""GPU pinning that a task cannot widen (issue 17, finding 8): the mode each
host allows, and, as root, the kernel refusing a task the GPU nodes it was
not granted. No GPU here: fake ``/dev/nvidiaN`` nodes (major 195) stand in;
an allowed node answers ENXIO (no driver behind it), a fenced one EPERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.test_agent_runner import WATCHDOG, Harness, assignment
from apportion.agent import gpu_isolation
from apportion.agent.gpu_isolation import (
    GpuIsolation,
    GpuMode,
    detect_gpu_isolation,
    granted_minors,
)
from apportion.agent.isolation import SHARED, choose_isolation
from apportion.agent.limits import LimitMode, LimitSupport
from apportion.agent.runner import LocalTask, Runner

ROOT = os.geteuid() == 0
GPUS = [{"id": "0", "uuid": "GPU-a"}, {"id": "1", "uuid": "GPU-b"}]
OPEN_EACH = """
import errno, os, sys
for name in sys.argv[1:]:
    try:
        os.close(os.open(name, os.O_RDONLY))
        print(os.path.basename(name), "opened")
    except OSError as exc:
        print(os.path.basename(name), errno.errorcode[exc.errno])
"""


def test_a_tasks_gpus_are_found_by_device_minor() -> None:
    assert granted_minors(["0", "3"], {"0": 0, "3": 7}) == [0, 7]
    assert granted_minors(["2", "mig-1"], {}) == [2]


def test_without_cgroup_v2_or_root_only_the_environment_pins_gpus(tmp_path: Path) -> None:
    found = detect_gpu_isolation(LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test"),
                                 tmp_path / "stage", euid=1000,
                                 mountinfo=tmp_path / "no-mountinfo")
    assert found.spec() == {
        "mode": "env_only",
        "reason": "only CUDA_VISIBLE_DEVICES, which a task can widen: no cgroup v2 for device "
                  "programs: no cgroup v2 hierarchy is mounted (cgroup v1 only); hiding "
                  "device nodes needs root"}


@pytest.mark.skipif(not ROOT, reason="a private mount namespace needs root")
def test_root_without_a_device_program_hides_gpus_in_a_mount_namespace(tmp_path: Path) -> None:
    found = detect_gpu_isolation(LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test"),
                                 tmp_path / "stage", euid=0,
                                 mountinfo=tmp_path / "no-mountinfo")
    assert (found.mode, found.stage) == (GpuMode.MOUNT_NAMESPACE, tmp_path / "stage")
    assert found.reason == (
        "no cgroup v2 for device programs: no cgroup v2 hierarchy is mounted (cgroup v1 "
        "only); GPUs not granted are hidden from each task's /dev in a private mount "
        "namespace")


def test_a_device_program_that_cannot_be_attached_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_cgroup = tmp_path / "cg"
    not_cgroup.mkdir()

    def refuse(cgroup: Path, allowed: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(gpu_isolation, "attach_device_filter", refuse)
    found = detect_gpu_isolation(LimitSupport(LimitMode.CGROUP_V2, "test", not_cgroup),
                                 tmp_path / "stage", euid=1000)
    assert found.mode is GpuMode.ENV_ONLY
    assert found.reason == (
        f"only CUDA_VISIBLE_DEVICES, which a task can widen: cannot attach a device program "
        f"under {not_cgroup}: Operation not permitted; hiding device nodes needs root")
    assert list(not_cgroup.iterdir()) == []  # the probe cgroup went again


@pytest.fixture
def fake_dev() -> Iterator[Path]:
    """``/dev``-like nodes: two GPUs, nvidiactl, null, a directory and a
    link, under a directory task uids can reach."""
    if not ROOT:
        pytest.skip("making device nodes needs root")
    root = Path(tempfile.mkdtemp(prefix="apportion-dev-", dir="/tmp"))
    root.chmod(0o755)
    dev = root / "dev"
    dev.mkdir(mode=0o755)
    for name, major, minor in (("nvidia0", 195, 0), ("nvidia1", 195, 1),
                               ("nvidiactl", 195, 255), ("null", 1, 3)):
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))
        (dev / name).chmod(0o666)
    (dev / "pts").mkdir(mode=0o755)
    (dev / "fd").symlink_to("/proc/self/fd")
    try:
        yield dev
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(runner_dir: Path, gpu: GpuIsolation, command: list[str],
         gpus: list[dict[str, str]] | None, **runner_kwargs: object) -> LocalTask:
    runner_kwargs.setdefault("gpu_minors", {"0": 0, "1": 1})

    async def scenario() -> LocalTask:
        h = Harness(runner_dir)
        h.runner = Runner(runner_dir, "n1", WATCHDOG, h.exits.append, gpu=gpu,
                          **runner_kwargs)  # type: ignore[arg-type]
        h.runner.open()
        task = h.runner.prepare(assignment(command, gpus=gpus))
        h.runner.spawn(task)
        await h.until(lambda: bool(h.exits))
        h.runner.close()
        return h.exits[0]

    return asyncio.run(scenario())


def test_a_device_program_lets_a_task_open_only_its_own_gpu(
    tmp_path: Path, fake_dev: Path
) -> None:
    gpu = detect_gpu_isolation(LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test"), tmp_path / "s")
    if gpu.mode is not GpuMode.CGROUP_DEVICES:
        pytest.skip(f"no device programs on this host: {gpu.reason}")
    nodes = [str(fake_dev / n) for n in ("nvidia0", "nvidia1", "nvidiactl", "null")]
    task = _run(tmp_path, gpu, [sys.executable, "-c", OPEN_EACH, *nodes], GPUS[1:])
    assert (task.dir / "stdout.log").read_text().splitlines() == [
        "nvidia0 EPERM", "nvidia1 ENXIO", "nvidiactl ENXIO", "null opened"]
    assert task.cgroup is not None and not task.cgroup.exists()  # removed with the task
    none = _run(tmp_path / "none", gpu, [sys.executable, "-c", OPEN_EACH, *nodes], None)
    assert (none.dir / "stdout.log").read_text().splitlines() == [
        "nvidia0 EPERM", "nvidia1 EPERM", "nvidiactl ENXIO", "null opened"]
    # GPU nodes with nothing discovered (no NVML): no task may use them.
    assert gpu_isolation.nvidia_nodes(fake_dev) == [0, 1]
    blind = _run(tmp_path / "blind", gpu, [sys.executable, "-c", OPEN_EACH, *nodes], None,
                 gpu_minors={}, fence_gpus=True)
    assert (blind.dir / "stdout.log").read_text().splitlines() == [
        "nvidia0 EPERM", "nvidia1 EPERM", "nvidiactl ENXIO", "null opened"]


def test_a_mount_namespace_shows_a_task_only_its_own_gpu_even_under_its_own_uid(
    fake_dev: Path
) -> None:
    work = fake_dev.parent / "work"
    work.mkdir(mode=0o711)
    gpu = GpuIsolation(GpuMode.MOUNT_NAMESPACE, "test", dev=fake_dev, stage=work / "stage")
    (work / "stage").mkdir(mode=0o700)
    listing = ["sh", "-c", f"id -u; ls {fake_dev}"]
    iso = choose_isolation(None, "61720-61729") if shutil.which("setpriv") else SHARED
    task = _run(work, gpu, listing, GPUS[1:], isolation=iso)
    lines = (task.dir / "stdout.log").read_text().splitlines()
    assert lines[1:] == ["fd", "null", "nvidia1", "nvidiactl", "pts"]
    assert lines[0] == ("61720" if iso is not SHARED else "0")
    assert sorted(p.name for p in fake_dev.iterdir()) == [
        "fd", "null", "nvidia0", "nvidia1", "nvidiactl", "pts"]  # nothing changed outside
    assert list((work / "stage").iterdir()) == []


def test_a_weaker_mode_can_be_asked_for_and_an_unavailable_one_is_refused(
    tmp_path: Path
) -> None:
    watchdog = LimitSupport(LimitMode.RLIMIT_WATCHDOG, "test")
    forced = detect_gpu_isolation(watchdog, tmp_path / "s", want=GpuMode.ENV_ONLY)
    assert forced.spec() == {"mode": "env_only", "reason": "only CUDA_VISIBLE_DEVICES "
                             "(--gpu-isolation env_only), which a task can widen"}
    with pytest.raises(gpu_isolation.GpuIsolationError) as refused:
        detect_gpu_isolation(watchdog, tmp_path / "s", want=GpuMode.CGROUP_DEVICES, euid=1000,
                             mountinfo=tmp_path / "no-mountinfo")
    assert str(refused.value) == (
        "--gpu-isolation cgroup_devices: not on this host: only CUDA_VISIBLE_DEVICES, which a "
        "task can widen: no cgroup v2 for device programs: no cgroup v2 hierarchy is mounted "
        "(cgroup v1 only); hiding device nodes needs root")
    if ROOT:
        namespace = detect_gpu_isolation(watchdog, tmp_path / "s", want=GpuMode.MOUNT_NAMESPACE)
        assert namespace.reason == (
            "device programs not wanted (--gpu-isolation mount_namespace); GPUs not granted "
            "are hidden from each task's /dev in a private mount namespace")
