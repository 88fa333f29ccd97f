"""The agent's log reads for shipping (``reporting._read_log``): new bytes
from an offset, nothing (and no open) where the log holds nothing new."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.agent import reporting
from apportion.agent.reporting import LOG_CHUNK, _read_log


def test_a_log_with_nothing_new_is_not_opened(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """...and a read asks for the bytes the stat saw, not a whole chunk."""
    log = tmp_path / "stdout.log"
    log.write_bytes(b"hello\n")
    opened: list[Any] = []
    asked: list[int] = []
    real, real_pread = os.open, os.pread

    def counting(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(path)
        return real(path, *args, **kwargs)

    def recording(fd: int, n: int, offset: int) -> bytes:
        asked.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(reporting.os, "open", counting)
    monkeypatch.setattr(reporting.os, "pread", recording)
    assert asyncio.run(_read_log(log, 6)) == b""
    assert asyncio.run(_read_log(log, 9)) == b""  # past the end (a log cut short)
    assert asyncio.run(_read_log(tmp_path / "none.log", 0)) == b""
    assert opened == []
    assert asyncio.run(_read_log(log, 2)) == b"llo\n"
    assert opened == [log]
    assert asked == [4]


@given(st.binary(max_size=300), st.integers(0, 320))
def test_new_bytes_are_what_a_buffered_read_gives(data: bytes, offset: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stderr.log"
        log.write_bytes(data)
        with log.open("rb") as fh:
            fh.seek(offset)
            expected = fh.read(LOG_CHUNK)
        assert asyncio.run(_read_log(log, offset)) == expected


def test_a_large_log_is_read_in_chunks(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    data = os.urandom(LOG_CHUNK + 1000)
    log.write_bytes(data)
    first = asyncio.run(_read_log(log, 0))
    assert first == data[:LOG_CHUNK]
    assert asyncio.run(_read_log(log, len(first))) == data[LOG_CHUNK:]

