"""What an ordinary database login, or a DBA's legal setting, can do to the event log (issue 11).

Each test plays the attacker (or the unusual DBA) against a real PostgreSQL with real LOGIN roles. The
roles get unique names and are dropped at the end: the suite may run on a server shared with others
(HUB_TEST_DATABASE_URL), where roles are cluster-wide. The reader and the writer get exactly the grants
of sql/roles/zepix_hub_reader.sql and zepix_bot_writer.sql, applied to those unique names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from service.cli import doctor
from service.errors import DatabaseSetupError
from service.store import migrate
from tests.hubs import hub_settings
from tests.pg import scratch_bindirs, scratch_cluster

ROOT = Path(__file__).resolve().parent.parent
ROLES_DIR = ROOT / "sql" / "roles"
CHANNEL = "zepix_hub_events"


def as_login(dsn: str, user: str) -> str:
    """The same server and database as `dsn`, as another role (the test servers trust local logins)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


@contextlib.asynccontextmanager
async def logins(db: asyncpg.Connection, *kinds: str) -> AsyncIterator[dict[str, str]]:
    """LOGIN roles with unique names: "connect" (CONNECT only, what PUBLIC has), "reader" and "writer" (the
    grants of the role scripts), "pruner". Yields kind -> role name; drops them on every path."""
    scripts = {"reader": "zepix_hub_reader", "writer": "zepix_bot_writer", "pruner": "zepix_hub_pruner"}
    tag = uuid.uuid4().hex[:10]
    names = {kind: f"zepix_t_{kind}_{tag}" for kind in kinds}
    created: list[str] = []
    try:
        for kind, name in names.items():
            await db.execute(f"CREATE ROLE {name} LOGIN")
            created.append(name)
            if kind in scripts:
                # The script creates its group role only if missing: ours exists, so it grants to it.
                await db.execute((ROLES_DIR / f"{scripts[kind]}.sql").read_text().replace(scripts[kind], name))
        yield names
    finally:
        for name in reversed(created):
            await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
            await db.execute(f"DROP OWNED BY {name}")
            await db.execute(f"DROP ROLE {name}")


async def _events(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT seq, topic, op, source_id, payload::text AS payload FROM events ORDER BY seq")


# -- item 1: no look-alike function or operator runs inside the capture path ----------------------------------

#: For every name the capture path calls (today's and tomorrow's), a look-alike in public that records that
#: it ran, as whom, and then behaves like the real one, so nothing else in the test changes. The first ones
#: match an unqualified call better than pg_catalog's own (an int4 key, an untyped literal), the rest match
#: exactly and would only win where public came before pg_catalog.
PLANTS = {
    "pg_advisory_xact_lock(integer)": ("void", "PERFORM pg_catalog.pg_advisory_xact_lock($1::bigint)"),
    "pg_advisory_xact_lock(bigint)": ("void", "PERFORM pg_catalog.pg_advisory_xact_lock($1)"),
    "nextval(text)": ("bigint", "RETURN pg_catalog.nextval($1::regclass)"),
    "clock_timestamp()": ("timestamptz", "RETURN pg_catalog.clock_timestamp()"),
    "pg_notify(text, text)": ("void", "PERFORM pg_catalog.pg_notify($1, $2)"),
    "set_config(text, text, boolean)": ("text", "RETURN pg_catalog.set_config($1, $2, $3)"),
    "current_setting(text)": ("text", "RETURN pg_catalog.current_setting($1)"),
    "current_setting(text, boolean)": ("text", "RETURN pg_catalog.current_setting($1, $2)"),
    "octet_length(text)": ("integer", "RETURN pg_catalog.octet_length($1)"),
    "lower(text)": ("text", "RETURN pg_catalog.lower($1)"),
    "initcap(text)": ("text", "RETURN pg_catalog.initcap($1)"),
    "left(text, integer)": ("text", "RETURN pg_catalog.left($1, $2)"),
    "to_json(text)": ("json", "RETURN pg_catalog.to_json($1)"),
    "to_char(timestamp, text)": ("text", "RETURN pg_catalog.to_char($1, $2)"),
    "row_to_json(anyelement)": ("json", "RETURN pg_catalog.row_to_json($1)"),
    "to_jsonb(anyelement)": ("jsonb", "RETURN pg_catalog.to_jsonb($1)"),
    "pg_has_role(name, oid, text)": ("boolean", "RETURN pg_catalog.pg_has_role($1, $2, $3)"),
}
OPERATOR_PLANTS = {  # operator -> (left, right, the real function it imitates)
    "=": ("text", "text", "texteq"),
    ">": ("integer", "integer", "int4gt"),
    "||": ("text", "text", "textcat"),
}


async def _plant(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE public.plant_calls (plant text, ran_as text)")
    await conn.execute("GRANT INSERT ON public.plant_calls TO PUBLIC")
    for signature, (returns, body) in PLANTS.items():
        await conn.execute(f"""
            CREATE FUNCTION public.{signature} RETURNS {returns} LANGUAGE plpgsql AS $plant$
            BEGIN
                INSERT INTO public.plant_calls VALUES ('{signature}', current_user);
                {body};
            END $plant$""")
    for op, (left, right, real) in OPERATOR_PLANTS.items():
        fn = f"plant_op_{real}"
        await conn.execute(f"""
            CREATE FUNCTION public.{fn}({left}, {right}) RETURNS {'text' if op == '||' else 'boolean'}
            LANGUAGE plpgsql AS $plant$
            BEGIN
                INSERT INTO public.plant_calls VALUES ('operator {op}', current_user);
                RETURN pg_catalog.{real}($1, $2);
            END $plant$""")
        await conn.execute(f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})")


async def test_look_alike_functions_in_a_writable_public_never_run_in_the_capture_path(
        dsn: str, db: asyncpg.Connection) -> None:
    """CREATE on public granted to everyone (PostgreSQL 13/14's default): a writer plants look-alikes of every
    name the capture path calls, puts public first in its own search_path, and writes. None of them runs."""
    await db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    async with logins(db, "writer") as role:
        bot = await asyncpg.connect(as_login(dsn, role["writer"]))
        try:
            await _plant(bot)
            await bot.execute("SET search_path = public, pg_catalog")
            tid = await bot.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1) "
                                     "RETURNING id")
            await bot.execute("UPDATE trades SET status = 'OPEN' WHERE id = $1", tid)
            await bot.execute("DELETE FROM trades WHERE id = $1", tid)
            await bot.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'broker down', 'broker')")
            await bot.execute("SELECT hub_notify('info', 'by hand', 'body')")
            async with bot.transaction():  # the same, several rows and both tables in one commit
                await bot.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('Y', 'SELL', 2)")
                await bot.execute("INSERT INTO logs (level, msg) VALUES ('CRITICAL', 'halt')")
        finally:
            await bot.close()
        ran = await db.fetch("SELECT plant, ran_as FROM public.plant_calls")
        assert [(r["plant"], r["ran_as"]) for r in ran] == []
        events = await _events(db)
        assert [(e["seq"], e["topic"], e["op"]) for e in events] == [
            (1, "trade_update", "INSERT"), (2, "trade_update", "UPDATE"), (3, "trade_update", "DELETE"),
            (4, "log_stream", "INSERT"), (5, "notification", "INSERT"), (6, "notification", "NOTIFY"),
            (7, "trade_update", "INSERT"), (8, "log_stream", "INSERT"), (9, "notification", "INSERT")]


async def test_migrate_and_doctor_refuse_a_schema_others_can_create_in(dsn: str, db: asyncpg.Connection) -> None:
    """One line naming the grant to revoke, for public (where the bot's tables and hub_notify are, and which
    the functions of older revisions search) and for zepix_hub (the capture path's own schema)."""
    assert await _path_problems(dsn) == []
    await asyncio.to_thread(migrate.upgrade, dsn)  # at head: a clean database migrates
    for grant, revoke in (
            ("GRANT CREATE ON SCHEMA public TO PUBLIC", "REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
            ("GRANT CREATE ON SCHEMA zepix_hub TO {role}", "REVOKE CREATE ON SCHEMA zepix_hub FROM {role}")):
        async with logins(db, "connect") as role:
            await db.execute(grant.format(role=role["connect"]))
            expected = revoke.format(role=role["connect"])
            with pytest.raises(DatabaseSetupError) as refused:
                await asyncio.to_thread(migrate.upgrade, dsn)
            message = str(refused.value)
            assert "\n" not in message and expected in message, message
            problems = await _path_problems(dsn)
            assert len(problems) == 1 and problems[0].status == "FAIL", problems
            assert expected in (problems[0].fix or ""), problems[0]
            await db.execute(expected)
    assert await _path_problems(dsn) == []


async def _path_problems(dsn: str) -> list[doctor.Result]:
    results = await doctor.run_checks(hub_settings(dsn), lambda _r: None)
    return [r for r in results if not r.passed]


# -- item 2: LISTEN needs no grant, so the payload carries nothing but a seq ------------------------------------

async def test_a_connect_only_login_listening_learns_no_field_of_a_trade(dsn: str, db: asyncpg.Connection) -> None:
    async with logins(db, "connect") as role:
        spy = await asyncpg.connect(as_login(dsn, role["connect"]))
        heard: list[str] = []
        try:
            await spy.add_listener(CHANNEL, lambda *args: heard.append(args[3]))
            trade = await db.fetchrow(
                "INSERT INTO trades (id, symbol, side, order_type, quantity, entry_price, stop_loss, strategy, "
                "broker_order_ref, extra) VALUES (987654321, 'SECRETUSDT', 'SELL', 'LIMIT', 3.25, 43210.987, "
                "44444.5, 'strategy-secret', 'BROKER-REF-7f3a', '{\"fee\": \"extra-secret\"}') "
                "RETURNING to_jsonb(trades) AS row")
            await db.execute("UPDATE trades SET status = 'OPEN', fill_price = 43211.55 WHERE id = 987654321")
            await db.execute("INSERT INTO logs (level, msg, source, context) VALUES "
                             "('ERROR', 'log-secret rejected', 'source-secret', '{\"k\": \"context-secret\"}')")
            await db.execute("SELECT hub_notify('warning', 'title-secret', 'body-secret')")
            await db.execute("DELETE FROM trades WHERE id = 987654321")
            events = await _events(db)
            for _ in range(100):
                if len(heard) >= len(events):
                    break
                await asyncio.sleep(0.05)
        finally:
            await spy.close()
    assert len(events) == 6 and len(heard) == len(events), heard
    values = [json.dumps(v) if not isinstance(v, str) else v for v in json.loads(trade["row"]).values()]
    secrets = [v for v in values if len(v) >= 3] + [
        "43211.55", "log-secret", "source-secret", "context-secret", "title-secret", "body-secret", "ERROR"]
    leaked = {(payload, s) for payload in heard for s in secrets if s in payload}
    assert leaked == set()
    # What it does get is enough to ask `events`, through its grants, for the rest.
    assert [int(p) for p in heard] == [e["seq"] for e in events]


# -- item 3: no lock a login can take stalls the bot's commits -------------------------------------------------

MODES = ("ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE", "SHARE UPDATE EXCLUSIVE",
         "ROW EXCLUSIVE", "ROW SHARE", "ACCESS SHARE")


async def _take_every_lock(conn: asyncpg.Connection) -> list[str]:
    """In the open transaction of `conn`: every lock this role manages to get. Returns what it holds."""
    held: list[str] = []

    async def attempt(what: str, sql: str) -> bool:
        try:
            async with conn.transaction():  # a savepoint: a refused attempt does not end the attack
                await conn.execute(sql)
        except asyncpg.PostgresError:
            return False
        held.append(what)
        return True

    await attempt("advisory 2053468265", "SELECT pg_advisory_lock(2053468265)")
    await attempt("advisory xact 2053468265", "SELECT pg_advisory_xact_lock(2053468265)")
    await attempt("advisory 0/2053468265", "SELECT pg_advisory_lock(0, 2053468265)")
    # ANALYZE takes SHARE UPDATE EXCLUSIVE, the capture path's lock mode, and may run in a transaction block;
    # on tables the role does not own it only warns.
    await attempt("analyze", "ANALYZE")
    relations = await conn.fetch(
        "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, c.relkind "
        "  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
        "   AND c.relkind IN ('r', 'v', 'S', 'i', 'p', 'm')")
    for rel in relations:
        # (A role can also open any relation by oid without a privilege, e.g. pg_relation_size(oid), but that
        # ACCESS SHARE lock ends with the call; LOCK TABLE ... IN ACCESS SHARE MODE below holds the same mode.)
        if rel["relkind"] in ("r", "v", "p", "m"):
            for mode in MODES:  # the strongest mode it may take
                if await attempt(f"{rel['name']} {mode}", f"LOCK TABLE {rel['name']} IN {mode} MODE"):
                    break
            for strength in ("UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE"):
                if await attempt(f"{rel['name']} rows FOR {strength}",
                                 f"SELECT 1 FROM {rel['name']} FOR {strength}"):
                    break
    return held


async def test_no_login_can_hold_a_lock_that_delays_a_writers_commit(dsn: str, db: asyncpg.Connection) -> None:
    """A CONNECT-only login and the hub's reader login each hold every lock they can get, in an open
    transaction, while a writer commits trades, logs and hub_notify: each commit returns within the issue's
    100 ms, and the attacker still holds its locks afterwards."""
    async with logins(db, "connect", "reader", "writer") as role:
        bot = await asyncpg.connect(as_login(dsn, role["writer"]))
        try:
            for attacker_kind in ("connect", "reader"):
                attacker = await asyncpg.connect(as_login(dsn, role[attacker_kind]))
                try:
                    tx = attacker.transaction()
                    await tx.start()
                    held = await _take_every_lock(attacker)
                    assert any(h.startswith("advisory") for h in held)  # the attack of today is there
                    timings = []
                    for write in ("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)",
                                  "INSERT INTO logs (level, msg) VALUES ('ERROR', 'x')",
                                  "SELECT hub_notify('info', 'x')"):
                        for _ in range(3):
                            started = time.monotonic()
                            try:
                                await asyncio.wait_for(bot.execute(write), 5)
                            except TimeoutError:
                                raise AssertionError(f"{attacker_kind} login holding {held} stalled: {write}") \
                                    from None
                            timings.append(time.monotonic() - started)
                        # The fastest of three: one slow fsync on a shared machine is not a lock wait; a lock
                        # held by the attacker would delay all three.
                        fastest = min(timings[-3:])
                        assert fastest < 0.1, (attacker_kind, write, timings[-3:], held)
                    # Still held, all of them, after the writer committed.
                    locks = await db.fetchrow(
                        "SELECT count(*) FILTER (WHERE locktype = 'advisory') AS advisory, "
                        "       count(DISTINCT relation) AS relations "
                        "  FROM pg_locks WHERE pid = $1 AND granted", attacker.get_server_pid())
                    relations = {h.split(" ")[0] for h in held if h.startswith(("public.", "zepix_hub."))}
                    assert locks["advisory"] >= 1 and locks["relations"] >= len(relations), (locks, held)
                    await tx.rollback()
                    await attacker.execute("SELECT pg_advisory_unlock_all()")
                finally:
                    await attacker.close()
        finally:
            await bot.close()
    assert len(await _events(db)) == 2 * 3 * 4  # trades 1 + logs 2 (an ERROR) + notify 1, three times, twice


# -- item 4: an asynchronous commit does not make an event visible before it is on disk ------------------------

@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the body, continued on every path."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("bindir", scratch_bindirs(), ids=lambda b: b.name if b.name != "bin" else b.parent.name)
async def test_an_event_written_under_synchronous_commit_off_is_flushed_when_commit_returns(
        bindir: Path) -> None:
    """With the WAL writer stopped (SIGSTOP on a private server), nothing flushes an asynchronous commit; the
    control shows that. A commit that wrote events is on disk when COMMIT returns, whatever the session said."""
    async with scratch_cluster(bindir) as cluster:
        dsn = await cluster.migrated("sync")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE scratch (x int)")
            await conn.execute("SET synchronous_commit = off")
            walwriter = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
            position = "SELECT pg_current_wal_insert_lsn() AS inserted, pg_current_wal_flush_lsn() AS flushed"
            with _stopped(walwriter):
                await conn.execute("INSERT INTO scratch VALUES (1)")
                control = await conn.fetchrow(position)
                assert control["flushed"] < control["inserted"]  # the pause works: an async commit waits
                for write in ("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)",
                              "INSERT INTO logs (level, msg) VALUES ('INFO', 'x')",
                              "SELECT hub_notify('info', 'x')"):
                    await conn.execute(write)
                    after = await conn.fetchrow(position)
                    assert after["flushed"] >= after["inserted"], write
                    async with conn.transaction():  # and in an explicit transaction, with SET LOCAL
                        await conn.execute("SET LOCAL synchronous_commit = local")
                        await conn.execute(write)
                    after = await conn.fetchrow(position)
                    assert after["flushed"] >= after["inserted"], f"{write} (local)"
                # The setting is raised for that commit only, not for the session.
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
                await conn.execute("INSERT INTO scratch VALUES (2)")
                control = await conn.fetchrow(position)
                assert control["flushed"] < control["inserted"]
        finally:
            await conn.close()


# -- item 6: every change to a captured table reaches clients or is refused ------------------------------------

async def test_logs_are_append_only_except_for_pruning(dsn: str, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO logs (level, msg, ts) VALUES ('INFO', 'old', now() - interval '30 days'), "
                     "('INFO', 'new', now())")
    async with logins(db, "writer", "pruner") as role:
        # The role script no longer grants UPDATE or DELETE on logs; a hand-made grant must not open them either.
        await db.execute(f"GRANT UPDATE, DELETE ON logs TO {role['writer']}")
        bot = await asyncpg.connect(as_login(dsn, role["writer"]))
        pruner = await asyncpg.connect(as_login(dsn, role["pruner"]))
        try:
            for conn in (bot, db):  # the bot (granted UPDATE and DELETE) and the owner alike
                for change in ("UPDATE logs SET msg = 'rewritten'", "DELETE FROM logs WHERE msg = 'old'",
                               "TRUNCATE logs", "TRUNCATE trades"):
                    with pytest.raises(asyncpg.PostgresError) as refused:
                        await conn.execute(change)
                    if conn is db or "TRUNCATE" not in change:  # the bot is not granted TRUNCATE at all
                        assert "no client would see" in str(refused.value), (change, refused.value)
            # The ways around: the pruning mark set by hand (only the owner's DELETE passes with it), an upsert,
            # a MERGE (PostgreSQL 15+), both of which fire the UPDATE/DELETE statement triggers.
            await bot.execute("SET zepix_hub.pruning_logs = 'on'")
            for change in ("DELETE FROM logs WHERE msg = 'old'",
                           "INSERT INTO logs (id, level, msg) SELECT id, 'INFO', 'x' FROM logs LIMIT 1 "
                           "ON CONFLICT (id) DO UPDATE SET msg = 'rewritten'",
                           "MERGE INTO logs USING (SELECT 1) AS s ON true WHEN MATCHED THEN DELETE"):
                with pytest.raises(asyncpg.FeatureNotSupportedError, match="no client would see"):
                    await bot.execute(change)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await bot.execute("SELECT hub_prune_logs_v1(interval '7 days')")
            with pytest.raises(asyncpg.InvalidParameterValueError, match="non-negative"):
                await pruner.execute("SELECT hub_prune_logs_v1(interval '-1 day')")
            assert await pruner.fetchval("SELECT hub_prune_logs_v1(interval '7 days')") == 1
        finally:
            await bot.close()
            await pruner.close()
    assert [r["msg"] for r in await db.fetch("SELECT msg FROM logs ORDER BY id")] == ["new"]
    first = (await _events(db))[0]
    assert json.loads(first["payload"])["msg"] == "old"  # the event log keeps its history


async def test_a_trade_id_change_reaches_clients_under_both_ids(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO trades (id, symbol, side, quantity) VALUES (10, 'X', 'BUY', 1)")
    await db.execute("UPDATE trades SET id = 11, status = 'OPEN' WHERE id = 10")
    events = await _events(db)
    assert [(e["op"], e["source_id"]) for e in events] == [("INSERT", "10"), ("DELETE", "10"), ("INSERT", "11")]
    delete, insert = (json.loads(e["payload"]) for e in events[1:])
    assert delete["op"] == "DELETE" and delete["trade"]["id"] == 10 and delete["trade"]["status"] == "PENDING"
    assert insert["op"] == "INSERT" and insert["trade"]["id"] == 11 and insert["trade"]["status"] == "OPEN"


# -- item 7: what docs/dba.md says about COPY and prepared transactions ----------------------------------------

async def test_copy_fires_the_capture_triggers(db: asyncpg.Connection) -> None:
    await db.copy_records_to_table("trades", records=[("A", "BUY", 1), ("B", "SELL", 2)],
                                   columns=["symbol", "side", "quantity"])
    await db.copy_records_to_table("logs", records=[("INFO", "copied")], columns=["level", "msg"])
    assert [(e["topic"], e["op"]) for e in await _events(db)] == [
        ("trade_update", "INSERT"), ("trade_update", "INSERT"), ("log_stream", "INSERT")]


@pytest.mark.parametrize("bindir", scratch_bindirs(), ids=lambda b: b.name if b.name != "bin" else b.parent.name)
async def test_prepare_transaction_fails_for_a_transaction_that_wrote_trades_or_logs(
        bindir: Path) -> None:
    async with scratch_cluster(bindir, "-c max_prepared_transactions=2") as cluster:
        conn = await asyncpg.connect(await cluster.migrated("twophase"))
        try:
            await conn.execute("CREATE TABLE scratch (x int)")
            await conn.execute("BEGIN; INSERT INTO scratch VALUES (1); PREPARE TRANSACTION 'control'")
            await conn.execute("ROLLBACK PREPARED 'control'")  # prepared transactions work on this server
            for write in ("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)",
                          "INSERT INTO logs (level, msg) VALUES ('INFO', 'x')"):
                with pytest.raises(asyncpg.FeatureNotSupportedError, match="NOTIFY"):
                    await conn.execute(f"BEGIN; {write}; PREPARE TRANSACTION 'bot'")
                assert await conn.fetchval("SELECT count(*) FROM pg_prepared_xacts") == 0
            assert await conn.fetchval("SELECT count(*) FROM events") == 0
        finally:
            await conn.close()
