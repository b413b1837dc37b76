"""Row filters and row scopes (issue 16) against a real hub and PostgreSQL: live, resume, HTTP replay,
snapshot; bad filters; scope escapes; refresh; the fan-out's cost of a filter; `token --scope`.

Expected results come from the unfiltered event log and predicates written here, independently of
service/filters.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
import websockets

from service.api.auth import Verifier
from service.client import Event as HubEvent
from service.client import HubClient
from service.filters import FilterError, effective, parse_filters, parse_scope
from service.hub.connections import Client, ConnectionManager
from service.hub.frames import Frame
from service.settings import load_settings
from service.topics import LOG_STREAM, TRADE_UPDATE
from tests.hubs import SECRET, RunningHub, connect, hub_settings, recv_json
from tests.test_cli import NO_DB, assert_usage_error, cli, cli_env, spawn

Event = dict[str, Any]
Pred = Callable[[Event], bool]
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
STRATEGIES = ("grid", "momentum", None, "scalp")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SOURCES = ("bot-a", "bot-b", None)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def seed(db: asyncpg.Connection, n: int = 30, offset: int = 0) -> int:
    """Trades of three symbols and four strategies (one null), log lines of every level and three sources
    (one null), ERROR/CRITICAL lines' notifications, some trade updates. Returns the head seq."""
    for i in range(offset, offset + n):
        await db.execute("INSERT INTO trades (symbol, side, quantity, strategy) VALUES ($1, $2, 1, $3)",
                         SYMBOLS[i % 3], "BUY" if i % 2 else "SELL", STRATEGIES[i % 4])
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ($1, $2, $3)",
                         LEVELS[i % 5], f"line {i}", SOURCES[i % 3])
    await db.execute("UPDATE trades SET status = 'OPEN' WHERE id % 5 = 0")
    await db.execute("UPDATE trades SET status = 'CLOSED', closed_at = now() WHERE id % 7 = 0")
    return int(await db.fetchval("SELECT max(seq) FROM events"))


async def all_events(hub: RunningHub) -> list[Event]:
    out: list[Event] = []
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        since = 0
        while True:
            page = (await http.get("/api/events", params={"since": since, "limit": 1000})).json()
            out += page["events"]
            if not page["events"]:
                return out
            since = page["next_since"]


def trade(field: str, *values: str | None) -> Pred:
    return lambda e: e["topic"] == TRADE_UPDATE and e["data"]["trade"][field] in values


def level_at_least(minimum: str) -> Pred:
    return lambda e: e["topic"] == LOG_STREAM and LEVELS.index(e["data"]["level"]) >= LEVELS.index(minimum)


def on_topic(topic: str) -> Pred:
    return lambda e: e["topic"] == topic


def both(a: Pred, b: Pred) -> Pred:
    return lambda e: a(e) and b(e)


def either(a: Pred, b: Pred) -> Pred:
    return lambda e: a(e) or b(e)


async def caught_up(hub: RunningHub, head: int) -> None:
    deadline = time.monotonic() + 10
    while hub.hub.listener.last_seq < head:
        assert time.monotonic() < deadline, "listener did not catch up"
        await asyncio.sleep(0.02)


async def drain(ws: websockets.ClientConnection) -> tuple[list[Event], list[Event]]:
    """Every frame up to the pong of a ping sent now: (events with a seq, the other frames). A pong is
    queued behind every frame broadcast before it, so nothing dispatched so far is missed."""
    await ws.send('{"type": "ping"}')
    events: list[Event] = []
    others: list[Event] = []
    while True:
        frame = await recv_json(ws)
        if frame["type"] == "pong":
            return events, others
        (events if frame["type"] == "event" and frame["seq"] is not None else others).append(frame)


def live_url(hub: RunningHub, token: str, **params: str) -> str:
    return f"{hub.ws}?{urlencode({'token': token, **params})}"


def seqs(events: list[Event]) -> list[int]:
    return [e["seq"] for e in events]


# -- 1. filters: live, resume, HTTP replay, snapshot ------------------------------------------------------

FILTER_CASES: list[tuple[dict[str, str], Pred]] = [
    ({"topics": "trade_update", "trade_update.strategy": "grid,momentum"}, trade("strategy", "grid", "momentum")),
    ({"topics": "trade_update", "trade_update.symbol": "ETHUSDT", "trade_update.side": "BUY"},
     both(trade("symbol", "ETHUSDT"), trade("side", "BUY"))),
    ({"topics": "trade_update", "trade_update.status": "OPEN,CLOSED"}, trade("status", "OPEN", "CLOSED")),
    ({"topics": "log_stream", "log_stream.level": "WARNING"}, level_at_least("WARNING")),
    ({"topics": "log_stream,trade_update", "log_stream.source": "bot-b", "trade_update.symbol": "SOLUSDT"},
     either(both(on_topic(LOG_STREAM), lambda e: e["data"]["source"] == "bot-b"), trade("symbol", "SOLUSDT"))),
    ({"topics": "notification,log_stream", "notification.type": "critical"},
     either(on_topic(LOG_STREAM), lambda e: e["topic"] == "notification" and e["data"]["type"] == "critical")),
]


@pytest.mark.parametrize("params, pred", FILTER_CASES,
                         ids=["strategy", "symbol-side", "status", "level", "two-topics", "notification-type"])
async def test_live_and_resume_deliver_exactly_the_matching_events(
        hub: RunningHub, db: asyncpg.Connection, params: dict[str, str], pred: Pred) -> None:
    topics = set(params["topics"].split(","))
    async with await connect(live_url(hub, hub.token(), **params)) as live:
        welcome = await recv_json(live)
        assert welcome["type"] == "welcome"
        assert welcome["filters"] == {k: sorted(v.split(",")) for k, v in params.items() if "." in k}
        head = await seed(db)
        await caught_up(hub, head)
        got, _ = await drain(live)
    everything = await all_events(hub)
    expected = seqs([e for e in everything if e["topic"] in topics and pred(e)])
    assert expected and len(expected) < len([e for e in everything if e["topic"] in topics])
    assert seqs(got) == expected  # in seq order, none twice, seqs skip the excluded

    # Resume from 0 and from the middle: the same events after since, then live ones.
    middle = expected[len(expected) // 2]
    for since in (0, middle):
        url = live_url(hub, hub.token(), since=str(since), epoch=welcome["epoch"], **params)
        async with await connect(url) as ws:
            replay, others = await drain(ws)
            assert others[-1]["type"] == "replayed" and others[-1]["recovered"] is True
            assert others[-1]["count"] == len(replay)
            assert seqs(replay) == [s for s in expected if s > since]
            more = await seed(db, n=6, offset=100)
            await caught_up(hub, more)
            live_more, _ = await drain(ws)
            assert seqs(live_more) == seqs([e for e in (await all_events(hub)) if e["seq"] > head
                                            and e["topic"] in topics and pred(e)])
            head = more
        expected = seqs([e for e in await all_events(hub) if e["topic"] in topics and pred(e)])

    # HTTP replay: small pages, the filter excluding most rows of each; the cursor moves past scanned rows.
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        paged: list[int] = []
        since, requests = 0, 0
        while True:
            page = (await http.get("/api/events", params={**params, "since": since, "limit": 3})).json()
            requests += 1
            paged += seqs(page["events"])
            assert page["next_since"] >= since and all(s > since for s in seqs(page["events"]))
            since = page["next_since"]
            if since >= page["head"]:
                break
        assert paged == expected and requests <= len(expected) // 3 + 2


async def test_http_paging_moves_past_a_long_excluded_stretch(hub: RunningHub, db: asyncpg.Connection) -> None:
    """Thousands of rows the filter excludes, then one it keeps: every page is well-formed and the
    cursor walks past the excluded rows instead of stopping at an empty page."""
    await db.execute("INSERT INTO logs (level, msg, source) SELECT 'INFO', 'noise', 'bot-a' "
                     "FROM generate_series(1, 25000)")
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'signal', 'bot-b')")
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token()), timeout=30) as http:
        found: list[Event] = []
        since, cursors = 0, []
        while True:
            page = (await http.get("/api/events", params={"since": since, "limit": 10, "topics": "log_stream",
                                                          "log_stream.source": "bot-b"})).json()
            found += page["events"]
            cursors.append(page["next_since"])
            if page["next_since"] >= page["head"]:
                break
            since = page["next_since"]
    assert [e["data"]["msg"] for e in found] == ["signal"]
    assert cursors == sorted(cursors) and len(cursors) >= 2  # a page with no events, cursor moved on


async def test_snapshot_applies_the_same_filter(hub: RunningHub, db: asyncpg.Connection) -> None:
    await seed(db)
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        full = (await http.get("/api/snapshot")).json()
        snap = (await http.get("/api/snapshot", params={"trade_update.strategy": "grid",
                                                        "log_stream.level": "ERROR"})).json()
    assert snap["open_trades"] and snap["closed_trades"] and snap["logs"]
    assert {t["strategy"] for t in snap["open_trades"] + snap["closed_trades"]} == {"grid"}
    assert [t["id"] for t in snap["open_trades"]] == [t["id"] for t in full["open_trades"]
                                                     if t["strategy"] == "grid"]
    assert {line["level"] for line in snap["logs"]} == {"ERROR", "CRITICAL"}
    assert snap["head"] == full["head"]


async def test_subscribe_replaces_filters_and_the_reply_names_them(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with await connect(live_url(hub, hub.token(), topics="trade_update",
                                      **{"trade_update.symbol": "BTCUSDT"})) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "subscribe", "topics": ["log_stream"],
                                  "filters": {"log_stream.level": ["ERROR"], "trade_update.strategy": ["grid"]}}))
        reply = await recv_json(ws)
        assert reply == {"type": "topics", "topics": ["log_stream", "trade_update"],
                         "filters": {"log_stream.level": ["ERROR"], "trade_update.strategy": ["grid"]}}
        head = await seed(db)
        await caught_up(hub, head)
        got, _ = await drain(ws)
        pred = either(trade("strategy", "grid"), level_at_least("ERROR"))
        assert seqs(got) == seqs([e for e in await all_events(hub) if e["topic"] != "notification" and pred(e)])
        await ws.send(json.dumps({"type": "unsubscribe", "topics": ["log_stream"]}))
        assert (await recv_json(ws))["filters"] == {"trade_update.strategy": ["grid"]}
        await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"]}))  # no filters: none
        assert (await recv_json(ws))["filters"] == {}


BAD_FILTERS: list[tuple[dict[str, str], str]] = [
    ({"trade_update.color": "red"}, "unknown field 'color'"),
    ({"weather.symbol": "x"}, "unknown topic 'weather'"),
    ({"sys_status.cpu": "1"}, "unknown topic 'sys_status'"),
    ({"topics": "log_stream", "trade_update.symbol": "BTCUSDT"}, "trade_update is not subscribed"),
    ({"trade_update.symbol": ",".join(f"S{i}" for i in range(33))}, "at most 32"),
    ({"trade_update.symbol": "X" * 65}, "longer than 64"),
    ({"trade_update.symbol": "BTCUSDT,"}, "empty value"),
    ({"log_stream.level": "LOUD"}, "unknown level 'LOUD'"),
    ({"log_stream.level": "INFO,ERROR"}, "minimum level"),
    ({"trade_update": "BTCUSDT"}, ""),  # no dot: not a filter, ignored (checked below: it connects)
]


@pytest.mark.parametrize("params, message", BAD_FILTERS)
async def test_bad_filters_close_4400_and_get_422_naming_the_problem(
        hub: RunningHub, params: dict[str, str], message: str) -> None:
    url = live_url(hub, hub.token(), **params)
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(hub.token())) as http:
        events = await http.get("/api/events", params={"since": 0, **params})
        snapshot = await http.get("/api/snapshot", params={k: v for k, v in params.items() if k != "topics"})
    if not message:
        async with await connect(url) as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        assert events.status_code == 200
        return
    async with await connect(url) as ws:
        frame = await recv_json(ws)
        assert frame["type"] == "error" and frame["code"] == "invalid_filter" and message in frame["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert events.status_code == 422 and message in events.json()["detail"], events.text
    if "not subscribed" not in message:
        assert snapshot.status_code == 422 and message in snapshot.json()["detail"], snapshot.text


@pytest.mark.parametrize("filters, message", [
    ({"trade_update.color": ["red"]}, "unknown field"),
    ({"trade_update.symbol": "BTCUSDT"}, "list of strings"),
    ({"trade_update.symbol": []}, "no value"),
    ({"notification.type": ["error"]}, "not subscribed"),
    (["trade_update.symbol"], '"filters" is an object'),
])
async def test_a_bad_subscribe_filter_gets_an_error_frame_and_changes_nothing(
        hub: RunningHub, filters: object, message: str) -> None:
    async with await connect(live_url(hub, hub.token(), topics="trade_update",
                                      **{"trade_update.symbol": "ETHUSDT"})) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"], "filters": filters}))
        frame = await recv_json(ws)
        assert frame["type"] == "error" and frame["code"] == "invalid_filter" and message in frame["message"]
        await ws.send(json.dumps({"type": "unsubscribe", "topics": ["sys_status"]}))
        assert (await recv_json(ws))["filters"] == {"trade_update.symbol": ["ETHUSDT"]}


# -- 2. scopes ------------------------------------------------------------------------------------------

SCOPE = {"strategy": ["grid"], "symbol": ["BTCUSDT", "ETHUSDT"]}


def in_scope(e: Event) -> bool:
    if e["topic"] != TRADE_UPDATE:
        return True  # log_stream and notification have neither field: governed by topics alone
    t = e["data"]["trade"]
    return bool(t["strategy"] == "grid" and t["symbol"] in ("BTCUSDT", "ETHUSDT"))


async def _live(hub: RunningHub, db: asyncpg.Connection, url: str, before: list[dict[str, Any]]) -> list[Event]:
    async with await connect(url) as ws:
        first = await recv_json(ws)
        assert first["type"] == "welcome", first
        for message in before:
            await ws.send(json.dumps(message))
            reply = await recv_json(ws)
            assert reply["type"] != "error", reply
        head = await seed(db, n=12, offset=200)
        await caught_up(hub, head)
        got, _ = await drain(ws)
        return got


ESCAPES = ["url filter widening", "url filter outside", "subscribe widening", "subscribe without filters",
           "resume from 0", "refresh to a wider scope", "refresh to an unscoped token", "http replay", "snapshot"]


@pytest.mark.parametrize("attempt", ESCAPES)
async def test_a_scoped_token_never_sees_a_row_outside_its_scope(
        hub: RunningHub, db: asyncpg.Connection, attempt: str) -> None:
    await seed(db)
    token = hub.token(sub="bot-a-screen", scope=SCOPE)
    wider = hub.token(sub="bot-a-screen", scope={"strategy": ["grid", "momentum", "scalp"]})
    unscoped = hub.token(sub="bot-a-screen")
    got: list[Event]
    if attempt == "url filter widening":
        got = await _live(hub, db, live_url(hub, token, **{"trade_update.strategy": "grid,momentum,scalp",
                                                            "trade_update.symbol": "SOLUSDT,BTCUSDT"}), [])
        assert got and {e["data"]["trade"]["symbol"] for e in got if e["topic"] == TRADE_UPDATE} == {"BTCUSDT"}
    elif attempt == "url filter outside":
        got = await _live(hub, db, live_url(hub, token, **{"trade_update.strategy": "momentum"}), [])
        assert got and not [e for e in got if e["topic"] == TRADE_UPDATE]
    elif attempt == "subscribe widening":
        got = await _live(hub, db, live_url(hub, token), [
            {"type": "subscribe", "topics": ["trade_update"], "filters": {"trade_update.strategy": ["momentum",
                                                                                                     "grid"]}}])
    elif attempt == "subscribe without filters":
        got = await _live(hub, db, live_url(hub, token), [{"type": "subscribe", "topics": ["trade_update"]}])
    elif attempt == "resume from 0":
        async with await connect(live_url(hub, token, since="0")) as ws:
            got, others = await drain(ws)
            assert others[0]["filters"] == {"trade_update.strategy": ["grid"],
                                            "trade_update.symbol": ["BTCUSDT", "ETHUSDT"]}
            assert others[-1]["recovered"] is True
    elif attempt in ("refresh to a wider scope", "refresh to an unscoped token"):
        fresh = wider if attempt == "refresh to a wider scope" else unscoped
        got = await _live(hub, db, live_url(hub, token), [{"type": "refresh", "token": fresh}])
    elif attempt == "http replay":
        async with httpx.AsyncClient(base_url=hub.http, headers=_auth(token)) as http:
            page = (await http.get("/api/events", params={"since": 0, "limit": 1000,
                                                          "trade_update.strategy": "momentum,grid"})).json()
            got = page["events"]
    else:
        async with httpx.AsyncClient(base_url=hub.http, headers=_auth(token)) as http:
            snap = (await http.get("/api/snapshot", params={"trade_update.symbol": "SOLUSDT,BTCUSDT"})).json()
        rows = snap["open_trades"] + snap["closed_trades"]
        assert rows and all(r["strategy"] == "grid" and r["symbol"] == "BTCUSDT" for r in rows)
        assert snap["logs"]  # logs have no strategy or symbol: the scope does not touch them
        return
    trades = [e for e in got if e["topic"] == TRADE_UPDATE]
    assert all(in_scope(e) for e in got), [e["data"]["trade"] for e in trades if not in_scope(e)]
    if attempt != "url filter outside":
        assert trades, "the scope let nothing through: the test would prove nothing"
    assert [e for e in got if e["topic"] == LOG_STREAM]  # unscoped fields' topics flow


async def test_a_level_scope_also_hides_the_notifications_of_lines_below_it(
        hub: RunningHub, db: asyncpg.Connection) -> None:
    """An ERROR line's notification carries its message (the body): a token scoped to CRITICAL must not read
    through notifications what its level hides on log_stream, live, on resume or over HTTP."""
    await seed(db, n=10)
    token = hub.token(sub="risk-desk", scope={"level": ["CRITICAL"]})
    async with await connect(live_url(hub, token, topics="log_stream,notification", since="0")) as ws:
        welcome = await recv_json(ws)
        assert welcome["filters"] == {"log_stream.level": ["CRITICAL"], "notification.type": ["critical"]}
        replayed, _ = await drain(ws)
        head = await seed(db, n=10, offset=100)
        await caught_up(hub, head)
        live, _ = await drain(ws)
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(token)) as http:
        page = (await http.get("/api/events", params={"since": 0, "limit": 1000,
                                                      "topics": "log_stream,notification"})).json()
    for name, got in (("resume", replayed), ("live", live), ("http replay", page["events"])):
        kinds = {(e["topic"], e["data"].get("level") or e["data"].get("type")) for e in got}
        assert kinds == {(LOG_STREAM, "CRITICAL"), ("notification", "critical")}, (name, kinds)


async def test_a_narrower_refresh_narrows_the_live_stream_at_once(hub: RunningHub, db: asyncpg.Connection) -> None:
    token = hub.token(sub="desk", scope={"symbol": ["BTCUSDT", "ETHUSDT"]})
    narrower = hub.token(sub="desk", scope={"symbol": ["BTCUSDT"], "source": ["bot-a"]})
    async with await connect(live_url(hub, token, topics="trade_update,log_stream,notification")) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "refresh", "token": narrower}))
        reply = await recv_json(ws)
        assert reply["type"] == "refreshed"
        assert reply["filters"] == {"log_stream.source": ["bot-a"], "notification.source": ["bot-a"],
                                    "trade_update.symbol": ["BTCUSDT"]}
        head = await seed(db)
        await caught_up(hub, head)
        got, _ = await drain(ws)
    assert {e["data"]["trade"]["symbol"] for e in got if e["topic"] == TRADE_UPDATE} == {"BTCUSDT"}
    assert {e["data"]["source"] for e in got if e["topic"] != TRADE_UPDATE} == {"bot-a"}
    assert {e["topic"] for e in got} == {TRADE_UPDATE, LOG_STREAM, "notification"}


@pytest.mark.parametrize("scope", [
    "grid", ["grid"], {}, {"color": ["red"]}, {"strategy": "grid"}, {"strategy": []}, {"strategy": [1]},
    {"level": ["LOUD"]}, {"strategy": ["x" * 65]}, {"symbol": [f"S{i}" for i in range(33)]},
])
async def test_a_malformed_scope_claim_is_an_invalid_token(hub: RunningHub, scope: object) -> None:
    token = hub.token(scope=scope)
    async with await connect(live_url(hub, token)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    assert "invalid scope claim" in closed.value.rcvd.reason
    async with httpx.AsyncClient(base_url=hub.http, headers=_auth(token)) as http:
        r = await http.get("/api/events", params={"since": 0})
    assert r.status_code == 401 and "invalid scope claim" in r.json()["detail"]


# -- 3. cost: once per distinct filter per event, frames shared --------------------------------------------

async def test_the_fan_out_evaluates_each_distinct_filter_once_per_event() -> None:
    settings = load_settings(jwt_secret="x" * 40)
    manager = ConnectionManager(settings)
    sent: dict[str, list[str]] = {}
    topics = frozenset({TRADE_UPDATE})
    filters = [parse_filters({"trade_update.strategy": [s]}, topics) for s in ("grid", "momentum", "scalp")]
    # The same filter spelt in another order has the same canonical key.
    same = parse_filters({"trade_update.symbol": ["ETHUSDT", "BTCUSDT"], "trade_update.side": ["BUY"]}, topics)
    again = parse_filters({"trade_update.side": ["BUY"], "trade_update.symbol": ["BTCUSDT", "ETHUSDT"]}, topics)
    assert same is not None and again is not None and same.key == again.key
    clients: list[Client] = []
    for i in range(40):
        flt = None if i < 10 else filters[i % 3] if i < 34 else same if i % 2 else again

        async def send(text: str, key: str = f"k{i}") -> None:
            sent.setdefault(key, []).append(text)

        async def close(code: int, reason: str) -> None:
            return None

        client = Client(settings, send=send, close=close, abort=lambda: None, topics=topics, delivered=0,
                        row_filter=effective(flt, None, topics))
        manager.register(client)
        clients.append(client)
    frames = [Frame(TRADE_UPDATE, seq, json.dumps({"type": "event", "topic": TRADE_UPDATE, "seq": seq, "data": {
        "op": "INSERT", "changed": [], "trade": {"strategy": strat, "symbol": "BTCUSDT", "side": "BUY"}}}))
        for seq, strat in enumerate(("grid", "momentum", "grid", None, "scalp"), start=1)]
    # Unfiltered clients alone: no parse, no evaluation.
    alone = ConnectionManager(settings)

    async def discard(text: str) -> None:
        return None

    async def close_alone(code: int, reason: str) -> None:
        return None

    for _ in range(3):
        alone.register(Client(settings, send=discard, close=close_alone, abort=lambda: None, topics=topics,
                              delivered=0, row_filter=effective(None, None, topics)))
    assert alone.broadcast(frames[0]) == 3 and alone.filter_evaluations == 0
    await alone.stop()
    fanout = [manager.broadcast(f) for f in frames]
    assert manager.filter_evaluations == len(frames) * 4  # 4 distinct filters, not 30 filtered clients
    assert fanout == [10 + 8 + 6, 10 + 8 + 6, 10 + 8 + 6, 10 + 6, 10 + 8 + 6]
    deadline = time.monotonic() + 5
    while sum(len(v) for v in sent.values()) < sum(fanout):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    for key, texts in sent.items():
        for text in texts:
            assert any(text is f.text for f in frames), key  # the very same object: serialised once
    # Unfiltered: every frame; k10 is on momentum, k12 on grid, k34 on BTCUSDT/ETHUSDT buys.
    assert [len(sent[k]) for k in ("k0", "k10", "k12", "k34")] == [5, 1, 2, 5]
    await manager.stop()


def test_intersection_with_a_scope_and_the_canonical_key() -> None:
    topics = frozenset({TRADE_UPDATE, LOG_STREAM})
    requested = parse_filters({"trade_update.strategy": ["grid", "momentum"], "log_stream.level": ["INFO"]}, topics)
    scope = parse_scope({"strategy": ["grid", "scalp"], "level": ["ERROR"], "type": ["error"]})
    eff = effective(requested, scope, topics)
    assert eff is not None
    assert eff.as_json() == {"log_stream.level": ["ERROR"], "trade_update.strategy": ["grid"]}
    with pytest.raises(FilterError, match="not subscribed"):
        parse_filters({"notification.type": ["error"]}, topics)


async def test_filters_whose_values_hold_separators_are_never_grouped_together(
        hub: RunningHub, db: asyncpg.Connection) -> None:
    """The fan-out groups clients by a filter's canonical key: a value may hold ',' ';' '=' or '|' (the JSON
    form allows them), so {"a,b"} and {"a", "b"} must get different keys, or the second client to join would
    get the first one's events (a wider set than its own, or fewer)."""
    async with await connect(live_url(hub, hub.token(), topics="trade_update")) as one, \
            await connect(live_url(hub, hub.token(), topics="trade_update", **{"trade_update.strategy": "a,b"})) as two:
        await recv_json(one)
        await recv_json(two)
        await one.send(json.dumps({"type": "subscribe", "topics": ["trade_update"],
                                   "filters": {"trade_update.strategy": ["a,b"]}}))
        assert (await recv_json(one))["filters"] == {"trade_update.strategy": ["a,b"]}
        for strategy in ("a", "a,b", "b", "c", "a;b"):
            await db.execute("INSERT INTO trades (symbol, side, quantity, strategy) VALUES ('X', 'BUY', 1, $1)",
                             strategy)
        await caught_up(hub, int(await db.fetchval("SELECT max(seq) FROM events")))
        got_one, _ = await drain(one)
        got_two, _ = await drain(two)
        assert [e["data"]["trade"]["strategy"] for e in got_one] == ["a,b"]
        assert [e["data"]["trade"]["strategy"] for e in got_two] == ["a", "b"]


@pytest.mark.parametrize("change", ["unsubscribe", "refresh dropping the topic"])
async def test_a_topic_change_during_a_resume_does_not_lift_the_scope_from_the_replay(
        hub: RunningHub, db: asyncpg.Connection, change: str) -> None:
    """A scoped client resumes from 0 and at once drops trade_update (its own unsubscribe, or a refresh to a
    token of the same subject without that topic): the replay keeps walking the topics it started with, but
    its per-event check now has no filter on trade_update (the scope lives in the effective filter of the
    client's *current* topics), so every trade of every strategy is replayed."""
    await seed(db, n=12)
    # Enough rows for several replay pages, so the unsubscribe certainly lands while the replay runs.
    await db.execute("INSERT INTO trades (symbol, side, quantity, strategy) "
                     "SELECT (ARRAY['BTCUSDT','ETHUSDT','SOLUSDT'])[1 + g % 3], 'BUY', 1, "
                     "(ARRAY['grid','momentum','scalp'])[1 + g % 3] FROM generate_series(1, 3000) AS g")
    head = int(await db.fetchval("SELECT max(seq) FROM events"))
    await caught_up(hub, head)
    token = hub.token(sub="bot-a-screen", scope=SCOPE)
    async with await connect(live_url(hub, token, topics="trade_update,log_stream", since="0")) as ws:
        if change == "unsubscribe":
            await ws.send(json.dumps({"type": "unsubscribe", "topics": ["trade_update"]}))
        else:
            fresh = hub.token(sub="bot-a-screen", topics=["log_stream"], scope=SCOPE)
            await ws.send(json.dumps({"type": "refresh", "token": fresh}))
        got: list[Event] = []
        while True:
            frame = await recv_json(ws)
            assert frame["type"] != "error", frame
            if frame["type"] in ("topics", "refreshed"):
                break
            if frame["type"] == "event":
                got.append(frame)
    trades = [e for e in got if e["topic"] == TRADE_UPDATE]
    outside = [e["data"]["trade"] for e in trades if not in_scope(e)]
    assert not outside, f"{len(outside)} of {len(trades)} replayed trades are outside the token's scope"


async def test_a_lone_surrogate_in_a_subscribe_filter_gets_an_answer_not_a_1011(hub: RunningHub) -> None:
    r"""A JSON string may hold "\ud800" (valid JSON, valid UTF-8 on the wire): the value passes the filter
    checks, and the `topics` reply that echoes it cannot be encoded, so the exception escapes the session."""
    async with await connect(live_url(hub, hub.token(), topics="trade_update")) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        # json.dumps writes the surrogate as the ASCII escape \ud800: the frame itself is valid UTF-8.
        await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"],
                                  "filters": {"trade_update.strategy": ["\ud800"]}}))
        try:
            reply = await recv_json(ws)
            await ws.send('{"type": "ping"}')
            pong = await recv_json(ws)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            raise AssertionError(f"the hub dropped the connection (close {code}) instead of answering") from None
    assert reply["type"] in ("error", "topics"), reply
    assert pong["type"] == "pong"


# -- 4. token --scope -----------------------------------------------------------------------------------

async def test_token_scope_flag_mints_a_scoped_token(tmp_path: Path) -> None:
    env = cli_env(NO_DB, tmp_path)
    good, unknown, no_eq, twice = await asyncio.gather(
        cli(env, "token", "--sub", "desk", "--scope", "strategy=grid", "--scope", "symbol=BTCUSDT,ETHUSDT"),
        cli(env, "token", "--sub", "desk", "--scope", "color=red"),
        cli(env, "token", "--sub", "desk", "--scope", "strategy"),
        cli(env, "token", "--sub", "desk", "--scope", "strategy=a", "--scope", "strategy=b"),
    )
    assert good.code == 0, good
    principal = Verifier(hub_settings(NO_DB), SECRET).verify(good.out.strip())
    assert principal.scope == {"strategy": {"grid"}, "symbol": {"BTCUSDT", "ETHUSDT"}}
    assert_usage_error(unknown, "unknown scope field 'color'")
    assert_usage_error(no_eq, "field=value")
    assert_usage_error(twice, "given twice")


# -- 4. HubClient and tail ------------------------------------------------------------------------------

async def test_hub_client_sends_filters_on_every_connection(hub: RunningHub, db: asyncpg.Connection) -> None:
    head = await seed(db)
    pred = either(trade("strategy", "grid"), level_at_least("ERROR"))
    expected = seqs([e for e in await all_events(hub) if e["topic"] != "notification" and pred(e)])
    client = HubClient(hub.http, hub.token(), topics=["trade_update", "log_stream"], since=0,
                       filters={"trade_update.strategy": ["grid"], "log_stream.level": "ERROR"})
    assert "log_stream.level=ERROR" in client.connect_url() and "trade_update.strategy=grid" in client.connect_url()
    got: list[int] = []
    async with client:
        async with asyncio.timeout(20):
            async for item in client:
                if isinstance(item, HubEvent) and item.seq is not None:
                    got.append(item.seq)
                    if item.seq >= expected[-1]:
                        break
    assert got == expected and client.last_seq is not None and client.last_seq <= head


@pytest.mark.parametrize("filters, message", [
    ({"trade_update.color": ["red"]}, "unknown field"),
    ({"log_stream.level": ["LOUD"]}, "unknown level"),
    ({"trade_update.symbol": ["A,B"]}, "comma"),
    ({"notification.type": ["error"]}, "not subscribed"),
])
def test_hub_client_refuses_a_bad_filter_up_front(filters: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HubClient("http://127.0.0.1:1", "t.t.t", topics=["trade_update", "log_stream"], filters=filters)


async def test_tail_filter_flag(hub: RunningHub, db: asyncpg.Connection, tmp_path: Path) -> None:
    await seed(db)
    expected = seqs([e for e in await all_events(hub) if trade("symbol", "SOLUSDT")(e)])
    env = cli_env(NO_DB, tmp_path)
    proc = await spawn(env, "tail", "--json", "--url", hub.http, "--token", hub.token(), "--topics", "trade_update",
                       "--since", "0", "--filter", "trade_update.symbol=SOLUSDT")
    try:
        assert proc.stdout is not None
        got: list[int] = []
        async with asyncio.timeout(30):
            while len(got) < len(expected):
                frame = json.loads(await proc.stdout.readline())
                if frame["type"] == "event" and frame["seq"] is not None:
                    got.append(frame["seq"])
        assert got == expected
    finally:
        proc.kill()
        await proc.wait()
    bad, twice = await asyncio.gather(
        cli(env, "tail", "--url", hub.http, "--token", hub.token(), "--filter", "trade_update.color=red"),
        cli(env, "tail", "--url", hub.http, "--token", hub.token(), "--filter", "log_stream.level=INFO",
            "--filter", "log_stream.level=ERROR"))
    assert_usage_error(bad, "unknown field 'color'")
    assert_usage_error(twice, "given twice")
