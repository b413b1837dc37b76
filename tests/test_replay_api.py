"""GET /api/events and /api/snapshot: the shapes, every bad input, prune and 410."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import httpx
import pytest

from service.store.events import ORDERED_WALK, QUERIES, EventStore, prune
from tests.hubs import RunningHub


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _seed(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'one')")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', 'two')")  # + notification
    await db.execute("UPDATE trades SET status='OPEN'")


async def test_events_after_since_in_order_shaped_like_live_frames(hub: RunningHub, db: asyncpg.Connection) -> None:
    await _seed(db)
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        body = (await http.get("/api/events", params={"since": 0})).json()
        assert [e["seq"] for e in body["events"]] == [1, 2, 3, 4, 5]
        assert (body["next_since"], body["head"], body["oldest"]) == (5, 5, 1)
        first = body["events"][0]
        assert set(first) == {"type", "topic", "seq", "ts", "data"} and first["type"] == "event"
        assert first["ts"].endswith("Z") and first["topic"] == "trade_update"

        page = (await http.get("/api/events", params={"since": 1, "limit": 2})).json()
        assert [e["seq"] for e in page["events"]] == [2, 3] and page["next_since"] == 3

        logs = (await http.get("/api/events", params={"since": 0, "topics": "log_stream"})).json()
        assert [e["seq"] for e in logs["events"]] == [2, 3]
        assert logs["next_since"] == 5  # nothing else on this topic up to head: skip ahead

        two = (await http.get("/api/events", params={"since": 0, "topics": "notification,trade_update"})).json()
        assert [e["topic"] for e in two["events"]] == ["trade_update", "notification", "trade_update"]

        empty = (await http.get("/api/events", params={"since": 5})).json()
        assert empty["events"] == [] and empty["next_since"] == 5


@pytest.mark.parametrize("params, status, needle", [
    ({}, 422, "since"),
    ({"since": "-1"}, 422, "greater than or equal"),
    ({"since": "abc"}, 422, "integer"),
    ({"since": "1.5"}, 422, "integer"),
    ({"since": str(2**63)}, 422, "less than or equal"),
    ({"since": "99999999999999999999999999"}, 422, ""),
    ({"since": "0", "limit": "0"}, 422, "greater than or equal"),
    ({"since": "0", "limit": "1001"}, 422, "less than or equal"),
    ({"since": "0", "limit": "x"}, 422, "integer"),
    ({"since": "0", "topics": "bogus"}, 422, "unknown topic"),
    ({"since": "0", "topics": ""}, 422, "no topic"),
    ({"since": "0", "topics": "x" * 500}, 422, "at most"),
    ({"since": "7"}, 410, "ahead of the log"),
])
async def test_bad_parameters_get_a_clear_4xx(hub: RunningHub, params: dict[str, str], status: int,
                                              needle: str) -> None:
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        r = await http.get("/api/events", params=params)
    assert r.status_code == status, r.text
    assert needle in r.text


@pytest.mark.parametrize("headers, needle", [
    ({}, "missing bearer token"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing bearer token"),
    ({"Authorization": "Bearer"}, "missing bearer token"),
    ({"Authorization": "Bearer ...."}, "malformed token"),
    ({"Authorization": "Bearer not.a.jwt"}, "malformed token"),
])
async def test_missing_or_bad_token_is_401(hub: RunningHub, headers: dict[str, str], needle: str) -> None:
    async with httpx.AsyncClient(base_url=hub.http) as http:
        for path in ("/api/events?since=0", "/api/snapshot"):
            r = await http.get(path, headers=headers)
            assert r.status_code == 401 and needle in r.json()["detail"]
            assert r.headers["www-authenticate"].startswith("Bearer")


async def test_expired_token_is_401_and_forbidden_topic_is_403(hub: RunningHub, db: asyncpg.Connection) -> None:
    await _seed(db)
    async with httpx.AsyncClient(base_url=hub.http) as http:
        r = await http.get("/api/events", params={"since": 0}, headers=_auth(hub.token(ttl=-10)))
        assert r.status_code == 401 and r.json()["detail"] == "token expired"
        narrow = hub.token(topics=["log_stream"])
        r = await http.get("/api/events", params={"since": 0, "topics": "trade_update"}, headers=_auth(narrow))
        assert r.status_code == 403 and "trade_update" in r.json()["detail"]
        # Without a topics parameter a narrow token reads its own topics only.
        r = await http.get("/api/events", params={"since": 0}, headers=_auth(narrow))
        assert r.status_code == 200
        assert [(e["seq"], e["topic"]) for e in r.json()["events"]] == [(2, "log_stream"), (3, "log_stream")]


async def test_prune_moves_oldest_and_old_since_is_gone(hub: RunningHub, db: asyncpg.Connection) -> None:
    await _seed(db)
    await asyncio.sleep(0.05)
    deleted, floor = await prune(db, timedelta(milliseconds=1), batch=2)  # several small batches
    assert (deleted, floor) == (5, 5)
    await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'after prune')")
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        r = await http.get("/api/events", params={"since": 0})
        assert r.status_code == 410
        assert r.json()["oldest"] == 6 and r.json()["head"] == 6 and "snapshot" in r.json()["detail"]
        ok = await http.get("/api/events", params={"since": 5})
        assert [e["seq"] for e in ok.json()["events"]] == [6] and ok.json()["oldest"] == 6


async def test_prune_keeps_recent_events(db: asyncpg.Connection) -> None:
    await _seed(db)
    assert await prune(db, timedelta(days=7)) == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM events") == 5


async def test_snapshot_is_consistent_with_its_head(hub: RunningHub, db: asyncpg.Connection) -> None:
    await _seed(db)
    await db.execute("INSERT INTO trades (symbol, side, quantity, status, close_reason) "
                     "VALUES ('ETHUSDT', 'SELL', 1, 'CLOSED', 'SL_HIT')")
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        snap = (await http.get("/api/snapshot")).json()
        assert snap["head"] == 6
        assert [t["symbol"] for t in snap["open_trades"]] == ["BTCUSDT"]
        assert [t["close_reason"] for t in snap["closed_trades"]] == ["SL_HIT"]
        assert [line["msg"] for line in snap["logs"]] == ["one", "two"]
        assert snap["status"]["status"] == "RUNNING"
        # A token without trade_update sees no trades.
        logs_only = (await http.get("/api/snapshot", headers=_auth(hub.token(topics=["log_stream"])))).json()
        assert logs_only["open_trades"] == [] and len(logs_only["logs"]) == 2
        assert logs_only["closed_trades"] == []
        # And the other direction: a token without log_stream sees no log lines.
        trades_only = (await http.get("/api/snapshot", headers=_auth(hub.token(topics=["trade_update"])))).json()
        assert [t["symbol"] for t in trades_only["open_trades"]] == ["BTCUSDT"]
        assert trades_only["logs"] == [], "/api/snapshot returned log lines to a token without log_stream"


async def test_snapshot_under_concurrent_writes_matches_replay(hub: RunningHub, dsn: str) -> None:
    """Rendering the snapshot and then applying events after its head gives exactly the final state."""
    writer = await asyncpg.connect(dsn)
    stop = asyncio.Event()

    async def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tid = await writer.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('S', 'BUY', 1) "
                                        "RETURNING id")
            if i % 3 == 0:
                await writer.execute("UPDATE trades SET status='CLOSED' WHERE id=$1", tid)

    task = asyncio.create_task(write())
    try:
        async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
            await asyncio.sleep(0.2)
            snap = (await http.get("/api/snapshot")).json()
            await asyncio.sleep(0.2)
            stop.set()
            await task
            state = {t["id"]: t["status"] for t in snap["open_trades"]}
            # The snapshot is the state at exactly its head: neither older nor newer (events are immutable,
            # so reading them now tells what the state was at that seq).
            at_head: dict[int, str] = {}
            for r in await writer.fetch(
                    "SELECT (payload -> 'trade' ->> 'id')::bigint AS id, payload -> 'trade' ->> 'status' AS status "
                    "FROM events WHERE topic = 'trade_update' AND seq <= $1 ORDER BY seq", snap["head"]):
                if r["status"] in ("CLOSED", "CANCELLED", "REJECTED"):
                    at_head.pop(r["id"], None)
                else:
                    at_head[r["id"]] = r["status"]
            assert state == at_head and len(at_head) > 3
            since = snap["head"]
            while True:
                page = (await http.get("/api/events", params={"since": since, "topics": "trade_update"})).json()
                for e in page["events"]:
                    trade = e["data"]["trade"]
                    if trade["status"] in ("CLOSED", "CANCELLED", "REJECTED"):
                        state.pop(trade["id"], None)
                    else:
                        state[trade["id"]] = trade["status"]
                if page["next_since"] == since:
                    break
                since = page["next_since"]
        truth = {r["id"]: r["status"] for r in await writer.fetch(
            "SELECT id, status FROM trades WHERE status NOT IN ('CLOSED', 'CANCELLED', 'REJECTED')")}
        assert state == truth and len(truth) > 3
    finally:
        stop.set()
        await writer.close()


async def test_hub_retention_setting_prunes_in_the_background(dsn: str, db: asyncpg.Connection) -> None:
    from tests.hubs import running_hub

    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'old' FROM generate_series(1, 3)")
    # Backdated rather than waited for: a slow hub start must not age the new row past the retention too.
    await db.execute("UPDATE events SET created_at = created_at - interval '2 hours'")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'new')")
    async with running_hub(dsn, retention="1h"):
        for _ in range(100):
            if await db.fetchval("SELECT pruned_through FROM event_retention") == 3:
                break
            await asyncio.sleep(0.05)
    assert [r[0] for r in await db.fetch("SELECT seq FROM events ORDER BY seq")] == [4]
    assert await db.fetchval("SELECT pruned_through FROM event_retention") == 3


async def test_topic_pages_match_a_plain_filter_and_walk_the_index_without_statistics(
        dsn: str, db: asyncpg.Connection) -> None:
    """The per-topic replay query returns exactly what `topic = ANY(...) ORDER BY seq` returns, page by page
    (duplicate topics in the request change nothing), and on a log that was never analyzed it walks
    events_topic_seq_idx in order instead of collecting and sorting every match for each page."""
    await db.execute("INSERT INTO logs (level, msg) SELECT CASE WHEN i % 7 = 0 THEN 'ERROR' ELSE 'INFO' END, "
                     "'line ' || i FROM generate_series(1, 3000) AS i")
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'S' || i, 'BUY', 1 "
                     "FROM generate_series(1, 300) AS i")
    assert await db.fetchval("SELECT last_analyze IS NULL AND last_autoanalyze IS NULL "
                             "FROM pg_stat_user_tables WHERE relname = 'events'")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        store = EventStore(pool)
        for topics in (["log_stream"], ["notification", "trade_update"], ["notification", "notification"],
                       ["trade_update", "log_stream", "notification"]):
            truth = [r["seq"] for r in await db.fetch(
                "SELECT seq FROM events WHERE topic = ANY($1::text[]) ORDER BY seq", topics)]
            got = [ev.seq async for ev in store.iter_after(0, topics, 250)]
            assert got == truth, topics
            assert await store.count_after(0, topics, 10**6) == len(truth)
            assert await store.count_after(0, topics, 100) == min(100, len(truth))
        total = await db.fetchval("SELECT count(*) FROM events")
        assert await store.count_after(0, None, 10**6) == total and await store.count_after(0, None, 100) == 100
        assert await store.count_after(total - 5, None, 100) == 5
        async with db.transaction():
            await db.execute(ORDERED_WALK)
            plan = await db.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES["events_after_on_topics"],
                                     1000, ["log_stream", "notification"], 250)
        text = json.dumps(plan)
        assert "Bitmap" not in text and "events_topic_seq_idx" in text, text
    finally:
        await pool.close()
