"""A PostgreSQL that stops or starts (a switchover, a promotion) is unavailable, not a bug."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from presence_ha.db.engine import DatabaseUnavailable, translate_errors


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


async def raise_in_translate(sqlstate: str) -> None:
    async with translate_errors():
        raise DBAPIError("SELECT 1", None, DriverError(sqlstate))


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "08006"])
async def test_shutting_down_or_a_broken_connection_is_unavailable(sqlstate):
    with pytest.raises(DatabaseUnavailable, match=sqlstate):
        await raise_in_translate(sqlstate)


@pytest.mark.parametrize("sqlstate", ["23505", "40001", "42P01"])
async def test_other_database_errors_stay_what_they_are(sqlstate):
    with pytest.raises(DBAPIError):
        await raise_in_translate(sqlstate)


async def test_a_pool_with_no_free_connection_in_time_is_unavailable():
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    with pytest.raises(DatabaseUnavailable, match="no database connection free in time"):
        async with translate_errors():
            raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")
