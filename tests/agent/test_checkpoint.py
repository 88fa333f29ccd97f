"""Checkpoints packed and unpacked by the agent itself: the tar-slip attacks
of issue 17 (finding 2) fail without writing outside the target, sizes stop
at the limit, and only regular files and directories travel."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from apportion.agent import checkpoint
from apportion.agent.checkpoint import (
    CheckpointRefused,
    CheckpointTooLarge,
    Owner,
    member_parts,
    pack,
    unpack,
)

LIMIT = 1 << 20


def cve_2025_4517_tar(path: Path) -> None:
    """The public proof of concept: a chain of symlinks whose resolved path
    passes PATH_MAX, so ``os.path.realpath`` (and with it tarfile's "data"
    filter) stops following them while the kernel does not; the last link
    leads two levels above the destination and a file is written through it."""
    comp, steps, prefix = "d" * 247, "abcdefghijklmnop", ""
    with tarfile.open(path, "w") as tar:
        for step in steps:
            _add(tar, os.path.join(prefix, comp), tarfile.DIRTYPE)
            _add(tar, os.path.join(prefix, step), tarfile.SYMTYPE, comp)
            prefix = os.path.join(prefix, comp)
        linkpath = os.path.join(*steps, "l" * 254)
        _add(tar, linkpath, tarfile.SYMTYPE, "../" * len(steps))
        _add(tar, "escape", tarfile.SYMTYPE, linkpath + "/../..")
        data = b"written outside\n"
        info = tarfile.TarInfo("escape/outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _add(tar: tarfile.TarFile, name: str, kind: bytes, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    tar.addfile(info)


def test_the_symlink_chain_of_cve_2025_4517_escapes_tarfile_but_not_the_agent(
    tmp_path: Path
) -> None:
    archive = tmp_path / "poc.tar"
    cve_2025_4517_tar(archive)
    (tmp_path / "a" / "b").mkdir(parents=True)
    if sys.version_info < (3, 11, 13):  # fixed in 3.11.13: the attack is real on this Python
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "a" / "b" / "target", filter="data")
        assert (tmp_path / "a" / "outside.txt").read_text() == "written outside\n"
        (tmp_path / "a" / "outside.txt").unlink()

    with pytest.raises(CheckpointRefused) as refused:
        unpack(archive, tmp_path / "a" / "b" / "resume", LIMIT)
    assert str(refused.value) == "'a' is a symbolic link: only files and directories"
    assert not (tmp_path / "a" / "b" / "resume").exists()
    assert not list(tmp_path.rglob("outside.txt"))


def _tar(path: Path, *members: tuple[str, bytes, bytes | str]) -> Path:
    """A tar of (name, type, data or link target) members."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                assert isinstance(payload, str)
                info.linkname = payload
            if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 195, 0
            tar.addfile(info)
    return path


@pytest.mark.parametrize(("member", "message"), [
    (("../evil", tarfile.REGTYPE, b"x"), "'../evil': '..' in a name"),
    (("ok/../../evil", tarfile.REGTYPE, b"x"), "'ok/../../evil': '..' in a name"),
    (("/tmp/evil", tarfile.REGTYPE, b"x"), "'/tmp/evil': an absolute name"),
    (("evil", tarfile.SYMTYPE, "/etc"), "'evil' is a symbolic link: only files and directories"),
    (("evil", tarfile.LNKTYPE, "/etc/passwd"), "'evil' is a hard link: only files and directories"),
    (("nvidia0", tarfile.CHRTYPE, b""),
     "'nvidia0' is a character device: only files and directories"),
    (("sda", tarfile.BLKTYPE, b""), "'sda' is a block device: only files and directories"),
    (("pipe", tarfile.FIFOTYPE, b""), "'pipe' is a FIFO: only files and directories"),
])
def test_links_devices_fifos_absolute_names_and_dotdot_are_refused_and_leave_nothing(
    tmp_path: Path, member: tuple[str, bytes, bytes | str], message: str
) -> None:
    archive = _tar(tmp_path / "bad.tar", ("fine.txt", tarfile.REGTYPE, b"fine"), member)
    (tmp_path / "task").mkdir()
    with pytest.raises(CheckpointRefused) as refused:
        unpack(archive, tmp_path / "task" / "resume", LIMIT)
    assert str(refused.value) == message
    assert list((tmp_path / "task").iterdir()) == []  # what was written before is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "task"]


def test_a_name_used_twice_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "twice.tar", ("a", tarfile.REGTYPE, b"1"),
                   ("./a", tarfile.REGTYPE, b"2"))
    with pytest.raises(CheckpointRefused, match=r"^'a' appears twice$"):
        unpack(archive, tmp_path / "resume", LIMIT)
    assert not (tmp_path / "resume").exists()


def test_a_link_planted_in_the_target_while_unpacking_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task sharing the uid swaps a directory for a link to somewhere else
    between the agent's check and its write: the write still cannot leave."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(tmp_path / "race.tar", ("sub", tarfile.DIRTYPE, b""),
                   ("sub/x", tarfile.REGTYPE, b"data"))
    checked = checkpoint._check_inside

    def swap_after_check(real_root: str, parts: tuple[str, ...]) -> None:
        checked(real_root, parts)
        if parts == ("sub", "x"):
            (Path(real_root) / "sub").rmdir()
            (Path(real_root) / "sub").symlink_to(outside)

    monkeypatch.setattr(checkpoint, "_check_inside", swap_after_check)
    with pytest.raises(CheckpointRefused, match=r"^'sub' is not a directory"):
        unpack(archive, tmp_path / "resume", LIMIT)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "resume").exists()


def test_names_are_split_into_safe_components() -> None:
    assert member_parts("./a//b/") == ("a", "b")
    assert member_parts(".") == ()
    assert member_parts("a/./b") == ("a", "b")
    with pytest.raises(CheckpointRefused, match="NUL"):
        member_parts("a\0b")


def test_what_the_agent_packs_round_trips_with_private_modes(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "weights.bin").write_bytes(os.urandom(3000))
    (source / "nested" / "deeper" / ("long-" * 40 + ".txt")).write_text("long name\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "nested" / "empty").mkdir()
    packed = pack(source, tmp_path / "out.tar", LIMIT)
    assert packed is not None
    assert (packed.files, packed.dirs, packed.skipped) == (3, 3, [])
    assert packed.size == (tmp_path / "out.tar").stat().st_size
    assert unpack(tmp_path / "out.tar", tmp_path / "resume", LIMIT) == 3
    resumed = tmp_path / "resume"
    assert (resumed / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()
    assert (resumed / "nested" / "deeper" / ("long-" * 40 + ".txt")).read_text() == "long name\n"
    assert (resumed / "nested" / "empty").is_dir()
    assert oct(stat.S_IMODE((resumed / "run.sh").stat().st_mode)) == "0o700"
    assert oct(stat.S_IMODE((resumed / "weights.bin").stat().st_mode)) == "0o600"
    assert oct(stat.S_IMODE(resumed.stat().st_mode)) == "0o700"


def test_checkpoints_of_earlier_agents_in_pax_format_still_unpack(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / ("é" * 120)).write_text("pax name\n")
    (source / "counter").write_text("41")
    with tarfile.open(tmp_path / "old.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=".")
    assert unpack(tmp_path / "old.tar", tmp_path / "resume", LIMIT) == 2
    assert (tmp_path / "resume" / ("é" * 120)).read_text() == "pax name\n"


def test_packing_leaves_out_links_fifos_and_files_of_other_uids_without_blocking(
    tmp_path: Path
) -> None:
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "keep.txt").write_text("keep")
    (source / "passwd").symlink_to("/etc/passwd")
    (source / "dir-link").symlink_to(tmp_path)
    os.mkfifo(source / "fifo")
    packed = pack(source, tmp_path / "out.tar", LIMIT)
    assert packed is not None
    assert sorted(packed.skipped) == ["dir-link", "fifo", "passwd"]
    with (tmp_path / "out.tar").open("rb") as fh:
        assert [m.parts for m, _ in checkpoint.members(fh, LIMIT)] == [("keep.txt",)]
    stranger = Owner(os.getuid() + 4242, os.getgid() + 4242)
    assert pack(source, tmp_path / "none.tar", LIMIT, owner=stranger) is None
    assert not (tmp_path / "none.tar").exists()


def test_a_checkpoint_directory_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("secret")
    (tmp_path / "checkpoint").symlink_to(tmp_path / "secrets")
    with pytest.raises(CheckpointRefused, match=r"is not a directory but a link or a file$"):
        pack(tmp_path / "checkpoint", tmp_path / "out.tar", LIMIT)
    assert not (tmp_path / "out.tar").exists()


def test_packing_stops_at_the_limit_and_removes_the_partial_archive(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "a").write_bytes(b"x" * 4000)
    (source / "b").write_bytes(b"y" * 4000)
    with pytest.raises(CheckpointTooLarge) as too_large:
        pack(source, tmp_path / "out.tar", 8192)
    assert str(too_large.value) == "the checkpoint passes the limit of 8192 bytes at 'b'"
    assert not (tmp_path / "out.tar").exists()
    packed = pack(source, tmp_path / "out.tar", 10240)
    assert packed is not None and packed.size == 10240  # 2 x (512 + 4096) + 1024


def test_unpacking_and_downloading_stop_at_the_limit(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar", ("big", tarfile.REGTYPE, b"z" * 9000))
    with pytest.raises(CheckpointTooLarge):
        unpack(archive, tmp_path / "resume", 8192)
    assert not (tmp_path / "resume").exists()
    sink = checkpoint.Download(tmp_path / "download.tar", 100)
    sink.write(b"a" * 60)
    with pytest.raises(CheckpointTooLarge):
        sink.write(b"b" * 60)
    sink.close()
    assert (tmp_path / "download.tar").stat().st_size == 60


def test_a_corrupt_or_truncated_archive_is_refused(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar", ("f", tarfile.REGTYPE, b"data" * 300))
    data = good.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:700])
    with pytest.raises(CheckpointRefused, match=r"^truncated archive$"):
        unpack(tmp_path / "cut.tar", tmp_path / "r1", LIMIT)
    (tmp_path / "flipped.tar").write_bytes(data[:10] + b"X" + data[11:])
    with pytest.raises(CheckpointRefused, match=r"^header checksum mismatch$"):
        unpack(tmp_path / "flipped.tar", tmp_path / "r2", LIMIT)
    (tmp_path / "junk.tar").write_bytes(b"\x1f\x8b" + b"\0" * 1022)  # a gzip is not a tar
    with pytest.raises(CheckpointRefused, match=r"^not a ustar archive$"):
        unpack(tmp_path / "junk.tar", tmp_path / "r3", LIMIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.tar", "flipped.tar", "good.tar", "junk.tar"]
