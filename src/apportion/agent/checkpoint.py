"""Checkpoints: the agent packs a task's checkpoint directory into a tar and
unpacks one into the directory a resumed task starts from, itself.

Why not ``tarfile``'s extraction: a checkpoint comes back from the server, and
whoever controls its bytes (a task that wrote a tar, an agent token in the
wrong hands) controls what an extractor does. On Python 3.11.7, extraction
with ``filter="data"`` follows a chain of symlinks longer than ``PATH_MAX``
out of the target directory (CVE-2025-4517); older tarfile header parsing is
also open to a regular-expression blow-up on crafted pax headers
(CVE-2024-6232). So the agent depends on neither:

- **Packing** never uses a tar a task wrote. It walks the checkpoint
  directory through directory file descriptors, opening every entry with
  ``O_NOFOLLOW | O_NONBLOCK``: a symlink the task planted cannot make the
  agent read a file the task could not, and a FIFO cannot block it. Only
  regular files and directories are carried (and, when tasks run under
  another uid, only those that uid owns); links, devices, FIFOs and sockets
  are left out and named in the result. The archive may not pass ``limit``.
- **Unpacking** reads the archive with the small reader below, which accepts
  only regular files and directories, in ustar, GNU (long names) or pax
  (``path``, ``size``) form, and refuses everything else: symbolic and hard
  links, devices, FIFOs, sparse files, absolute names, ``..``, a name used
  twice. Every member is written through directory descriptors opened with
  ``O_NOFOLLOW``, created with ``O_EXCL``, and its path, once resolved, must
  lie inside the target: a link planted in the target while the agent
  writes cannot send a write elsewhere either. A refused archive leaves
  nothing behind.
- **Sizes** are counted while streaming, never after reading a whole file
  into memory: packing stops at ``limit``, downloads and uploads stream from
  and to disk in ``CHUNK`` pieces.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
CHUNK = 1 << 20
END = b"\0" * (2 * BLOCK)
MAX_MEMBERS = 100_000
MAX_META = 1 << 20
"""The largest pax header or GNU long name accepted: names are short."""
DEFAULT_MAX = 1 << 30

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_TYPES = (b"0", b"\0")
_TYPE_NAMES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device",
               b"4": "block device", b"6": "FIFO", b"7": "contiguous file",
               b"S": "sparse file", b"K": "long link name", b"g": "global pax header"}


class CheckpointError(Exception):
    """A checkpoint that is not packed or not unpacked, and why."""


class CheckpointTooLarge(CheckpointError):
    """Over the per-task limit."""


class CheckpointRefused(CheckpointError):
    """An archive with a member the agent does not write (a link, a device,
    a name outside the target, ...), or malformed."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a task's files belong to when tasks run under another uid."""

    uid: int
    gid: int


@dataclass
class Packed:
    path: Path
    size: int
    files: int = 0
    dirs: int = 0
    skipped: list[str] = field(default_factory=list)
    """Entries left out: links, devices, FIFOs, sockets, files of another uid."""


# ---------------------------------------------------------------- packing


def pack(source: Path, out: Path, limit: int, *, owner: Owner | None = None) -> Packed | None:
    """Write ``source``'s regular files and directories to a new tar at
    ``out``; None when there is nothing to carry. ``source``'s parent is the
    agent's (trusted); ``source`` itself and all below it are the task's.
    Raises ``CheckpointTooLarge`` past ``limit`` bytes (``out`` removed)."""
    try:
        root = os.open(source, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # the task put a link there
            raise CheckpointRefused(f"{source} is not a directory but a link or a file") \
                from None
        raise
    fd = os.open(out, _CREATE_FLAGS, 0o600)
    packed = Packed(out, 0)
    try:
        with os.fdopen(fd, "wb") as sink:
            writer = _Writer(sink, limit, packed)
            _pack_dir(root, "", writer, owner, packed)
            writer.finish()
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        os.close(root)
    if packed.files + packed.dirs == 0:
        out.unlink(missing_ok=True)
        return None
    return packed


class _Writer:
    """A tar stream with an exact running size, so the limit is checked
    before a member is written, not after."""

    def __init__(self, sink: BinaryIO, limit: int, packed: Packed) -> None:
        self.sink, self.limit, self.packed = sink, limit, packed

    def add(self, info: tarfile.TarInfo, data: BinaryIO | None) -> None:
        header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        body = -(-info.size // BLOCK) * BLOCK
        if self.packed.size + len(header) + body + len(END) > self.limit:
            raise CheckpointTooLarge(
                f"the checkpoint passes the limit of {self.limit} bytes at {info.name!r}")
        self.sink.write(header)
        self.packed.size += len(header)
        if data is not None:
            _copy(data, self.sink, info.size, info.name)
            self.sink.write(b"\0" * (body - info.size))
            self.packed.size += body

    def finish(self) -> None:
        self.sink.write(END)
        self.packed.size += len(END)


def _pack_dir(dir_fd: int, prefix: str, writer: _Writer, owner: Owner | None,
              packed: Packed) -> None:
    with os.scandir(dir_fd) as it:
        names = sorted(entry.name for entry in it)
    for name in names:
        path = f"{prefix}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if owner is not None and st.st_uid != owner.uid:
            packed.skipped.append(path)
        elif stat.S_ISDIR(st.st_mode):
            _pack_subdir(dir_fd, name, path, st, writer, owner, packed)
        elif stat.S_ISREG(st.st_mode):
            _pack_file(dir_fd, name, path, writer, owner, packed)
        else:
            packed.skipped.append(path)


def _pack_subdir(dir_fd: int, name: str, path: str, st: os.stat_result, writer: _Writer,
                 owner: Owner | None, packed: Packed) -> None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:  # swapped for a link or removed since the stat
        packed.skipped.append(path)
        return
    try:
        if not _same(fd, st):
            packed.skipped.append(path)
            return
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(st.st_mtime)
        writer.add(info, None)
        packed.dirs += 1
        _pack_dir(fd, path + "/", writer, owner, packed)
    finally:
        os.close(fd)


def _pack_file(dir_fd: int, name: str, path: str, writer: _Writer, owner: Owner | None,
               packed: Packed) -> None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        packed.skipped.append(path)
        return
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner.uid):
            packed.skipped.append(path)
            return
        info = tarfile.TarInfo(path)
        info.size, info.mtime = st.st_size, int(st.st_mtime)
        info.mode = 0o700 if st.st_mode & 0o100 else 0o600
        writer.add(info, fh)
        packed.files += 1


def _same(fd: int, st: os.stat_result) -> bool:
    now = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _copy(src: BinaryIO, dst: BinaryIO, size: int, name: str) -> None:
    left = size
    while left:
        data = src.read(min(CHUNK, left))
        if not data:
            raise CheckpointError(f"{name!r} shrank while it was being packed")
        dst.write(data)
        left -= len(data)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of an archive as the reader accepted it."""

    parts: tuple[str, ...]
    """The name's components: never empty, never ``..``, never absolute."""
    is_dir: bool
    size: int
    mode: int


def members(stream: BinaryIO, limit: int) -> Iterator[tuple[Member, _Slice]]:
    """Each accepted member with a reader bounded to its data. Raises
    ``CheckpointRefused`` at the first member that is not a regular file or
    a directory with a safe name, and ``CheckpointTooLarge`` past ``limit``."""
    reader = _Bounded(stream, limit)
    count = 0
    pending: dict[str, str | int] = {}
    while True:
        header = reader.block()
        if header is None or header == b"\0" * BLOCK:
            return
        kind, name, size, mode = _parse_header(header)
        if kind in (b"L", b"x"):
            pending.update(_meta(kind, reader.take(size, MAX_META)))
            continue
        name = str(pending.pop("path", name))
        size = int(pending.pop("size", size))
        pending.clear()
        count += 1
        if count > MAX_MEMBERS:
            raise CheckpointRefused(f"more than {MAX_MEMBERS} members")
        member = _member(kind, name, size, mode)
        if member is None:
            continue  # the archive's own root, "./"
        data = _Slice(reader, member.size)
        yield member, data
        data.drain()  # whatever the consumer left of it
        reader.skip_padding(member.size)


def _member(kind: bytes, name: str, size: int, mode: int) -> Member | None:
    is_dir = kind == b"5"
    if kind not in _FILE_TYPES and not is_dir:
        what = _TYPE_NAMES.get(kind, f"type {kind!r}")
        raise CheckpointRefused(f"{name!r} is a {what}: only files and directories")
    if is_dir and size:
        raise CheckpointRefused(f"{name!r}: a directory with data")
    parts = member_parts(name)
    if not parts:
        if not is_dir:
            raise CheckpointRefused(f"{name!r}: a file without a name")
        return None
    return Member(parts, is_dir, size, mode)


def member_parts(name: str) -> tuple[str, ...]:
    """A member name's components, refusing absolute names, ``..`` and NUL.
    ``./a//b/`` is ("a", "b"); ``.`` alone is ()."""
    if "\0" in name:
        raise CheckpointRefused(f"{name!r}: NUL in a name")
    if name.startswith("/"):
        raise CheckpointRefused(f"{name!r}: an absolute name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CheckpointRefused(f"{name!r}: '..' in a name")
    return parts


def _parse_header(block: bytes) -> tuple[bytes, str, int, int]:
    if block[257:262] != b"ustar":
        raise CheckpointRefused("not a ustar archive")
    stored = _number(block[148:156])
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise CheckpointRefused("header checksum mismatch")
    name = _text(block[0:100])
    if block[257:263] == b"ustar\x00" and block[345] != 0:
        name = f"{_text(block[345:500])}/{name}"
    size = _number(block[124:136])
    if size < 0:
        raise CheckpointRefused(f"{name!r}: negative size")
    return block[156:157], name, size, _number(block[100:108]) & 0o7777


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for values past octal's reach
        value = int.from_bytes(field[1:], "big")
        return value if field[0] == 0x80 else value - (1 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CheckpointRefused(f"bad number {field!r} in a header") from None


def _text(field: bytes) -> str:
    return os.fsdecode(field.split(b"\0", 1)[0])


def _meta(kind: bytes, data: bytes) -> dict[str, str | int]:
    """A GNU long name, or the ``path`` and ``size`` of a pax header."""
    if kind == b"L":
        return {"path": _text(data)}
    out: dict[str, str | int] = {}
    while data:
        length_text = data.partition(b" ")[0]
        try:
            length = int(length_text)
        except ValueError:
            raise CheckpointRefused("malformed pax header") from None
        record, data = data[:length], data[length:]
        if length <= len(length_text) + 1 or not record.endswith(b"\n"):
            raise CheckpointRefused("malformed pax header")
        key, _, value = record[len(length_text) + 1:-1].partition(b"=")
        if key == b"path":
            out["path"] = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            if not value.isdigit():
                raise CheckpointRefused("malformed pax size")
            out["size"] = int(value)
    return out


class _Bounded:
    """The archive stream, counting every byte against the limit."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit, self.used = stream, limit, 0

    def _read(self, n: int) -> bytes:
        if self.used + n > self.limit:
            raise CheckpointTooLarge(f"the checkpoint passes the limit of {self.limit} bytes")
        data = self.stream.read(n)
        self.used += len(data)
        return data

    def block(self) -> bytes | None:
        data = self._read(BLOCK)
        if not data:
            return None
        if len(data) != BLOCK:
            raise CheckpointRefused("truncated archive")
        return data

    def take(self, size: int, cap: int) -> bytes:
        if size > cap:
            raise CheckpointRefused(f"a {size}-byte header (at most {cap})")
        data = self._read(-(-size // BLOCK) * BLOCK)
        if len(data) < size:
            raise CheckpointRefused("truncated archive")
        return data[:size]

    def skip_padding(self, size: int) -> None:
        pad = -size % BLOCK
        if pad and len(self._read(pad)) != pad:
            raise CheckpointRefused("truncated archive")


class _Slice:
    """``size`` bytes of the archive, as a readable file."""

    def __init__(self, outer: _Bounded, size: int) -> None:
        self.outer, self.left = outer, size

    def read(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes (at most ``CHUNK``): never the whole member at once."""
        want = min(n if n >= 0 else CHUNK, CHUNK, self.left)
        if want == 0:
            return b""
        data = self.outer._read(want)
        if len(data) != want:
            raise CheckpointRefused("truncated archive")
        self.left -= want
        return data

    def drain(self) -> None:
        while self.read():
            pass


# ---------------------------------------------------------------- unpacking


def unpack(archive: Path, target: Path, limit: int, *, owner: Owner | None = None) -> int:
    """Create ``target`` (its parent is the agent's) and write the archive's
    members into it; the number of files written. Any refusal removes
    ``target`` and raises."""
    parent = os.open(target.parent, _DIR_FLAGS)
    try:
        os.mkdir(target.name, 0o700, dir_fd=parent)
        root = os.open(target.name, _DIR_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        if owner is not None:
            os.fchown(root, owner.uid, owner.gid)
        with archive.open("rb") as stream:
            return _unpack_into(stream, root, os.path.realpath(target), limit, owner)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        os.close(root)


def _unpack_into(stream: BinaryIO, root: int, real_root: str, limit: int,
                 owner: Owner | None) -> int:
    files = 0
    for member, data in members(stream, limit):
        _check_inside(real_root, member.parts)
        parent = _open_parents(root, member.parts[:-1], owner)
        try:
            if member.is_dir:
                _make_dir(parent, member.parts[-1], owner)
            else:
                _write_file(parent, member, data, owner)
                files += 1
        finally:
            if parent != root:
                os.close(parent)
    return files


def _check_inside(real_root: str, parts: tuple[str, ...]) -> None:
    resolved = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, resolved]) != real_root:
        raise CheckpointRefused(f"{'/'.join(parts)!r} resolves outside the target")


def _open_parents(root: int, parts: tuple[str, ...], owner: Owner | None) -> int:
    """The directory holding a member, each level opened without following
    links (and made, 0700, when the archive did not list it first)."""
    fd = root
    for part in parts:
        _make_dir(fd, part, owner)
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise CheckpointRefused(f"{part!r} is not a directory: {exc.strerror}") from None
        finally:
            if fd != root:
                os.close(fd)
        fd = child
    return fd


def _make_dir(parent: int, name: str, owner: Owner | None) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return  # opened with O_DIRECTORY | O_NOFOLLOW by whoever uses it
    if owner is not None:
        os.chown(name, owner.uid, owner.gid, dir_fd=parent, follow_symlinks=False)


def _write_file(parent: int, member: Member, data: _Slice, owner: Owner | None) -> None:
    mode = 0o700 if member.mode & 0o100 else 0o600
    try:
        fd = os.open(member.parts[-1], _CREATE_FLAGS, mode, dir_fd=parent)
    except FileExistsError:
        raise CheckpointRefused(f"{'/'.join(member.parts)!r} appears twice") from None
    with os.fdopen(fd, "wb") as out:
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        while chunk := data.read(CHUNK):
            out.write(chunk)


# ---------------------------------------------------------------- streaming


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file in ``CHUNK`` pieces (an upload body that is never whole in memory)."""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


class Download:
    """A response body written to disk as it arrives, refused past ``limit``."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit, self.size = path, limit, 0
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._fh = os.fdopen(os.open(path, _CREATE_FLAGS, 0o600), "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise CheckpointTooLarge(f"the checkpoint passes the limit of {self.limit} bytes")
        self._fh.write(chunk)

    def close(self) -> None:
        self._fh.close()
