"""The private server that restart, outage and chaos tests stop and start runs the version under test."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.pg import PgServer


async def test_the_private_server_runs_the_major_version_under_test(pg: PgServer,
                                                                    private_pg: tuple[Path, str]) -> None:
    _, admin = private_pg
    conn = await asyncpg.connect(admin)
    try:
        private = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    tested = await pg.server_version()
    assert private // 10000 == tested // 10000, (
        f"the restart and outage tests would run against PostgreSQL {private // 10000}, "
        f"the suite against {tested // 10000}")
