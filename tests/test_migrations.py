"""Migrations: up, down, up again on an empty database; every object commented; offline SQL for review."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service import migrate
from tests.pg import PgServer


async def _objects(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "tables": await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"),
            "functions": await conn.fetchval(
                "SELECT count(*) FROM pg_proc WHERE pronamespace='public'::regnamespace AND proname LIKE 'hub_%'"),
            "triggers": await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"),
            "views": await conn.fetchval("SELECT count(*) FROM pg_views WHERE schemaname='public'"),
        }
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade_on_an_empty_database(pg: PgServer) -> None:
    name = await pg.create_database()
    dsn = pg.dsn(name)
    try:
        assert await _objects(dsn) == {"tables": 0, "functions": 0, "triggers": 0, "views": 0}
        await asyncio.to_thread(migrate.upgrade, dsn)
        migrated = await _objects(dsn)
        assert migrated == {"tables": 4, "functions": 6, "triggers": 2, "views": 2}
        await asyncio.to_thread(migrate.downgrade, dsn, "base")
        assert await _objects(dsn) == {"tables": 0, "functions": 0, "triggers": 0, "views": 0}
        await asyncio.to_thread(migrate.upgrade, dsn)
        assert await _objects(dsn) == migrated
        conn = await asyncpg.connect(dsn)
        try:
            assert await migrate.current_revision(conn) == migrate.head_revision()
        finally:
            await conn.close()
    finally:
        await pg.drop_database(name)


async def test_every_table_column_view_and_function_is_commented(db: asyncpg.Connection) -> None:
    missing = await db.fetch(
        """
        SELECT c.relname || coalesce('.' || a.attname, '') AS object
          FROM pg_class c
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v')
           AND c.relname <> 'alembic_version'
           AND col_description(c.oid, coalesce(a.attnum, 0)) IS NULL
           AND (a.attnum IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NULL)
        UNION ALL
        SELECT p.proname FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
        """)
    assert [r["object"] for r in missing] == []


def test_offline_sql_prints_the_whole_migration() -> None:
    sql = migrate.offline_sql()
    for needle in ("CREATE TABLE events", "CREATE CONSTRAINT TRIGGER trades_event_v1", "pg_advisory_xact_lock",
                   "DEFERRABLE INITIALLY DEFERRED", "CREATE VIEW event_stats", "INSERT INTO alembic_version"):
        assert needle in sql
    # Colons survive (casts and PL/pgSQL assignments are not bind parameters).
    assert "'{}'::jsonb" in sql and "v_seq := nextval" in sql


async def test_a_role_without_grants_cannot_forge_events(db: asyncpg.Connection) -> None:
    role = f"nobody_{abs(hash(db)) % 10**8}"
    await db.execute(f"CREATE ROLE {role}")
    try:
        await db.execute(f"GRANT INSERT, SELECT ON trades TO {role}")
        await db.execute(f"SET ROLE {role}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute("SELECT hub_append_event_v1('notification', 'NOTIFY', NULL, NULL, '{}')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute("SELECT hub_notify_v1('critical', 'forged')")
        # The triggers still append for a writer that may touch trades.
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)")
        await db.execute("RESET ROLE")
        assert await db.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await db.execute("RESET ROLE")
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")
