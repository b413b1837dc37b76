"""Production operations: least-privilege roles, /healthz, /readyz, /metrics, OpenAPI and the AsyncAPI contract.

The role tests run the scripts of sql/roles/ as a DBA would and then use real
LOGIN roles that are members of those roles only (never superuser). Roles are
cluster-wide and the suite may share a server: the group roles' scripts are
idempotent, the login roles get unique names, and every role a test created
(group roles included, when they did not exist before) is dropped at its end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from jsonschema import Draft7Validator
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from websockets.exceptions import ConnectionClosed

from service import protocol
from service.filters import FIELDS
from service.store import migrate
from service.store.events import prune
from service.topics import ALL_TOPICS
from tests.hubs import RunningHub, connect, recv_json, recv_until, running_hub

ROOT = Path(__file__).resolve().parent.parent
ROLES_DIR = ROOT / "sql" / "roles"
ASYNCAPI_FILE = ROOT / "service" / "asyncapi.json"

GROUPS = ("zepix_hub_reader", "zepix_hub_pruner", "zepix_bot_writer")


def with_user(dsn: str, user: str, password: str) -> str:
    """The same server and database as `dsn`, logged in as another role (keeps host, port and ?host=)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


@dataclass(frozen=True)
class Logins:
    names: dict[str, str]  # "hub" | "bot" | "pruner" -> role name
    dsns: dict[str, str]


@pytest.fixture
async def logins(dsn: str, db: asyncpg.Connection) -> AsyncIterator[Logins]:
    """Run the role scripts in the test database; create one login per group role; drop after every role
    this created (group roles that already existed belong to whoever made them and stay)."""
    tag = secrets.token_hex(4)
    password = secrets.token_urlsafe(18)
    member_of = {"hub": "zepix_hub_reader", "bot": "zepix_bot_writer", "pruner": "zepix_hub_pruner"}
    names = {key: f"zepix_t_{key}_{tag}" for key in member_of}
    created: list[str] = []  # in creation order: dropped in reverse, the logins before their groups
    try:
        for group in GROUPS:
            existed = await db.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", group)
            await db.execute((ROLES_DIR / f"{group}.sql").read_text())
            if not existed:
                created.append(group)
        for key, name in names.items():
            await db.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {member_of[key]}")
            created.append(name)
        yield Logins(names, {key: with_user(dsn, name, password) for key, name in names.items()})
    finally:
        for name in reversed(created):
            await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
            # Revokes the grants in this database (and on it), so that DROP ROLE cannot fail on them.
            await db.execute(f"DROP OWNED BY {name}")
            try:
                await db.execute(f"DROP ROLE {name}")
            except asyncpg.DependentObjectsStillReferencedError:
                if name not in GROUPS:
                    raise
                # Another session sharing the server ran the scripts in its own database meanwhile: it uses the
                # group role now, and its grants there are not ours to revoke.


def _is_event(topic: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == "event" and (topic is None or f["topic"] == topic)


async def _close_code(ws: Any, timeout: float = 10) -> int:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await recv_json(ws, timeout)
    assert info.value.rcvd is not None, "connection dropped without a close frame"
    return info.value.rcvd.code


async def _denied(conn: asyncpg.Connection, sql: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(sql)


# -- least privilege --------------------------------------------------------------------------------------

ACLS = """SELECT 'rel ' || relname, relacl::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
           UNION ALL SELECT 'fn ' || oid::regprocedure::text, proacl::text FROM pg_proc
                      WHERE pronamespace = 'public'::regnamespace
           UNION ALL SELECT 'db', datacl::text FROM pg_database WHERE datname = current_database()
           ORDER BY 1"""


async def test_role_scripts_are_idempotent(db: asyncpg.Connection, logins: Logins) -> None:
    before = await db.fetch(ACLS)
    assert {g for g in GROUPS if any(g in (acl or "") for _, acl in before)} == set(GROUPS)
    for group in GROUPS:  # the fixture ran them once already
        await db.execute((ROLES_DIR / f"{group}.sql").read_text())
    assert await db.fetch(ACLS) == before
    rows = await db.fetch("SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = ANY($1)", list(GROUPS))
    assert sorted((r["rolname"], r["rolcanlogin"], r["rolsuper"]) for r in rows) == [
        (g, False, False) for g in sorted(GROUPS)]


async def test_hub_runs_as_a_reader_only_login(db: asyncpg.Connection, logins: Logins) -> None:
    name = logins.names["hub"]
    conn = await asyncpg.connect(logins.dsns["hub"])
    try:
        me = await conn.fetchrow("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                                 "WHERE rolname = current_user")
        assert me is not None and not any(me.values())
        groups = await conn.fetch("SELECT g.rolname FROM pg_auth_members AS m JOIN pg_roles AS g ON g.oid = m.roleid "
                                  "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)")
        assert [g["rolname"] for g in groups] == ["zepix_hub_reader"]
        # A hub's login has no write path: not the tables, not the SECURITY DEFINER functions.
        for sql in ("INSERT INTO logs (level, msg) VALUES ('INFO', 'x')", "UPDATE trades SET status = 'OPEN'",
                    "DELETE FROM events", "UPDATE event_retention SET pruned_through = 0",
                    "SELECT nextval('events_seq')", "SELECT hub_notify('info', 'forged')",
                    "SELECT hub_append_event_v1('log_stream', 'INSERT', NULL, NULL, '{}')",
                    "SELECT hub_append_event_v2('log_stream', 'INSERT', NULL, NULL, '{}')",
                    "SELECT zepix_hub.hub_append_event_v3('log_stream', 'INSERT', NULL, NULL, '{}')",
                    "SELECT hub_prune_logs_v1(interval '1 day')",
                    "SELECT * FROM zepix_hub.commit_order"):
            await _denied(conn, sql)
    finally:
        await conn.close()

    bot = await asyncpg.connect(logins.dsns["bot"])
    try:
        async with running_hub(logins.dsns["hub"], auto_migrate=False) as hub:
            token = hub.token()
            async with await connect(f"{hub.ws}?token={token}&topics=trade_update,log_stream") as ws:
                assert (await recv_json(ws))["type"] == "welcome"
                await bot.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
                await bot.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'hello')")
                trade = await recv_until(ws, _is_event("trade_update"))
                line = await recv_until(ws, _is_event("log_stream"))
                assert (trade["seq"], trade["data"]["op"]) == (1, "INSERT")
                assert (line["seq"], line["data"]["msg"]) == (2, "hello")

            await bot.execute("UPDATE trades SET status = 'OPEN' WHERE id = 1")  # while nobody is connected
            async with await connect(f"{hub.ws}?token={token}&topics=trade_update,log_stream&since=2") as ws:
                assert (await recv_json(ws))["resume"] is True
                missed = await recv_json(ws)
                assert (missed["seq"], missed["data"]["op"], missed["data"]["changed"]) == (3, "UPDATE", ["status"])
                replayed = await recv_json(ws)
                assert replayed == {"type": "replayed", "since": 2, "head": 3, "count": 1, "recovered": True,
                                    "epoch": hub.hub.listener.epoch}

            async with httpx.AsyncClient(base_url=hub.http, timeout=10,
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                page = (await http.get("/api/events", params={"since": 0})).json()
                assert [e["seq"] for e in page["events"]] == [1, 2, 3] and page["head"] == 3
                snap = (await http.get("/api/snapshot")).json()
                assert snap["head"] == 3 and [t["status"] for t in snap["open_trades"]] == ["OPEN"]
                assert [line["msg"] for line in snap["logs"]] == ["hello"]
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["migration"] == migrate.head_revision()

            # Both of the hub's connections really are the reader login, named for pg_stat_activity.
            seen = await db.fetch("SELECT DISTINCT application_name FROM pg_stat_activity "
                                  "WHERE usename = $1 AND datname = current_database()", name)
            assert {"zepix-hub-listener", "zepix-hub-pool"} <= {r["application_name"] for r in seen}
    finally:
        await bot.close()


async def test_bot_writer_writes_trades_and_logs_but_not_events(db: asyncpg.Connection, logins: Logins) -> None:
    bot = await asyncpg.connect(logins.dsns["bot"])
    try:
        tid = await bot.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('ETHUSDT', 'SELL', 2) "
                                 "RETURNING id")
        await bot.execute("UPDATE trades SET status = 'OPEN', updated_at = now() WHERE id = $1", tid)
        await bot.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'broker down', 'broker')")
        assert await bot.fetchval("SELECT hub_notify('warning', 'Broker slow', 'acks take 3 s')") == 5
        await bot.execute("DELETE FROM trades WHERE id = $1", tid)
        assert await bot.fetchval("SELECT nextval(pg_get_serial_sequence('logs', 'id'))") >= 2
        for sql in ("SELECT * FROM events", "SELECT * FROM event_log_status", "SELECT * FROM event_retention",
                    "INSERT INTO events (seq, topic, op, payload) VALUES (99, 'log_stream', 'INSERT', '{}')",
                    "DELETE FROM events", "UPDATE event_retention SET pruned_through = 99",
                    "SELECT nextval('events_seq')", "SELECT hub_notify_v1('info', 'around the stable name')",
                    "SELECT hub_append_event_v1('trade_update', 'INSERT', 'trades', '1', '{}')",
                    "SELECT hub_notify_v2('info', 'around the stable name')",
                    "SELECT hub_append_event_v2('trade_update', 'INSERT', 'trades', '1', '{}')",
                    "SELECT zepix_hub.hub_notify_v3('info', 'around the stable name')",
                    "SELECT zepix_hub.hub_append_event_v3('trade_update', 'INSERT', 'trades', '1', '{}')",
                    "SELECT * FROM zepix_hub.commit_order",
                    "UPDATE logs SET msg = 'rewritten'", "DELETE FROM logs", "SELECT hub_prune_logs_v1('0')",
                    "TRUNCATE trades", "ALTER TABLE trades DISABLE TRIGGER trades_event_v3"):
            await _denied(bot, sql)
    finally:
        await bot.close()
    rows = await db.fetch("SELECT seq, topic, op, payload FROM events ORDER BY seq")
    assert [(r["seq"], r["topic"], r["op"]) for r in rows] == [
        (1, "trade_update", "INSERT"), (2, "trade_update", "UPDATE"), (3, "log_stream", "INSERT"),
        (4, "notification", "INSERT"), (5, "notification", "NOTIFY"), (6, "trade_update", "DELETE")]
    assert json.loads(rows[4]["payload"])["title"] == "Broker slow"


async def test_pruning_takes_the_pruner_role(db: asyncpg.Connection, logins: Logins) -> None:
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'old ' || g FROM generate_series(1, 5) AS g")
    for key in ("hub", "bot"):
        conn = await asyncpg.connect(logins.dsns[key])
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await prune(conn, timedelta(0))
        finally:
            await conn.close()
    conn = await asyncpg.connect(logins.dsns["pruner"])  # a cron job's login: zepix_hub_pruner alone
    try:
        assert await prune(conn, timedelta(0), batch=2) == (5, 5)
    finally:
        await conn.close()
    assert await db.fetchval("SELECT pruned_through FROM event_retention") == 5
    assert await db.fetchval("SELECT count(*) FROM events") == 0


# What docs/dba.md ("After a restore") tells a DBA to run before the bot and the hubs start again.
RESTORE_FENCE = (ROOT / "sql" / "ops" / "fence_after_restore.sql").read_text()


async def test_restore_fence_makes_clients_from_before_the_restore_reload(hub: RunningHub,
                                                                          db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'lost ' || g FROM generate_series(1, 5) AS g")
    # A client applied seq 1..5. The database comes back at an earlier point (PITR, failover to a lagging
    # replica, an older dump): only 1..3 exist there, and the sequence continues from 3.
    await db.execute("DELETE FROM events WHERE seq > 3; SELECT setval('events_seq', 3)")
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'new ' || g FROM generate_series(1, 3) AS g")
    async with httpx.AsyncClient(base_url=hub.http, timeout=10,
                                 headers={"Authorization": f"Bearer {hub.token()}"}) as http:
        # The hazard the fence exists for: seq 4 and 5 were issued twice, and the client's resume "succeeds".
        hazard = await http.get("/api/events", params={"since": 5})
        assert hazard.status_code == 200 and [e["data"]["msg"] for e in hazard.json()["events"]] == ["new 3"]

        await db.execute(RESTORE_FENCE)
        floor = await db.fetchval("SELECT pruned_through FROM event_retention")
        assert floor == 6 + 1_000_000_000
        for since in (3, 5, 6):
            gone = await http.get("/api/events", params={"since": since})
            assert gone.status_code == 410, gone.text
        snap = (await http.get("/api/snapshot")).json()
        assert snap["head"] == floor + 1
        async with await connect(f"{hub.ws}?token={hub.token()}&since=5&topics=log_stream,notification") as ws:
            await recv_json(ws)
            replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
            assert (replayed["recovered"], replayed["head"]) == (False, floor + 1)
        async with await connect(f"{hub.ws}?token={hub.token()}&since={snap['head']}&topics=log_stream") as ws:
            await recv_json(ws)
            assert (await recv_until(ws, lambda f: f["type"] == "replayed"))["recovered"] is True
            await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'after the fence')")
            live = await recv_until(ws, _is_event("log_stream"))
            assert (live["seq"], live["data"]["msg"]) == (floor + 2, "after the fence")


# -- health, readiness, metrics ---------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _metrics(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


async def _wait_metrics(http: httpx.AsyncClient, pred: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Gauges move on the heartbeat (0.5 s in tests): poll until `pred` holds; `timeout` is a hang guard."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await _metrics(http)
        if pred(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def _wait_ready(http: httpx.AsyncClient, status: int, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            body: dict[str, Any] = response.json()
            return body
        await asyncio.sleep(0.1)


async def test_health_readiness_and_metrics(db: asyncpg.Connection, logins: Logins) -> None:
    name = logins.names["hub"]
    expected = migrate.head_revision()
    async with running_hub(logins.dsns["hub"], auto_migrate=False) as hub, \
            httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
        health = await http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "problems": [], "checks": {
            "listener": True, "migration": expected, "expected_migration": expected, "head": 0, "last_dispatched": 0}}

        token = hub.token()
        async with await connect(f"{hub.ws}?token={token}&topics=log_stream") as ws:
            await recv_json(ws)
            await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'counted')")
            await recv_until(ws, _is_event("log_stream"))
            m = await _wait_metrics(http, lambda m: m.get(("zepix_hub_connections", ())) == 1)
            assert m[("zepix_hub_connections", ())] == 1
        assert m[("zepix_hub_events_dispatched_total", (("topic", "log_stream"),))] == 1
        async with await connect(f"{hub.ws}?token={token}&topics=log_stream&since=0") as ws:
            assert (await recv_until(ws, lambda f: f["type"] == "replayed"))["recovered"] is True
        async with await connect(f"{hub.ws}?token=not-a-jwt") as ws:
            assert await _close_code(ws) == protocol.CLOSE_UNAUTHORIZED
        m = await _wait_metrics(http, lambda m: m.get(("zepix_hub_connections", ())) == 0)
        assert m[("zepix_hub_connections", ())] == 0
        assert m[("zepix_hub_resumes_total", (("recovered", "true"),))] == 1
        assert m[("zepix_hub_replayed_events_total", ())] == 1
        assert m[("zepix_hub_disconnects_total", (("code", "4001"),))] == 1
        assert m[("zepix_hub_listener_lag_events", ())] == 0
        assert m[("zepix_hub_listener_up", ())] == 1
        assert 0 <= m[("zepix_hub_notify_queue_usage", ())] < 0.01
        assert m[("zepix_hub_commit_to_send_seconds_count", ())] == 1

        # The database is at a migration this hub does not expect.
        await db.execute("UPDATE alembic_version SET version_num = 'bogus_rev'")
        try:
            response = await http.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "not ready" and body["checks"]["migration"] == "bogus_rev"
            assert body["problems"] == [f"database is at migration bogus_rev, expected {expected}: "
                                        "run zepix-hub migrate"]
        finally:
            await db.execute("UPDATE alembic_version SET version_num = $1", expected)
        await _wait_ready(http, 200)

        # The listener loses its connection and the database refuses the hub's login for a while.
        async with await connect(f"{hub.ws}?token={token}&topics=notification,sys_status") as ws:
            await recv_json(ws)
            await db.execute(f"ALTER ROLE {name} NOLOGIN")
            try:
                ended = await db.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = $1 AND application_name = 'zepix-hub-listener'", name)
                assert ended == 1
                body = await _wait_ready(http, 503)
                assert body["problems"] == ["listener is not connected to the database"]
                assert body["checks"]["listener"] is False
                lost = await recv_until(ws, _is_event("notification"))
                assert (lost["seq"], lost["data"]["title"]) == (None, "Connection Lost")
                degraded = await recv_until(ws, lambda f: _is_event("sys_status")(f)
                                            and f["data"]["status"] == "DEGRADED")
                assert degraded["data"]["listener"] == "down"
                m = await _metrics(http)
                assert m[("zepix_hub_listener_up", ())] == 0
                assert m[("zepix_hub_listener_reconnects_total", ())] >= 1
            finally:
                await db.execute(f"ALTER ROLE {name} LOGIN")
            await _wait_ready(http, 200)
            restored = await recv_until(ws, _is_event("notification"))
            assert restored["data"]["title"] == "Connection Restored"
            _validators()["notification"](lost)
            _validators()["notification"](restored)
            _validators()["sysStatus"](degraded)


async def test_server_initiated_closes_are_counted_by_code(hub: RunningHub) -> None:
    """zepix_hub_disconnects_total counts every close the hub makes, not only refusals at connect."""
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
        await recv_json(ws)
        for _ in range(500):
            await ws.send('{"type": "ping"}')
        assert await _close_code(ws) == protocol.CLOSE_POLICY
    async with httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
        key = ("zepix_hub_disconnects_total", (("code", str(protocol.CLOSE_POLICY)),))
        m = await _wait_metrics(http, lambda m: key in m, timeout=3)
        assert m.get(key) == 1


@pytest.mark.parametrize("topics", [None, "log_stream,notification"])
async def test_the_largest_resume_cap_still_resumes(dsn: str, db: asyncpg.Connection, topics: str | None) -> None:
    """HUB_RESUME_CAP's ceiling is safe in SQL: cap + 1 is a bigint LIMIT (2**63 - 1 closed every resume 1011)."""
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'line ' || g FROM generate_series(1, 3) AS g")
    async with running_hub(dsn, resume_cap=10**9) as hub:
        query = f"&topics={topics}" if topics else ""
        async with await connect(f"{hub.ws}?token={hub.token()}&since=0{query}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
            assert (replayed["recovered"], replayed["head"], replayed["count"]) == (True, 3, 3)


async def test_openapi_documents_the_http_api(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
    events = spec["paths"]["/api/events"]["get"]
    assert {"200", "401", "403", "410", "422"} <= set(events["responses"])
    assert {"since", "topics", "limit", "epoch"} <= {p["name"] for p in events["parameters"]}
    gone = events["responses"]["410"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(spec["components"]["schemas"][gone]["required"]) == {"detail", "oldest", "head", "epoch"}
    snapshot = spec["paths"]["/api/snapshot"]["get"]
    assert {"200", "401", "403"} <= set(snapshot["responses"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


# -- AsyncAPI ---------------------------------------------------------------------------------------------

SERVER_MESSAGES = {"welcome", "tradeUpdate", "logStream", "notification", "sysStatus", "replayed", "error",
                   "pong", "topics", "refreshed"}
CLIENT_MESSAGES = {"ping", "subscribe", "unsubscribe", "refresh"}
EVENT_MESSAGES = {"trade_update": "tradeUpdate", "log_stream": "logStream", "notification": "notification",
                  "sys_status": "sysStatus"}
DOC_URI = "https://zepix-hub.invalid/asyncapi.json"


def _asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ASYNCAPI_FILE.read_text())
    return doc


def _validators() -> dict[str, Callable[[dict[str, Any]], None]]:
    """One validator per message of the document; payload $refs resolve inside the document itself."""
    doc = _asyncapi()
    registry: Registry[Any] = Registry().with_resource(DOC_URI, Resource.from_contents(doc, DRAFT7))
    return {key: Draft7Validator({"$ref": f"{DOC_URI}#/components/messages/{key}/payload"},
                                 registry=registry).validate
            for key in doc["components"]["messages"]}


def _message_of(frame: dict[str, Any]) -> str:
    return EVENT_MESSAGES[frame["topic"]] if frame["type"] == "event" else str(frame["type"])


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in obj.values() for r in _refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_asyncapi_document_structure() -> None:
    doc = _asyncapi()
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["version"] and doc["defaultContentType"] == "application/json"
    for server in doc["servers"].values():
        assert server["protocol"] in ("ws", "wss") and server["host"] == "{host}"
        assert server["variables"]["host"]["default"]
    for ref in _refs(doc):  # every $ref of the document resolves
        _resolve(doc, ref)

    channel = doc["channels"]["live"]
    assert channel["address"] == "/ws/live"
    binding = channel["bindings"]["ws"]
    row_filters = {f"{topic}.{field}" for topic, fields in FIELDS.items() for field in fields}
    assert binding["method"] == "GET" and set(binding["query"]["properties"]) == {"token", "topics", "since",
                                                                                          "epoch"} | row_filters
    close_codes = {v for k, v in vars(protocol).items() if k.startswith("CLOSE_") and k != "CLOSE_NORMAL"}
    assert set(channel["x-close-codes"]) == {str(c) for c in close_codes}
    assert all(str(code) in channel["description"] for code in close_codes)

    messages = doc["components"]["messages"]
    assert set(messages) == SERVER_MESSAGES | CLIENT_MESSAGES
    assert {r["$ref"] for r in channel["messages"].values()} == {f"#/components/messages/{m}" for m in messages}
    sent: set[str] = set()
    received: set[str] = set()
    for op in doc["operations"].values():
        assert op["channel"] == {"$ref": "#/channels/live"}
        names = {r["$ref"].removeprefix("#/channels/live/messages/") for r in op["messages"]}
        (sent if op["action"] == "send" else received).update(names)
        if "reply" in op:
            sent |= {r["$ref"].removeprefix("#/channels/live/messages/") for r in op["reply"]["messages"]}
    assert (sent, received) == (SERVER_MESSAGES, CLIENT_MESSAGES)

    schemas = doc["components"]["schemas"]
    assert set(schemas["Topic"]["enum"]) == ALL_TOPICS
    session_source = (ROOT / "service" / "api" / "session.py").read_text()
    assert set(re.findall(r'error\(\s*"(\w+)"', session_source)) <= set(schemas["Error"]["properties"]["code"]["enum"])
    validators = _validators()
    for key, message in messages.items():
        Draft7Validator.check_schema(_resolve(doc, message["payload"]["$ref"]))
        assert message["examples"], key
        for example in message["examples"]:
            validators[key](example["payload"])


async def test_real_frames_match_the_asyncapi_schemas(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
        served = await http.get("/asyncapi.json")
    assert served.status_code == 200 and served.json() == _asyncapi()

    captured: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def keep(frame: dict[str, Any]) -> dict[str, Any]:
        captured[_message_of(frame)].append(frame)
        return frame

    token = hub.token(sub="schema")
    async with await connect(f"{hub.ws}?token={token}") as ws:
        keep(await recv_json(ws))
        keep(await recv_until(ws, _is_event("sys_status")))
        await db.execute("INSERT INTO trades (symbol, side, quantity, entry_price, stop_loss, strategy, extra) "
                         """VALUES ('BTCUSDT', 'BUY', 0.5, 91000, 89000, 'breakout', '{"tag": "t1"}')""")
        await db.execute("UPDATE trades SET status = 'OPEN', filled_quantity = 0.5, fill_price = 91010.5, "
                         "updated_at = now()")
        await db.execute("UPDATE trades SET status = 'CLOSED', close_reason = 'TP_HIT', exit_price = 95000, "
                         "realized_pnl = 1994.75, closed_at = now()")
        await db.execute("""INSERT INTO logs (level, msg, source, context)
                            VALUES ('ERROR', 'order rejected', 'broker', '{"order": 1}')""")
        await db.execute("SELECT hub_notify('success', 'Deployed')")
        await db.execute("DELETE FROM trades")
        while len([f for fs in captured.values() for f in fs if f.get("seq")]) < 7:
            frame = await recv_json(ws)
            if frame["type"] == "event":
                keep(frame)
        ops = [f["data"]["op"] for f in captured["tradeUpdate"]]
        assert ops == ["INSERT", "UPDATE", "UPDATE", "DELETE"]

        async def ask(message: dict[str, Any], kind: str) -> None:
            await ws.send(json.dumps(message))
            keep(await recv_until(ws, lambda f: f["type"] == kind))

        await ask({"type": "ping"}, "pong")
        await ask({"type": "unsubscribe", "topics": ["log_stream"]}, "topics")
        await ask({"type": "subscribe", "topics": ["weather"]}, "error")
        await ask({"type": "refresh", "token": hub.token(sub="schema", topics=["sys_status", "notification"])},
                  "refreshed")
        await ask({"type": "refresh", "token": hub.token(sub="someone else")}, "error")
    for since in (2, 999):  # recovered, then not (ahead of the head)
        async with await connect(f"{hub.ws}?token={token}&since={since}&topics=trade_update") as ws:
            keep(await recv_json(ws))
            while (frame := keep(await recv_json(ws)))["type"] != "replayed":
                pass
    async with await connect(f"{hub.ws}?token={token}&topics=weather") as ws:
        keep(await recv_json(ws))
        assert await _close_code(ws) == protocol.CLOSE_BAD_REQUEST

    assert set(captured) == SERVER_MESSAGES
    assert {f["recovered"] for f in captured["replayed"]} == {True, False}
    validators = _validators()
    for key, sample in captured.items():
        for frame in sample:
            validators[key](frame)

    # The schemas are strict enough to catch a wrong frame, not just any JSON object.
    from jsonschema import ValidationError

    trade = captured["tradeUpdate"][0]
    wrong: list[tuple[str, dict[str, Any]]] = [
        ("welcome", {k: v for k, v in captured["welcome"][0].items() if k != "head"}),
        ("sysStatus", {**captured["sysStatus"][0], "seq": 5}),
        ("tradeUpdate", {**trade, "data": {**trade["data"], "trade": {**trade["data"]["trade"], "status": "LOST"}}}),
        ("tradeUpdate", {**trade, "data": {**trade["data"], "op": "UPDATE"}}),  # an UPDATE must name columns
        ("logStream", {**captured["logStream"][0], "topic": "trade_update"}),
        ("notification", {**captured["notification"][0], "data": {"type": "fatal", "title": "x"}}),
        ("replayed", {**captured["replayed"][0], "recovered": "yes"}),
        ("error", {**captured["error"][0], "code": "oops"}),
    ]
    for key, frame in wrong:
        with pytest.raises(ValidationError):
            validators[key](frame)


async def test_dashboard_and_its_assets_are_revalidated_on_every_load(hub: RunningHub) -> None:
    """After an upgrade a browser must not run yesterday's app.js: every asset says no-cache, and an
    unchanged one costs a 304."""
    async with httpx.AsyncClient(base_url=hub.http) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
        for asset in ("static/app.js", "static/style.css", "static/favicon.svg"):
            assert asset in page.text
            first = await http.get("/" + asset)
            assert first.status_code == 200 and first.headers["cache-control"] == "no-cache", asset
            again = await http.get("/" + asset, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304, asset
        assert (await http.get("/static/nope.js")).status_code == 404


async def test_dashboard_asset_urls_change_with_their_content(hub: RunningHub, tmp_path: Path) -> None:
    """A new release's files have new URLs (a browser, proxy or CDN cannot serve the old ones for them);
    the current URL may be cached for good, any other is revalidated."""
    async with httpx.AsyncClient(base_url=hub.http) as http:
        page = (await http.get("/")).text
        links = re.findall(r'(?:href|src)="(static/[^"]+)"', page)
        assert {link.split("?")[0] for link in links} == {"static/app.js", "static/style.css", "static/favicon.svg"}
        for link in links:
            path, _, query = link.partition("?")
            assert re.fullmatch(r"v=[0-9a-f]{12}", query), link
            served = await http.get("/" + link)
            assert served.status_code == 200
            assert query == "v=" + hashlib.sha256(served.content).hexdigest()[:12], link
            assert served.headers["cache-control"] == "public, max-age=31536000, immutable", link
            for stale in ("/" + path, f"/{path}?v=000000000000"):  # a page from before an upgrade asks for these
                again = await http.get(stale)
                assert again.status_code == 200 and again.headers["cache-control"] == "no-cache", stale

    from service.api.assets import STATIC_DIR, index_html, version

    copy = tmp_path / "static"
    shutil.copytree(STATIC_DIR, copy)
    before = index_html(copy)
    (copy / "app.js").write_bytes((copy / "app.js").read_bytes() + b"\n// the next release\n")
    index_html.cache_clear(), version.cache_clear()
    after = index_html(copy)
    index_html.cache_clear(), version.cache_clear()

    def versions(html: str) -> dict[str, str]:
        return dict(re.findall(r'"static/([^"?]+)\?v=([0-9a-f]+)"', html))

    assert versions(before)["app.js"] != versions(after)["app.js"]
    assert versions(before)["style.css"] == versions(after)["style.css"]
