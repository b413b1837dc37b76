"""The capture triggers: what plain SQL on trades and logs turns into, live and in the log."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.hubs import RunningHub, connect, recv_json, recv_until


async def _events(db: asyncpg.Connection) -> list[dict[str, object]]:
    rows = await db.fetch("SELECT seq, topic, op, source_table, source_id, payload FROM events ORDER BY seq")
    return [dict(r) | {"payload": json.loads(r["payload"])} for r in rows]


async def test_trade_insert_update_delete(db: asyncpg.Connection) -> None:
    tid = await db.fetchval("INSERT INTO trades (symbol, side, quantity, entry_price, take_profit) "
                            "VALUES ('ETHUSDT', 'BUY', 2, 3400, 3500) RETURNING id")
    await db.execute("UPDATE trades SET status='FILLED', filled_quantity=2, fill_price=3401 WHERE id=$1", tid)
    await db.execute("UPDATE trades SET status='CLOSED', close_reason='TP_HIT', exit_price=3500, "
                     "realized_pnl=198 WHERE id=$1", tid)
    await db.execute("UPDATE trades SET status='CLOSED' WHERE id=$1", tid)  # no change: no event
    await db.execute("DELETE FROM trades WHERE id=$1", tid)
    events = await _events(db)
    assert [e["op"] for e in events] == ["INSERT", "UPDATE", "UPDATE", "DELETE"]
    assert all(e["topic"] == "trade_update" and e["source_table"] == "trades" for e in events)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    insert, fill, tp, delete = (e["payload"] for e in events)
    assert insert["op"] == "INSERT" and insert["changed"] == [] and insert["trade"]["status"] == "PENDING"
    assert fill["changed"] == ["fill_price", "filled_quantity", "status"]
    assert tp["trade"]["close_reason"] == "TP_HIT" and tp["trade"]["realized_pnl"] == 198
    assert delete["op"] == "DELETE" and delete["trade"]["id"] == tid


async def test_a_column_added_later_flows_through(db: asyncpg.Connection) -> None:
    await db.execute("ALTER TABLE trades ADD COLUMN leverage int")
    await db.execute("INSERT INTO trades (symbol, side, quantity, leverage) VALUES ('BTCUSDT', 'SELL', 1, 5)")
    (event,) = await _events(db)
    assert event["payload"]["trade"]["leverage"] == 5


async def test_log_line_and_error_notification(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'hello', 'bot')")
    await db.execute("INSERT INTO logs (level, msg, source, context) VALUES "
                     "('ERROR', 'order rejected', 'broker', '{\"order\": 7}')")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('CRITICAL', 'halt')")
    events = await _events(db)
    assert [e["topic"] for e in events] == ["log_stream", "log_stream", "notification", "log_stream",
                                            "notification"]
    assert events[0]["payload"]["msg"] == "hello" and events[0]["payload"]["level"] == "INFO"
    assert events[1]["payload"]["context"] == {"order": 7}
    assert events[2]["payload"] == {"type": "error", "title": "Error in broker", "body": "order rejected",
                                    "log_id": events[1]["payload"]["id"], "source": "broker"}
    assert events[4]["payload"]["type"] == "critical" and events[4]["payload"]["title"] == "Critical"


async def test_error_notification_body_is_cut_to_500_characters(db: asyncpg.Connection) -> None:
    """The toast carries the first 500 characters; the log_stream event keeps the whole line."""
    msg = "".join(f"{i:04d}|" for i in range(400))  # 2000 characters, each cut point distinct
    await db.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', $1)", msg)
    line, note = await _events(db)
    assert line["payload"]["msg"] == msg
    body = note["payload"]["body"]
    assert len(body) == 500, f"the notification body is {len(body)} characters, not cut to 500"
    assert body == msg[:500]


async def test_hub_notify_by_hand_and_its_errors(db: asyncpg.Connection) -> None:
    seq = await db.fetchval("SELECT hub_notify('warning', 'Broker slow', 'acks take 3 s')")
    (event,) = await _events(db)
    assert event["seq"] == seq and event["op"] == "NOTIFY"
    assert event["payload"] == {"type": "warning", "title": "Broker slow", "body": "acks take 3 s"}
    with pytest.raises(asyncpg.InvalidParameterValueError, match="type must be"):
        await db.execute("SELECT hub_notify('shout', 'x')")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="title"):
        await db.execute("SELECT hub_notify('info', '')")


async def test_rolled_back_writes_leave_no_event(db: asyncpg.Connection) -> None:
    tx = db.transaction()
    await tx.start()
    await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'never')")
    await tx.rollback()
    await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'kept')")
    events = await _events(db)
    assert [e["payload"]["msg"] for e in events] == ["kept"]


async def test_check_constraints_reject_bad_rows(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'HOLD', 1)")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO logs (level, msg) VALUES ('TRACE', 'x')")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO trades (symbol, side, quantity, filled_quantity) VALUES ('X', 'BUY', 1, 2)")


async def test_a_100kb_trade_row_reaches_clients(hub: RunningHub, db: asyncpg.Connection) -> None:
    """Over NOTIFY's 8000-byte limit the payload is a stub; the listener reads the row instead."""
    big = "x" * 100_000
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=trade_update") as ws:
        await recv_json(ws)
        await db.execute("INSERT INTO trades (symbol, side, quantity, extra) VALUES ('BTCUSDT', 'BUY', 1, "
                         "jsonb_build_object('blob', $1::text))", big)
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('ETHUSDT', 'BUY', 1)")
        first = await recv_until(ws, lambda f: f.get("type") == "event")
        second = await recv_until(ws, lambda f: f.get("type") == "event")
    assert first["seq"] == 1 and first["data"]["trade"]["extra"]["blob"] == big
    assert second["seq"] == 2 and second["data"]["trade"]["symbol"] == "ETHUSDT"


async def test_event_stats_and_log_status_views(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'm' || g FROM generate_series(1, 3) g")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', 'bad')")
    stats = {r["topic"]: dict(r) for r in await db.fetch("SELECT * FROM event_stats")}
    assert stats["log_stream"]["events"] == 4 and stats["notification"]["events"] == 1
    assert stats["notification"]["last_seq"] == 5
    status = await db.fetchrow("SELECT * FROM event_log_status")
    assert (status["head"], status["oldest"], status["pruned_through"]) == (5, 1, 0)
    assert 0 <= status["notify_queue_usage"] < 0.01
