"""sql/schema.sql is the schema `zepix-hub migrate` builds: loaded into an empty database, it dumps the same.

Runs on the suite's backend (the embedded PostgreSQL 18, or the server of HUB_TEST_DATABASE_URL) with a
pg_dump of that server's major version. The file is generated (tests/schema_dump.py): after a migration,
regenerate it with `python -m tests.schema_dump`.
"""

from __future__ import annotations

import asyncio
import difflib

import asyncpg
import pytest

from service.store import migrate
from tests.pg import PgServer, private_bindir
from tests.schema_dump import REGENERATE, SCHEMA_SQL, comparable, embedded_bindir, pg_dump, render


def _differences(migrated: dict[str, str], loaded: dict[str, str]) -> str:
    lines = [f"only in a migrated database: {key}" for key in sorted(migrated.keys() - loaded.keys())]
    lines += [f"only in sql/schema.sql: {key}" for key in sorted(loaded.keys() - migrated.keys())]
    for key in sorted(migrated.keys() & loaded.keys()):
        if migrated[key] != loaded[key]:
            lines += difflib.unified_diff(loaded[key].splitlines(), migrated[key].splitlines(),
                                          f"{key} (sql/schema.sql)", f"{key} (migrated)", lineterm="")
    return "\n".join(lines[:200])


async def test_schema_sql_is_what_the_migrations_build(pg: PgServer, dsn: str) -> None:
    bindir = embedded_bindir() if pg.embedded_dir is not None else await asyncio.to_thread(private_bindir)
    assert bindir is not None
    text = SCHEMA_SQL.read_text()
    assert f"(head: {migrate.head_revision()})" in text.splitlines()[0], f"sql/schema.sql is stale: run {REGENERATE}"

    empty = await pg.create_database(prefix="zepix_schema")
    try:
        conn = await asyncpg.connect(pg.dsn(empty))
        try:
            await conn.execute(text)
        finally:
            await conn.close()
        migrated, loaded = await asyncio.gather(asyncio.to_thread(pg_dump, bindir, dsn),
                                                asyncio.to_thread(pg_dump, bindir, pg.dsn(empty)))
    finally:
        await pg.drop_database(empty)

    objects = comparable(migrated)
    # Not two empty dumps agreeing: the log, its schema and the capture triggers are there.
    assert {"TABLE public.events", "SCHEMA -.zepix_hub"} <= objects.keys(), sorted(objects)
    assert any(key.startswith("TRIGGER public.trades ") for key in objects), sorted(objects)
    problems = _differences(objects, comparable(loaded))
    assert not problems, f"sql/schema.sql differs from a migrated database: run {REGENERATE}\n{problems}"


@pytest.mark.backend("embedded", reason="the file is written from the embedded PostgreSQL's pg_dump; "
                                        "PostgreSQL 15's prints views differently")
async def test_schema_sql_is_exactly_what_the_generator_writes(dsn: str) -> None:
    """Nobody edited the generated file by hand (its comments included)."""
    written = render(await asyncio.to_thread(pg_dump, embedded_bindir(), dsn), migrate.head_revision() or "none")
    problems = "\n".join(difflib.unified_diff(SCHEMA_SQL.read_text().splitlines(), written.splitlines(),
                                              "sql/schema.sql", REGENERATE, lineterm=""))
    assert not problems, f"sql/schema.sql is not what {REGENERATE} writes:\n{problems[:8000]}"
