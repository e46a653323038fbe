"""Fixtures of the feature transcripts: a fresh `World` (real router, store, SQLite)."""

from __future__ import annotations

import pytest

from tests.unit.features.transcript import make_world


@pytest.fixture
async def world(tmp_path):
    w = await make_world(tmp_path / "features.sqlite3")
    yield w
    assert w.ctx.metrics.handler_errors.value == 0, "a handler raised an unexpected exception"
    await w.close()
