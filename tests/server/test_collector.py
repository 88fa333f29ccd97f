"""The server's collector settings (``server/app.py``): what the server has
built is frozen out of the collector's way, full collections come ten times
less often while it runs (they walked every allocation, and were the grant
p99), and both are undone when it stops."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from apportion.server.app import FULL_COLLECTION_EVERY, create_app
from apportion.service.settings import Settings


def test_full_collections_are_rarer_while_the_server_runs(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before[2] != FULL_COLLECTION_EVERY
    app = create_app(Settings(data_dir=tmp_path, database_url=None, admin_token=None,
                              config_file=None))
    seen: list[object] = []

    async def run() -> None:
        async with app.router.lifespan_context(app):
            seen.extend([gc.get_threshold(), gc.get_freeze_count() > 0])

    asyncio.run(run())
    assert seen == [(before[0], before[1], 100), True]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
