"""The agent's token: where it may come from, and keeping it out of ``/proc``.

A token on the command line is in ``/proc/<pid>/cmdline``, which every local
user can read, so ``--token`` is refused. The agent takes its token from a
file only its user can read (``--token-file``, ``APPORTION_TOKEN_FILE``), or
from ``APPORTION_TOKEN`` in its environment, which it then scrubs:

- the variable is removed from ``os.environ`` (so no child inherits it);
- its bytes in the process's initial environment block, which is what
  ``/proc/<pid>/environ`` shows, are overwritten with NULs (the kernel reads
  that file from the process's memory, so ``unsetenv`` alone leaves it
  there). The variable's name goes with it.
- the process marks itself non-dumpable (``PR_SET_DUMPABLE`` 0), so
  ``/proc/<pid>/environ``, ``/proc/<pid>/mem`` and ``ptrace`` are root's
  only, even for processes of the agent's own uid.

What stays visible: between the agent's start and the scrub (the time to
import Python and the CLI, about half a second), a process of the agent's uid
or root can read ``/proc/<pid>/environ``; an environment variable is also
seen by whatever started the agent (systemd's ``EnvironmentFile``, a
container runtime's inspect). A token file has neither window, which is why
``apportion up`` uses one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from collections.abc import Iterable
from pathlib import Path

TOKEN_ENV = "APPORTION_TOKEN"
TOKEN_FILE_ENV = "APPORTION_TOKEN_FILE"
SECRET_ENV = (TOKEN_ENV, TOKEN_FILE_ENV, "APPORTION_ADMIN_TOKEN")
PROC_ENVIRON = Path("/proc/self/environ")
PROC_STAT = Path("/proc/self/stat")
PR_SET_DUMPABLE = 4
MAX_TOKEN_FILE = 4096


class TokenError(ValueError):
    """A token source the agent will not use, and what to do instead."""


def read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file of this user (or root) that no
    group or other user may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenError(f"--token-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"--token-file {path}: not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise TokenError(f"--token-file {path}: owned by uid {st.st_uid}, "
                             f"not by this user (uid {os.geteuid()})")
        if st.st_mode & 0o077:
            raise TokenError(f"--token-file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets "
                             f"others read it; chmod 600 {path}")
        text = fh.read(MAX_TOKEN_FILE + 1).decode("utf-8", "replace").strip()
    if not text or len(text) > MAX_TOKEN_FILE:
        raise TokenError(f"--token-file {path}: expected one token")
    return text


def take_token(token_file: Path | None) -> str | None:
    """The agent's token from ``token_file``, ``APPORTION_TOKEN_FILE`` or
    ``APPORTION_TOKEN``, in that order; the secret variables are scrubbed
    from this process whichever was used."""
    from_env = os.environ.get(TOKEN_ENV)
    file_env = os.environ.get(TOKEN_FILE_ENV)
    left = scrub_environ(SECRET_ENV)
    if left:
        raise TokenError(f"cannot remove {', '.join(left)} from /proc/self/environ")
    if token_file is not None:
        return read_token_file(token_file)
    if file_env:
        return read_token_file(Path(file_env))
    return from_env or None


def scrub_environ(names: Iterable[str], environ: Path = PROC_ENVIRON) -> list[str]:
    """Remove ``names`` from ``os.environ`` and from the initial environment
    block; the names ``/proc/self/environ`` still shows (none on Linux)."""
    names = list(names)
    for name in names:
        os.environ.pop(name, None)  # also unsetenv(3)
    prefixes = tuple(f"{name}=".encode() for name in names)
    with contextlib.suppress(OSError, ValueError):
        _wipe_initial_environ(prefixes)
    try:
        shown = environ.read_bytes().split(b"\0")
    except OSError:
        return []
    return sorted({n for n, p in zip(names, prefixes, strict=True)
                   if any(entry.startswith(p) for entry in shown)})


def _wipe_initial_environ(prefixes: tuple[bytes, ...]) -> None:
    """NUL out the entries starting with ``prefixes`` in the memory the
    kernel shows as ``/proc/self/environ`` (``env_start``..``env_end`` in
    ``/proc/self/stat``, fields 50 and 51)."""
    text = PROC_STAT.read_text()
    fields = text[text.rindex(")") + 2:].split()
    start, end = int(fields[47]), int(fields[48])
    if not 0 < start < end:
        return
    block = ctypes.string_at(start, end - start)
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefixes):
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1


def forbid_dumping() -> bool:
    """Make this process non-dumpable: its ``/proc`` files and memory become
    root's alone. False where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
