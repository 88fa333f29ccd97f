"""Task logs (``service/task_files.py``): only the node running a task
writes its log, a resent chunk is stored once, and a task keeps at most
``log_max`` bytes, the rest dropped and said so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apportion.core.model import Node
from apportion.exceptions import InvalidInput, NotFound
from apportion.service.task_files import FileLimits, TaskFiles
from apportion.service.wiring import Services


def test_a_running_tasks_log_is_stored_once_up_to_its_cap(services: Services,
                                                         tmp_path: Path) -> None:
    files = TaskFiles(services.uow, services.jobs, services.files.blobs,
                      FileLimits(log_max=10), tmp_path / "spool")

    async def scenario() -> None:
        await services.leadership.campaign_round()
        try:
            await services.ledger.register_node(Node("n1", {"cpu": 4000}))
            job = await services.jobs.submit({"resources": {"cpu": "1"}}, "alice")
            await services.jobs.run_cycle()
            _, [task] = await services.jobs.get(job.id)
            t = task.id
            assert await files.append_log("n1", t, "stdout", 0, b"hello") == {
                "size": 5, "truncated": False}
            # The agent resends what the server may not have stored: kept once.
            assert await files.append_log("n1", t, "stdout", 0, b"hello") == {
                "size": 5, "truncated": False}
            assert await files.append_log("n1", t, "stdout", 3, b"loworld!") == {
                "size": 10, "truncated": True}
            assert await files.append_log("n1", t, "stderr", 0, b"x") == {
                "size": 0, "truncated": True}
            read = await files.read_log(t, "stdout", 0, 100)
            assert (read.data, read.end, read.size, read.truncated) == (
                b"helloworld", 10, 10, True)
            assert (await files.read_log(t, "stdout", 7, 2)).data == b"rl"
            with pytest.raises(NotFound, match=f"task {t} is not running on node n2"):
                await files.append_log("n2", t, "stdout", 0, b"spoof")
            with pytest.raises(InvalidInput, match="stream: use stdout or stderr"):
                await files.append_log("n1", t, "stdlog", 0, b"")
        finally:
            await services.leadership.stop()

    asyncio.run(scenario())


def test_checkpoint_keys_are_made_of_ids_only() -> None:
    assert TaskFiles.checkpoint_key("j-1", "t-1") == "checkpoints/j-1/t-1.tar"
    for bad in ("../etc", ".hidden", "a/b", ""):
        with pytest.raises(InvalidInput, match="is not a valid id"):
            TaskFiles.checkpoint_key("j-1", bad)
