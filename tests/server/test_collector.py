"""The server's collector settings (``server/app.py``): what the server has
built is frozen out of the collector's way, full collections come ten times
less often while it runs (they walked every allocation, and were the grant
p99), young ones ten times less often (a grant's garbage is freed by
reference counting; at 700 the collector ran every grant or two), and all
of it is undone when it stops."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from apportion.server.app import FULL_COLLECTION_EVERY, YOUNG_COLLECTION_AFTER, create_app
from apportion.service.settings import Settings


def test_full_collections_are_rarer_while_the_server_runs(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before[2] != FULL_COLLECTION_EVERY and before[0] != YOUNG_COLLECTION_AFTER
    app = create_app(Settings(data_dir=tmp_path, database_url=None, admin_token=None,
                              config_file=None))
    seen: list[object] = []

    async def run() -> None:
        async with app.router.lifespan_context(app):
            seen.extend([gc.get_threshold(), gc.get_freeze_count() > 0])

    asyncio.run(run())
    assert seen == [(7000, before[1], 100), True]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
