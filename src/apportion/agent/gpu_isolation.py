"""Keeping a task to the GPUs it was granted.

``CUDA_VISIBLE_DEVICES`` is a request to CUDA, not a fence: a task may set it
to anything. Three modes; the node reports which one it runs
(``specs.gpu_isolation``), as it reports its limit mode:

``cgroup_devices``
    Each task runs in a cgroup v2 cgroup with a ``BPF_PROG_TYPE_CGROUP_DEVICE``
    program attached (cgroup v2's device controller is such a program, as in
    runc and Slurm's ``ConstrainDevices``): opening ``/dev/nvidiaN`` for a GPU
    not granted fails with EPERM, whatever the task's uid or environment.
    The program allows every device except NVIDIA GPU nodes (major 195) whose
    minor was not granted; ``nvidiactl``/``nvidia-modeset`` and the
    ``nvidia-uvm``/``nvidia-caps`` majors stay open. The cgroup is the task's
    limits cgroup in the ``cgroup_v2`` limit mode; otherwise (a cgroup v1
    host with a v2 hierarchy mounted, as here) a cgroup made for the task in
    the agent's own v2 cgroup, which also lets the agent kill the whole task
    at once. Needs root (CAP_BPF and CAP_SYS_ADMIN).
``mount_namespace``
    When no device program can be attached but the agent is root: the task
    starts in a mount namespace of its own whose ``/dev`` lacks the GPU nodes
    not granted (``devhide.py``). Only a fence while the task runs
    unprivileged (``--task-user``): root in the task could mount them back.
``env_only``
    Neither is available (an unprivileged agent): only
    ``CUDA_VISIBLE_DEVICES``, which a task can widen.

A GPU's node is ``/dev/nvidia<minor>``; the minor is NVML's
``nvmlDeviceGetMinorNumber`` (discovery records it as ``attrs.minor``), which
usually but not always equals the index. MIG instances are not fenced apart
(their capabilities live under ``/dev/nvidia-caps``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from apportion.agent import limits
from apportion.agent.limits import LimitMode, LimitSupport

NVIDIA_MAJOR = 195
SHARED_MINORS = (254, 255)
"""``nvidia-modeset`` and ``nvidiactl``: every CUDA process opens the latter."""
DEVHIDE = Path(__file__).with_name("devhide.py")

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_DEVCG_DEV_CHAR = 2
_ATTR_SIZE = 128


class GpuMode(StrEnum):
    CGROUP_DEVICES = "cgroup_devices"
    MOUNT_NAMESPACE = "mount_namespace"
    ENV_ONLY = "env_only"


class GpuIsolationError(ValueError):
    """A GPU mode asked for (``--gpu-isolation``) that this host cannot give."""


@dataclass(frozen=True, slots=True)
class GpuIsolation:
    mode: GpuMode
    reason: str
    cgroup_parent: Path | None = None
    """``cgroup_devices`` outside the ``cgroup_v2`` limit mode: where the
    tasks' device cgroups are made."""
    dev: Path = Path("/dev")
    stage: Path | None = None
    """``mount_namespace``: an empty directory of the agent's to build the
    task's ``/dev`` on (it stays empty outside the task's namespace)."""

    def spec(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "reason": self.reason}

    def hide_prefix(self, allowed: Iterable[int]) -> list[str]:
        """``mount_namespace``: the command that runs the rest with a ``/dev``
        showing only the ``allowed`` GPU minors."""
        assert self.stage is not None
        minors = ",".join(str(m) for m in sorted(set(allowed)))
        return [sys.executable, "-I", "-S", str(DEVHIDE), "--dev", str(self.dev),
                "--stage", str(self.stage), "--allow", minors, "--"]


ENV_ONLY = GpuIsolation(GpuMode.ENV_ONLY, "not configured")


def detect_gpu_isolation(support: LimitSupport, stage: Path, *, want: GpuMode | None = None,
                         euid: int | None = None, mountinfo: Path = limits.MOUNTINFO,
                         proc_cgroup: Path = limits.PROC_SELF_CGROUP) -> GpuIsolation:
    """The strongest GPU fence this host allows the agent, or the one asked
    for (``want``: a weaker one, to compare on a GPU machine, say);
    ``GpuIsolationError`` when the host cannot give that one."""
    if want is GpuMode.ENV_ONLY:
        return GpuIsolation(GpuMode.ENV_ONLY, "only CUDA_VISIBLE_DEVICES (--gpu-isolation "
                            "env_only), which a task can widen")
    found = _strongest(support, stage, want, os.geteuid() if euid is None else euid,
                       mountinfo, proc_cgroup)
    if want is not None and found.mode is not want:
        raise GpuIsolationError(f"--gpu-isolation {want.value}: not on this host: "
                                f"{found.reason}")
    return found


def _strongest(support: LimitSupport, stage: Path, want: GpuMode | None, euid: int,
               mountinfo: Path, proc_cgroup: Path) -> GpuIsolation:
    if want is GpuMode.MOUNT_NAMESPACE:
        reasons = ["device programs not wanted (--gpu-isolation mount_namespace)"]
    else:
        found = _device_programs(support, mountinfo, proc_cgroup)
        if isinstance(found, GpuIsolation):
            return found
        reasons = [found]
    if euid == 0:
        problem = probe_namespace()
        if problem is None:
            stage.mkdir(mode=0o700, exist_ok=True)
            return GpuIsolation(GpuMode.MOUNT_NAMESPACE,
                                f"{reasons[0]}; GPUs not granted are hidden from each "
                                "task's /dev in a private mount namespace", stage=stage)
        reasons.append(problem)
    else:
        reasons.append("hiding device nodes needs root")
    return GpuIsolation(GpuMode.ENV_ONLY,
                        "only CUDA_VISIBLE_DEVICES, which a task can widen: "
                        + "; ".join(reasons))


def _device_programs(support: LimitSupport, mountinfo: Path,
                     proc_cgroup: Path) -> GpuIsolation | str:
    """``cgroup_devices`` if a program attaches under the tasks' cgroup
    parent, else why not."""
    if support.mode is LimitMode.CGROUP_V2 and support.parent is not None:
        parent: Path | str = support.parent
    else:
        parent = limits.own_cgroup(mountinfo, proc_cgroup)
    if isinstance(parent, str):
        return f"no cgroup v2 for device programs: {parent}"
    problem = probe_device_filter(parent)
    if problem is not None:
        return problem
    return GpuIsolation(GpuMode.CGROUP_DEVICES,
                        f"a device program on each task's cgroup under {parent}",
                        None if support.mode is LimitMode.CGROUP_V2 else parent)


def probe_namespace() -> str | None:
    """Whether a child can make a private mount namespace (None: it can)."""
    try:
        done = subprocess.run([sys.executable, "-I", "-S", str(DEVHIDE), "--probe"],
                              capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run the namespace probe: {exc}"
    if done.returncode != 0:
        return f"no private mount namespace: {done.stderr.decode(errors='replace')[-200:]}"
    return None


# ---------------------------------------------------------------- the device program


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W = 0x61  # dst = *(u32 *)(src + off)
_AND_K = 0x54  # (u32) dst &= imm
_JNE_K = 0x55
_JEQ_K = 0x15
_MOV_K = 0xB7
_EXIT = 0x95


def device_program(allowed: Iterable[int]) -> bytes:
    """eBPF for ``BPF_PROG_TYPE_CGROUP_DEVICE``: allow (1) everything but
    character devices of major 195 whose minor is neither shared nor in
    ``allowed``. ``ctx`` is ``struct bpf_cgroup_dev_ctx {u32 access_type
    (type in the low 16 bits); u32 major; u32 minor}``."""
    checks = [(_JNE_K, 2, _DEVCG_DEV_CHAR), (_JNE_K, 4, NVIDIA_MAJOR)]
    checks += [(_JEQ_K, 5, m) for m in (*SHARED_MINORS, *sorted(set(allowed)))]
    code = [_insn(_LDX_W, 2, 1, 0), _insn(_AND_K, 2, imm=0xFFFF),
            _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8)]
    for i, (op, reg, imm) in enumerate(checks):
        # Each test jumps over the rest and the two "deny" instructions.
        code.append(_insn(op, reg, imm=imm, off=len(checks) - i - 1 + 2))
    code += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT), _insn(_MOV_K, 0, imm=1), _insn(_EXIT)]
    return b"".join(code)


def _bpf(command: int, attr: bytes) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) on {platform.machine()} is not wired up")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    result = int(libc.syscall(ctypes.c_long(number), ctypes.c_long(command), buf,
                              ctypes.c_uint(_ATTR_SIZE)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf: {os.strerror(err)}")
    return result


def attach_device_filter(cgroup: Path, allowed: Iterable[int]) -> None:
    """Load the program for ``allowed`` and attach it to ``cgroup`` (kept
    alongside any program an ancestor has: all must allow). The attachment
    holds the program; it goes when the cgroup is removed."""
    program = device_program(allowed)
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    load = struct.pack("<IIQQIIQ", _BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 0, 0, 0)
    prog = _bpf(_BPF_PROG_LOAD, load)
    try:
        target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(_BPF_PROG_ATTACH, struct.pack("<IIII", target, prog, _BPF_CGROUP_DEVICE,
                                               _BPF_F_ALLOW_MULTI))
        finally:
            os.close(target)
    finally:
        os.close(prog)


def probe_device_filter(parent: Path) -> str | None:
    """Attach a program to a probe cgroup under ``parent`` (None: it worked)."""
    probe = parent / f"apportion-devprobe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {parent}: {exc.strerror}"
    problem = None
    try:
        attach_device_filter(probe, [])
    except OSError as exc:
        problem = f"cannot attach a device program under {parent}: {exc.strerror}"
    try:
        probe.rmdir()
    except OSError as exc:
        problem = problem or f"cannot remove probe cgroup {probe}: {exc.strerror}"
    return problem


def nvidia_nodes(dev: Path = Path("/dev")) -> list[int]:
    """Minors of the NVIDIA GPU nodes in ``dev``: a node may have them even
    when discovery found no GPU (no NVML), and tasks must not use them then."""
    found = []
    try:
        entries = list(os.scandir(dev))
    except OSError:
        return []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == NVIDIA_MAJOR:
            minor = os.minor(st.st_rdev)
            if minor not in SHARED_MINORS:
                found.append(minor)
    return sorted(found)


def granted_minors(granted: Sequence[str], minors: Mapping[str, int]) -> list[int]:
    """The device minors of a task's GPUs: discovery's ``attrs.minor``, else
    the index itself (declared GPUs, drivers that number them alike)."""
    out = []
    for device_id in granted:
        if device_id in minors:
            out.append(minors[device_id])
        elif device_id.isdigit():
            out.append(int(device_id))
    return out
