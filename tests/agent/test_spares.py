"""Empty checkpoint directories handed from a task that is done to the next:
only empty directories of the agent's with mode 0700 are handed on, one
that something wrote to while it waited is not, and spares outlive an agent
restart."""

from __future__ import annotations

import os
from pathlib import Path

from apportion.agent.spares import SPARE_DIR, Spares, empty_own_dir


def _checkpoint(root: Path, task: str) -> Path:
    path = root / task / "checkpoint"
    path.mkdir(parents=True, mode=0o700)
    return path


def test_an_empty_directory_is_handed_on_and_one_with_files_is_left(tmp_path: Path) -> None:
    spares = Spares(tmp_path)
    spares.load()
    empty, full = _checkpoint(tmp_path, "a"), _checkpoint(tmp_path, "b")
    (full / "state").write_text("1")
    inode = empty.stat().st_ino
    assert (spares.put(empty, "a"), spares.put(full, "b")) == (True, False)
    assert not empty.exists() and (full / "state").exists()
    (tmp_path / "c").mkdir()
    dest = tmp_path / "c" / "checkpoint"
    assert spares.take(dest)
    assert dest.stat().st_ino == inode and empty_own_dir(dest)
    assert not spares.take(tmp_path / "c" / "other")  # none left
    assert list((tmp_path / SPARE_DIR).iterdir()) == []


def test_a_directory_a_task_opened_up_or_replaced_by_a_link_is_not_handed_on(
    tmp_path: Path
) -> None:
    spares = Spares(tmp_path)
    spares.load()
    loose = _checkpoint(tmp_path, "a")
    os.chmod(loose, 0o777)
    linked = tmp_path / "b" / "checkpoint"
    (tmp_path / "b").mkdir()
    target = _checkpoint(tmp_path, "elsewhere")
    linked.symlink_to(target)
    assert (spares.put(loose, "a"), spares.put(linked, "b")) == (False, False)
    assert spares.free == [] and loose.is_dir() and linked.is_symlink()


def test_a_spare_written_to_while_it_waited_is_removed_and_the_next_one_taken(
    tmp_path: Path
) -> None:
    spares = Spares(tmp_path)
    spares.load()
    for task in ("a", "b"):
        assert spares.put(_checkpoint(tmp_path, task), task)
    # A process task b left behind still held its directory open.
    (tmp_path / SPARE_DIR / "b" / "late").write_text("x")
    (tmp_path / "c").mkdir()
    dest = tmp_path / "c" / "checkpoint"
    assert spares.take(dest)
    assert empty_own_dir(dest)
    assert sorted(p.name for p in (tmp_path / SPARE_DIR).iterdir()) == []
    assert spares.free == []


def test_spares_are_kept_up_to_the_limit_and_outlive_a_restart(tmp_path: Path) -> None:
    spares = Spares(tmp_path, limit=2)
    spares.load()
    results = [spares.put(_checkpoint(tmp_path, t), t) for t in ("a", "b", "c")]
    assert results == [True, True, False]
    again = Spares(tmp_path, limit=2)
    again.load()
    assert sorted(p.name for p in again.free) == ["a", "b"]
    (tmp_path / "d").mkdir()
    assert again.take(tmp_path / "d" / "checkpoint")
