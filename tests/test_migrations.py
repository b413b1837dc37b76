"""Migrations: up, down, up again on an empty database; every object commented; offline SQL for review."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from service.store import migrate
from tests.pg import PgServer


async def _objects(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "tables": await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"),
            "functions": await conn.fetchval(
                "SELECT count(*) FROM pg_proc WHERE pronamespace='public'::regnamespace AND proname LIKE 'hub_%'"),
            "capture functions": await conn.fetchval(
                "SELECT count(*) FROM pg_proc JOIN pg_namespace AS n ON n.oid = pronamespace "
                "WHERE n.nspname = 'zepix_hub'"),
            "triggers": await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"),
            "views": await conn.fetchval("SELECT count(*) FROM pg_views WHERE schemaname='public'"),
        }
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade_on_an_empty_database(pg: PgServer) -> None:
    name = await pg.create_database()
    dsn = pg.dsn(name)
    try:
        empty = {"tables": 0, "functions": 0, "capture functions": 0, "triggers": 0, "views": 0}
        assert await _objects(dsn) == empty
        await asyncio.to_thread(migrate.upgrade, dsn)
        migrated = await _objects(dsn)
        # v1's six functions stay beside v4's five (old code may still name them), with hub_prune_logs_v1;
        # v6's capture path is in zepix_hub; two capture and two guard triggers; v5's event_log_epoch.
        assert migrated == {"tables": 5, "functions": 12, "capture functions": 5, "triggers": 4, "views": 2}
        await asyncio.to_thread(migrate.downgrade, dsn, "base")
        assert await _objects(dsn) == empty
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
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'zepix_hub'::regnamespace AND obj_description(c.oid, 'pg_class') IS NULL
        UNION ALL
        SELECT p.proname FROM pg_proc p
         WHERE p.pronamespace IN ('public'::regnamespace, 'zepix_hub'::regnamespace)
           AND obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT t.tgname FROM pg_trigger t WHERE NOT t.tgisinternal AND obj_description(t.oid, 'pg_trigger') IS NULL
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
        for forge in ("SELECT hub_append_event_v2('notification', 'NOTIFY', NULL, NULL, '{}')",
                      "SELECT hub_notify_v2('critical', 'forged')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db.execute(forge)
        # The triggers still append for a writer that may touch trades.
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)")
        await db.execute("RESET ROLE")
        assert await db.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await db.execute("RESET ROLE")
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


FRAMES = "SELECT hub_event_frame_v1(seq, topic, created_at, payload) AS frame FROM events ORDER BY seq"


async def test_capture_v2_upgrade_keeps_the_log_and_its_frames(pg: PgServer) -> None:
    """0003 -> 0004 -> 0003 on a log with events: every frame a client was sent stays byte-for-byte the same,
    the live frame of a v2 event equals its replayed frame, and both capture paths work on their side."""
    name = await pg.create_database()
    dsn = pg.dsn(name)
    conn: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(migrate.upgrade, dsn, "0003")
        conn = await asyncpg.connect(dsn)
        await conn.execute("INSERT INTO trades (symbol, side, quantity, extra) VALUES ('BTCUSDT', 'BUY', 1.50, "
                           "'{\"note\": \"caf\\u00e9 \\\"quoted\\\"\"}')")
        await conn.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'broker down', 'broker')")
        before = [r["frame"] for r in await conn.fetch(FRAMES)]
        assert len(before) == 3
        await conn.close()

        await asyncio.to_thread(migrate.upgrade, dsn, "0004")
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT format_type(atttypid, NULL) FROM pg_attribute "
                                   "WHERE attrelid = 'events'::regclass AND attname = 'payload'") == "json"
        assert [r["frame"] for r in await conn.fetch(FRAMES)] == before
        live: list[str] = []
        await conn.add_listener("zepix_hub_events", lambda *args: live.append(args[3]))
        await conn.execute("UPDATE trades SET status = 'OPEN'")
        await conn.execute("SELECT hub_notify('info', 'after the upgrade')")
        for _ in range(100):
            if len(live) == 2:
                break
            await asyncio.sleep(0.05)
        after = [r["frame"] for r in await conn.fetch(FRAMES)]
        assert after[:3] == before and after[3:] == live
        update, note = (json.loads(f) for f in live)
        assert update["seq"] == 4 and update["data"]["changed"] == ["status"]
        assert update["data"]["trade"]["extra"] == {"note": 'café "quoted"'}
        assert note["seq"] == 5 and note["data"] == {"type": "info", "title": "after the upgrade", "body": None}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO events (seq, topic, op, payload) VALUES (99, 'trades', 'INSERT', '{}')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO events (seq, topic, op, payload) VALUES (99, 'log_stream', 'X', '{}')")
        await conn.close()

        await asyncio.to_thread(migrate.downgrade, dsn, "0003")
        conn = await asyncpg.connect(dsn)
        await conn.execute("DELETE FROM trades")
        frames = [json.loads(r["frame"]) for r in await conn.fetch(FRAMES)]
        assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
        assert [json.loads(f) for f in after] == frames[:5]
        assert frames[5]["data"]["op"] == "DELETE"
    finally:
        if conn is not None:
            await conn.close()
        await pg.drop_database(name)


async def test_capture_v2_upgrade_waits_for_a_bot_mid_transaction_instead_of_deadlocking(pg: PgServer) -> None:
    """A bot transaction holds trades and takes events at COMMIT; 0004 takes the tables in that order too."""
    name = await pg.create_database()
    dsn = pg.dsn(name)
    bot = watcher = None
    try:
        await asyncio.to_thread(migrate.upgrade, dsn, "0003")
        bot, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        tx = bot.transaction()
        await tx.start()
        await bot.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        migrating = asyncio.ensure_future(asyncio.to_thread(migrate.upgrade, dsn))
        for _ in range(200):  # until the migration queues behind the bot's lock
            if await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                                      "AND wait_event_type = 'Lock'", name):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the migration never waited for the bot's transaction")
        await tx.commit()  # its deferred trigger appends to events: must not deadlock with the migration
        await asyncio.wait_for(migrating, 60)
        assert await watcher.fetchval("SELECT version_num FROM alembic_version") == migrate.head_revision()
        rows = await watcher.fetch("SELECT seq, topic FROM events ORDER BY seq")
        assert [(r["seq"], r["topic"]) for r in rows] == [(1, "trade_update")]
    finally:
        for conn in (bot, watcher):
            if conn is not None:
                await conn.close()
        await pg.drop_database(name)


async def test_log_epoch_upgrade_keeps_every_event_and_the_downgrade_removes_it(pg: PgServer) -> None:
    """0004 -> 0005 on a log with events: one epoch appears and no event changes; down and up again gives
    the log a new epoch (a rebuilt log is another log); the fence replaces it too."""
    name = await pg.create_database()
    dsn = pg.dsn(name)
    conn: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(migrate.upgrade, dsn, "0004")
        conn = await asyncpg.connect(dsn)
        await conn.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        await conn.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', 'broker down')")
        before = [r["frame"] for r in await conn.fetch(FRAMES)]
        assert len(before) == 3
        await conn.close()

        await asyncio.to_thread(migrate.upgrade, dsn, "0005")
        conn = await asyncpg.connect(dsn)
        assert [r["frame"] for r in await conn.fetch(FRAMES)] == before
        first = await conn.fetch("SELECT epoch FROM event_log_epoch")
        assert len(first) == 1 and first[0]["epoch"] is not None
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO event_log_epoch DEFAULT VALUES")
        await conn.close()

        await asyncio.to_thread(migrate.downgrade, dsn, "0004")
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT to_regclass('event_log_epoch')") is None
        assert [r["frame"] for r in await conn.fetch(FRAMES)] == before
        await conn.close()

        await asyncio.to_thread(migrate.upgrade, dsn, "0005")
        conn = await asyncpg.connect(dsn)
        second = await conn.fetchval("SELECT epoch FROM event_log_epoch")
        assert second != first[0]["epoch"]
    finally:
        if conn is not None:
            await conn.close()
        await pg.drop_database(name)


#: The revision before the hardened capture path (sql/v6): what a rolling upgrade starts from.
BEFORE_V3 = "0005"


async def test_capture_v3_upgrade_keeps_every_event_and_downgrades(pg: PgServer) -> None:
    """BEFORE_V3 -> head -> BEFORE_V3 -> head on a log with events: no event is lost or renumbered, every
    frame stays byte-for-byte, seqs continue gap-free on both paths, and each path notifies its own way
    (frames before, the seq alone after)."""
    name = await pg.create_database()
    dsn = pg.dsn(name)
    conn: asyncpg.Connection | None = None
    heard: list[str] = []

    async def write_and_hear(expected: int) -> list[str]:
        assert conn is not None
        heard.clear()
        await conn.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        await conn.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'broker down', 'broker')")
        await conn.execute("SELECT hub_notify('info', 'by hand')")
        for _ in range(100):
            if len(heard) == expected:
                break
            await asyncio.sleep(0.05)
        return list(heard)

    async def reconnect() -> asyncpg.Connection:
        if conn is not None:
            await conn.close()
        new = await asyncpg.connect(dsn)
        await new.add_listener("zepix_hub_events", lambda *args: heard.append(args[3]))
        return new

    try:
        await asyncio.to_thread(migrate.upgrade, dsn, BEFORE_V3)
        conn = await reconnect()
        old_payloads = await write_and_hear(4)
        before = [r["frame"] for r in await conn.fetch(FRAMES)]
        assert old_payloads == before  # the old path sends frames

        await asyncio.to_thread(migrate.upgrade, dsn)
        conn = await reconnect()
        assert [r["frame"] for r in await conn.fetch(FRAMES)] == before
        assert await write_and_hear(4) == ["5", "6", "7", "8"]
        after = [r["frame"] for r in await conn.fetch(FRAMES)]
        assert after[:4] == before and [json.loads(f)["seq"] for f in after] == list(range(1, 9))

        await asyncio.to_thread(migrate.downgrade, dsn, BEFORE_V3)
        conn = await reconnect()
        assert [r["frame"] for r in await conn.fetch(FRAMES)] == after
        assert await conn.fetchval("SELECT to_regnamespace('zepix_hub')") is None
        again = await write_and_hear(4)
        assert [json.loads(f)["seq"] for f in again] == [9, 10, 11, 12]
        await conn.execute("UPDATE logs SET msg = 'editable again' WHERE id = 1")  # v2 had no guard

        await asyncio.to_thread(migrate.upgrade, dsn)
        conn = await reconnect()
        assert await write_and_hear(4) == ["13", "14", "15", "16"]
        frames = [json.loads(r["frame"]) for r in await conn.fetch(FRAMES)]
        assert [f["seq"] for f in frames] == list(range(1, 17))
        assert [r["frame"] for r in await conn.fetch(FRAMES)][:8] == after
    finally:
        if conn is not None:
            await conn.close()
        await pg.drop_database(name)
