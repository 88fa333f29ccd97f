"""A task's record on disk (``<work_dir>/tasks/<task id>/task.json``): a
journal of JSON lines, each an object whose keys replace the same keys of
the lines before it.

Why a journal and not one document replaced by rename: a task's record
changes three times (prepared, running, exited), and writing a whole new
file each time made a new inode per change (tmp file, rename), 60-950 us
each on the development machine's ext4 (bench/README.md, issue 13). The
first line is created once; later changes, and the exit code the task's
shim adds (``protocol.SHIM``), are appended to the same inode.

Crash safety: every line is written by one ``write`` on a descriptor opened
with ``O_APPEND``, so a writer that dies leaves either its whole line or
none, and two writers (the agent and the shim) never interleave. A line cut
short (a crash of the machine mid-write) does not parse and is skipped; the
first line, which holds the assignment, is complete before the task can
run. Every appended line starts with a newline, so a line cut short
before it (by a crash, or a full disk while the agent runs on) cannot swallow
it, and a record an older agent wrote as one document without a newline
(read as the first line: old records stay readable) takes lines as well.

This module imports only the standard library: the fence reads records too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORD = "task.json"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def create(task_dir: Path, body: dict[str, Any]) -> None:
    """Write the record's first line (the record must not exist yet)."""
    _write(task_dir / RECORD, _CREATE, b"", body)


def append(task_dir: Path, changes: dict[str, Any]) -> None:
    """Add a line of changes to the record. It starts with a newline of its
    own: a line cut short before it (a crash, a full disk) is closed by it,
    never glued to it (the shim's line starts the same way)."""
    _write(task_dir / RECORD, _APPEND, b"\n", changes)


def _write(path: Path, flags: int, lead: bytes, body: dict[str, Any]) -> None:
    line = lead + (json.dumps(body, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, flags, 0o600)
    try:
        if os.write(fd, line) != len(line):
            raise OSError(f"short write to {path}")
    finally:
        os.close(fd)


def parse(data: bytes) -> dict[str, Any]:
    """The record as of its last line: every whole line merged in order.
    ``ValueError`` when the first line is not a whole JSON object."""
    lines = data.split(b"\n")
    first = json.loads(lines[0])
    if not isinstance(first, dict):
        raise ValueError("a task record starts with a JSON object")
    body: dict[str, Any] = first
    for line in lines[1:]:
        if not line:
            continue
        try:
            changes = json.loads(line)
        except ValueError:
            continue  # cut short by a crash: what it said never happened
        if isinstance(changes, dict):
            body.update(changes)
    return body


def read(task_dir: Path) -> dict[str, Any]:
    """The task's record (``OSError`` when it cannot be read, ``ValueError``
    when its first line is incomplete)."""
    return read_file(task_dir / RECORD)


def read_file(path: Path) -> dict[str, Any]:
    """A record at ``path`` (a reported task's, kept under another name)."""
    return parse(_read_bytes(path))


def _read_bytes(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
