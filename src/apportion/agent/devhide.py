"""Run a command in a private mount namespace whose ``/dev`` lacks the
NVIDIA GPUs the task was not granted (the ``mount_namespace`` GPU mode).

    python -I -S devhide.py --dev /dev --stage DIR --allow 0,3 -- COMMAND...
    python -I -S devhide.py --probe

Run as root by the task's shim, before it drops to the task's uid. Standard
library only (it runs with ``-S``, without site-packages, for a fast start).

The new ``/dev`` is a tmpfs holding a bind mount of every entry of the real
one except the character devices of major 195 (``/dev/nvidiaN``) whose minor
is not granted; ``nvidiactl`` (255) and ``nvidia-modeset`` (254) stay, as do
``nvidia-uvm`` and ``nvidia-caps`` (other majors). A hidden GPU's node does
not exist for the task, as in a container given some GPUs. The mounts are
private to the task: nothing changes outside. An unprivileged task cannot
undo them (mounts inherited into a user namespace are locked). Any failure
stops the task (exit 126) rather than run it unfenced.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

NVIDIA_MAJOR = 195
SHARED_MINORS = (254, 255)
CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]),
           f"mount {target}")


def private_namespace() -> None:
    """A mount namespace of our own, whose changes never propagate out."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def hidden(path: str, allowed: set[int]) -> bool:
    """An NVIDIA GPU node whose minor is not granted."""
    st = os.lstat(path)
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != NVIDIA_MAJOR:
        return False
    minor = os.minor(st.st_rdev)
    return minor not in allowed and minor not in SHARED_MINORS


def filtered_dev(dev: str, stage: str, allowed: set[int]) -> None:
    """Replace ``dev`` (in this namespace) by a copy without hidden GPUs."""
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID, "mode=755")
    for name in sorted(os.listdir(dev)):
        source, target = os.path.join(dev, name), os.path.join(stage, name)
        if hidden(source, allowed):
            continue
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
            continue
        if os.path.isdir(source):
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _mount(source, target, None, MS_BIND | MS_REC)
    _mount(stage, dev, None, MS_MOVE)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--probe"]:
        private_namespace()
        return 0
    try:
        split = argv.index("--")
        opts = dict(zip(argv[1:split:2], argv[2:split:2], strict=True))
        dev, stage = opts["--dev"], opts["--stage"]
        allowed = {int(m) for m in opts.get("--allow", "").split(",") if m}
        command = argv[split + 1:]
    except (ValueError, KeyError):
        print("usage: devhide.py --dev DIR --stage DIR --allow M,N -- COMMAND...",
              file=sys.stderr)
        return 2
    try:
        private_namespace()
        filtered_dev(dev, stage, allowed)
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"apportion: cannot hide the GPUs not granted: {exc}", file=sys.stderr)
    return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv))
