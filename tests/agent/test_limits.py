"""Limit enforcement: cgroup v2 logic on fake cgroup trees, the real cgroup v2
hierarchy where this machine lets us write it, and the memory watchdog
against real processes."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from apportion.agent import limits
from apportion.agent.limits import (
    LimitMode,
    LimitSupport,
    MemoryWatchdog,
    Overrun,
    add_pid,
    cgroup2_mounts,
    cgroup_memory,
    cpu_max,
    create_task_cgroup,
    detect_limits,
    kill_tree,
    move_processes,
    remove,
    task_preexec,
)
from apportion.exceptions import InvalidInput

MiB = 2**20

# ---------------------------------------------------------------- fake cgroupfs


def plain_write(path: Path, text: str) -> None:
    """Stands in for the kernel: a fake tree's interface files are plain files."""
    path.write_text(text)


@pytest.fixture
def fake_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(limits, "_write", plain_write)
    files = {
        "cgroup.controllers": "cpuset cpu io memory hugetlb pids",
        "cgroup.subtree_control": "cpu memory pids",
        "agents.slice/cgroup.controllers": "cpu io memory pids",
        "agents.slice/cgroup.subtree_control": "cpu memory",
        "agents.slice/a1.service/cgroup.controllers": "cpu io memory pids",
        "agents.slice/a1.service/cgroup.subtree_control": "",
        "agents.slice/a1.service/cgroup.procs": "4242\n4243\n",
        "mountinfo": (
            "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n"
            f"26 25 0:23 / {tmp_path} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        ),
        "self-cgroup": "0::/agents.slice/a1.service\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def own(fake: Path, **kwargs: object) -> LimitSupport:
    return detect_limits(
        mountinfo=fake / "mountinfo",
        proc_cgroup=fake / "self-cgroup",
        **kwargs,  # type: ignore[arg-type]
    )


def test_detect_own_delegated_cgroup(fake_fs: Path) -> None:
    service = fake_fs / "agents.slice/a1.service"
    assert own(fake_fs) == LimitSupport(
        LimitMode.CGROUP_V2, f"cgroup v2: cpu and memory delegated at {service}", service
    )
    assert (service / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert [p.name for p in service.iterdir() if p.is_dir()] == []  # probe removed


def test_detect_configured_parent_already_enabled(fake_fs: Path) -> None:
    parent = fake_fs / "agents.slice"
    support = detect_limits(parent)
    assert support.mode is LimitMode.CGROUP_V2
    assert support.parent == parent
    assert (parent / "cgroup.subtree_control").read_text() == "cpu memory"  # left alone


def test_detect_moves_own_processes_to_a_leaf_when_busy(
    fake_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, str]] = []
    busy = [True]

    def kernel(path: Path, text: str) -> None:
        # cgroup v2 refuses to enable controllers for the children of a
        # cgroup that has processes in it itself: EBUSY, until they move.
        if path.name == "cgroup.subtree_control" and busy:
            busy.pop()
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        writes.append((str(path.relative_to(fake_fs)), text))
        plain_write(path, text)

    monkeypatch.setattr(limits, "_write", kernel)
    assert own(fake_fs).mode is LimitMode.CGROUP_V2
    assert writes == [
        ("agents.slice/a1.service/apportion-agent/cgroup.procs", "4242"),
        ("agents.slice/a1.service/apportion-agent/cgroup.procs", "4243"),
        ("agents.slice/a1.service/cgroup.subtree_control", "+cpu +memory"),
    ]


def test_configured_parent_is_never_rearranged(
    fake_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(path: Path, text: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(limits, "_write", busy)
    parent = fake_fs / "agents.slice/a1.service"
    assert detect_limits(parent) == LimitSupport(
        LimitMode.RLIMIT_WATCHDOG,
        f"cannot enable cpu, memory in {parent}: Device or resource busy",
    )


def test_fallback_without_cgroup_v2(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    support = detect_limits(mountinfo=mountinfo, proc_cgroup=tmp_path / "x")
    assert support == LimitSupport(
        LimitMode.RLIMIT_WATCHDOG, "no cgroup v2 hierarchy is mounted (cgroup v1 only)"
    )


def test_fallback_when_controllers_are_missing(fake_fs: Path) -> None:
    (fake_fs / "agents.slice/a1.service/cgroup.controllers").write_text("hugetlb\n")
    service = fake_fs / "agents.slice/a1.service"
    assert own(fake_fs) == LimitSupport(
        LimitMode.RLIMIT_WATCHDOG,
        f"controller(s) cpu, memory not available in {service} (cgroup.controllers: hugetlb)",
    )


def test_fallback_when_not_in_a_v2_hierarchy(fake_fs: Path) -> None:
    (fake_fs / "self-cgroup").write_text("4:memory:/x\n")
    assert own(fake_fs).reason == "this process is in no cgroup v2 hierarchy"


def test_fallback_when_own_cgroup_is_not_visible(fake_fs: Path) -> None:
    (fake_fs / "self-cgroup").write_text("0::/elsewhere.slice\n")
    assert own(fake_fs).reason == f"own cgroup /elsewhere.slice is not visible under {fake_fs}"


def test_fallback_for_a_configured_parent_that_is_no_cgroup(tmp_path: Path) -> None:
    assert detect_limits(tmp_path).reason == (
        f"{tmp_path} is not a cgroup v2 directory (no cgroup.controllers)"
    )


def test_fallback_when_children_cannot_be_created(fake_fs: Path) -> None:
    service = fake_fs / "agents.slice/a1.service"
    (service / f"apportion-probe-{os.getpid()}").write_text("in the way")
    assert own(fake_fs).reason == f"cannot create a cgroup under {service}: File exists"


def test_mountinfo_parsing(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "24 30 0:21 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n"
        "25 24 0:22 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n"
        "26 24 0:23 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n"
        "27 30 0:24 / /mnt/my\\040cgroups rw - cgroup2 none rw\n"
    )
    assert cgroup2_mounts(mountinfo) == [Path("/sys/fs/cgroup/unified"), Path("/mnt/my cgroups")]
    assert cgroup2_mounts(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("millicores", "line"),
    [
        (None, "max 100000"),
        (0, "max 100000"),
        (1, "1000 100000"),  # the kernel's smallest quota
        (250, "25000 100000"),
        (1500, "150000 100000"),
        (64_000, "6400000 100000"),
    ],
)
def test_cpu_max(millicores: int | None, line: str) -> None:
    assert cpu_max(millicores) == line


def test_create_task_cgroup_writes_limits(fake_fs: Path) -> None:
    parent = fake_fs / "agents.slice/a1.service"
    path = create_task_cgroup("job-7.0", 1500, 50 * MiB, parent=parent)
    assert path == parent / "task-job-7.0"
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert (path / "memory.max").read_text() == "52428800"
    # Optional files are written only where the kernel offers them.
    assert not (path / "memory.swap.max").exists()


def test_create_task_cgroup_unlimited(fake_fs: Path) -> None:
    path = create_task_cgroup("t", None, None, parent=fake_fs)
    assert (path / "cpu.max").read_text() == "max 100000"
    assert (path / "memory.max").read_text() == "max"


def test_create_task_cgroup_undone_when_a_limit_is_refused(
    fake_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []

    def refuse_memory(path: Path, text: str) -> None:
        # Record instead of writing, so the fake directory stays as empty as
        # a cgroupfs directory looks to rmdir.
        if path.name == "memory.max":
            raise OSError(errno.EINVAL, "Invalid argument")
        written.append(path.name)

    monkeypatch.setattr(limits, "_write", refuse_memory)
    with pytest.raises(OSError, match="Invalid argument"):
        create_task_cgroup("t", 1000, MiB, parent=fake_fs)
    assert written == ["cpu.max"]
    assert not (fake_fs / "task-t").exists()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "x" * 129, ".hidden"])
def test_task_cgroup_names_are_checked(fake_fs: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="task cgroup name"):
        create_task_cgroup(name, 1000, MiB, parent=fake_fs)


def test_cgroup_memory(fake_fs: Path) -> None:
    task = fake_fs / "task-t"
    task.mkdir()
    (task / "memory.current").write_text("1234\n")
    (task / "memory.peak").write_text("52428800\n")
    (task / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    assert cgroup_memory(task) == {"current": 1234, "peak": 52_428_800, "oom_kills": 1}
    assert cgroup_memory(fake_fs / "gone") == {"current": None, "peak": None, "oom_kills": None}


# ---------------------------------------------------------------- real cgroup v2


def test_detect_on_this_machine_never_raises() -> None:
    # relocate=False: a test must not move the processes of the cgroup it
    # runs in (in a container that would be every process).
    support = detect_limits(relocate=False)
    assert support.mode in (LimitMode.CGROUP_V2, LimitMode.RLIMIT_WATCHDOG)
    assert support.reason
    assert (support.parent is not None) == (support.mode is LimitMode.CGROUP_V2)


@pytest.fixture
def real_cgroup() -> Iterator[Path]:
    """A scratch cgroup in this machine's cgroup v2 hierarchy, under our own
    cgroup; skipped where there is none we may write."""
    found = limits.own_cgroup(limits.MOUNTINFO, limits.PROC_SELF_CGROUP)
    if isinstance(found, str):
        pytest.skip(f"no cgroup v2 here: {found}")
    path = found / f"apportion-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cgroup v2 at {found} is not writable: {exc.strerror}")
    try:
        yield path
    finally:
        remove(path)


def sleeper(**kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], **kwargs)  # type: ignore[call-overload, no-any-return]


def cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


def test_real_add_pid_and_remove_kills(real_cgroup: Path) -> None:
    child = sleeper()
    try:
        add_pid(real_cgroup, child.pid)
        assert cgroup_of(child.pid).endswith(f"/{real_cgroup.name}")
        assert (real_cgroup / "cgroup.procs").read_text().split() == [str(child.pid)]
        remove(real_cgroup)
        assert child.wait(timeout=10) == -9
        assert not real_cgroup.exists()
        remove(real_cgroup)  # idempotent
    finally:
        child.kill()
        child.wait()


def test_real_move_processes_to_a_leaf(real_cgroup: Path) -> None:
    child = sleeper()
    try:
        add_pid(real_cgroup, child.pid)
        assert move_processes(real_cgroup, real_cgroup / "leaf") == [child.pid]
        assert cgroup_of(child.pid).endswith(f"/{real_cgroup.name}/leaf")
        remove(real_cgroup)  # nested cgroups go first
        assert child.wait(timeout=10) == -9
    finally:
        child.kill()
        child.wait()


def test_real_task_preexec_enters_the_cgroup_before_exec(real_cgroup: Path) -> None:
    probe = "import os; print(os.getsid(0) == os.getpid(), open('/proc/self/cgroup').read())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        preexec_fn=task_preexec(real_cgroup),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.startswith("True ")
    assert f"0::{cgroup_of(os.getpid()).rstrip('/')}/{real_cgroup.name}\n" in out


# ---------------------------------------------------------------- fallback


def test_task_preexec_new_session_no_core_dumps() -> None:
    probe = (
        "import os, resource; "
        "print(os.getsid(0) == os.getpid(), resource.getrlimit(resource.RLIMIT_CORE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        preexec_fn=task_preexec(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == "True (0, 0)\n"
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY


ALLOCATE = (
    "import sys, time\n"
    "block = b'x' * (200 << 20)  # touched, so resident\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
SPAWN = (
    "import subprocess, sys, time\n"
    f"subprocess.Popen([sys.executable, '-c', {ALLOCATE!r}])\n"
    "time.sleep(60)\n"
)


def start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=task_preexec(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            kill_tree(psutil.Process(proc.pid))
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_watchdog_kills_a_task_over_its_memory(procs: list[subprocess.Popen[str]]) -> None:
    proc = start(ALLOCATE)
    procs.append(proc)
    dog = MemoryWatchdog()
    dog.watch("t1", proc.pid, 50 * MiB)
    (overrun,) = dog.check()
    assert (overrun.task, overrun.pid, overrun.limit, overrun.killed) == (
        "t1",
        proc.pid,
        50 * MiB,
        True,
    )
    assert overrun.peak_rss >= 200 * MiB
    assert proc.wait(timeout=10) == -9
    assert dog.check() == []  # reported once, then forgotten
    assert dog.peak("t1") is None


def test_watchdog_kills_the_whole_tree(procs: list[subprocess.Popen[str]]) -> None:
    proc = start(SPAWN)
    procs.append(proc)
    (grandchild,) = psutil.Process(proc.pid).children()
    dog = MemoryWatchdog()
    dog.watch("tree", proc.pid, 50 * MiB)
    (overrun,) = dog.check()
    assert overrun.killed is True
    assert overrun.peak_rss >= 200 * MiB
    assert proc.wait(timeout=10) == -9
    _gone, alive = psutil.wait_procs([grandchild], timeout=10)
    assert alive == [] or all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


def test_watchdog_leaves_a_task_within_its_memory(procs: list[subprocess.Popen[str]]) -> None:
    proc = start(ALLOCATE)
    procs.append(proc)
    dog = MemoryWatchdog()
    dog.watch("t2", proc.pid, 1024 * MiB)
    assert dog.check() == []
    peak = dog.peak("t2")
    assert peak is not None and peak >= 200 * MiB
    assert proc.poll() is None
    assert dog.forget("t2") == peak
    assert dog.forget("t2") is None


def test_watchdog_report_only(procs: list[subprocess.Popen[str]]) -> None:
    proc = start(ALLOCATE)
    procs.append(proc)
    dog = MemoryWatchdog(kill=False)
    dog.watch("t3", proc.pid, 50 * MiB)
    (overrun,) = dog.check()
    assert overrun.killed is False
    assert proc.poll() is None


def test_watchdog_thread_calls_back(procs: list[subprocess.Popen[str]]) -> None:
    proc = start(ALLOCATE)
    procs.append(proc)
    seen: list[Overrun] = []
    fired = threading.Event()

    def on_overrun(overrun: Overrun) -> None:
        seen.append(overrun)
        fired.set()

    dog = MemoryWatchdog()
    dog.watch("t4", proc.pid, 50 * MiB)
    dog.start(interval_s=0.05, on_overrun=on_overrun)
    try:
        assert fired.wait(timeout=20)
    finally:
        dog.stop()
    assert [o.task for o in seen] == ["t4"]
    assert proc.wait(timeout=10) == -9


def test_watchdog_ignores_a_task_that_already_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dog = MemoryWatchdog()
    dog.watch("done", proc.pid, MiB)
    proc.wait()
    assert dog.check() == []
    assert dog.forget("done") == 0
