"""/ws/live: frames, topics, bad client input, resume without gaps or duplicates, shutdown codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from websockets.exceptions import ConnectionClosed

from tests.hubs import RunningHub, connect, recv_json, recv_until, running_hub


def _is_event(topic: str | None = None) -> Any:
    return lambda f: f.get("type") == "event" and (topic is None or f["topic"] == topic)


async def _close_code(ws: Any, timeout: float = 10) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await recv_json(ws, timeout)
    rcvd = info.value.rcvd
    assert rcvd is not None, "connection dropped without a close frame"
    return rcvd.code, rcvd.reason


async def test_welcome_then_sys_status_then_all_four_topics(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}") as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome"
        assert welcome["topics"] == ["log_stream", "notification", "sys_status", "trade_update"]
        assert (welcome["head"], welcome["oldest"], welcome["heartbeat_s"]) == (0, 1, 0.5)
        status = await recv_json(ws)
        assert status["topic"] == "sys_status" and status["seq"] is None
        assert status["data"]["status"] == "RUNNING" and 0 <= status["data"]["cpu"] <= 100
        assert 0 < status["data"]["ram"] <= 100
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        await db.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', 'boom')")
        seen = {}
        while len(seen) < 3:
            frame = await recv_until(ws, _is_event())
            if frame["topic"] != "sys_status":
                seen[frame["topic"]] = frame
        assert [seen[t]["seq"] for t in ("trade_update", "log_stream", "notification")] == [1, 2, 3]
        assert seen["notification"]["data"]["type"] == "error"
        # A beat samples last_seq before its database read and is sent after it: wait for one that saw 3.
        beat = await recv_until(ws, lambda f: _is_event("sys_status")(f) and f["data"]["last_seq"] == 3)
        assert beat["data"]["connections"] == 1 and beat["data"]["head"] == 3


async def test_a_new_client_gets_the_latest_sys_status_at_once(dsn: str) -> None:
    async with running_hub(dsn, heartbeat_s=60) as hub:
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=sys_status") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            status = await recv_json(ws)  # the next beat is a minute away: only the latest sample can be this
            assert status["topic"] == "sys_status" and status["data"]["status"] == "RUNNING"


async def test_topics_at_connect_and_subscribe_unsubscribe(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
        assert (await recv_json(ws))["topics"] == ["log_stream"]
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'a')")
        frame = await recv_until(ws, _is_event())
        assert (frame["topic"], frame["seq"]) == ("log_stream", 2)  # the trade was not sent

        await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"]}))
        assert (await recv_until(ws, lambda f: f["type"] == "topics"))["topics"] == ["log_stream", "trade_update"]
        await ws.send(json.dumps({"type": "unsubscribe", "topics": ["log_stream"]}))
        assert (await recv_until(ws, lambda f: f["type"] == "topics"))["topics"] == ["trade_update"]
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'b')")
        await db.execute("UPDATE trades SET status='OPEN'")
        frame = await recv_until(ws, _is_event())
        assert (frame["topic"], frame["seq"]) == ("trade_update", 4)

        await ws.send(json.dumps({"type": "subscribe", "topics": ["weather"]}))
        error = await recv_until(ws, lambda f: f["type"] == "error")
        assert error["code"] == "unknown_topic" and "weather" in error["message"]


async def test_narrow_token_topics(hub: RunningHub) -> None:
    token = hub.token(topics=["log_stream", "sys_status"])
    async with await connect(f"{hub.ws}?token={token}") as ws:
        assert (await recv_json(ws))["topics"] == ["log_stream", "sys_status"]
        await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"]}))
        error = await recv_until(ws, lambda f: f["type"] == "error")
        assert error["code"] == "forbidden_topic"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_until(ws, lambda f: f["type"] != "event"))["type"] == "pong"


@pytest.mark.parametrize("query, code, error_code", [
    ("topics=weather", 4400, "unknown_topic"),
    ("topics=", 4400, "unknown_topic"),
    ("since=-3", 4400, "invalid_since"),
    ("since=abc", 4400, "invalid_since"),
    ("since=" + "9" * 30, 4400, "invalid_since"),
    ("since=%D9%A1", 4400, "invalid_since"),  # an Arabic-Indic one: a digit to str.isdigit, not a seq
    ("since=%C2%B2", 4400, "invalid_since"),  # a superscript two
])
async def test_bad_query_parameters(hub: RunningHub, query: str, code: int, error_code: str) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&{query}") as ws:
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", error_code)
        assert (await _close_code(ws))[0] == code


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('{"no": "type"}', "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "subscribe", "topics": "log_stream"}', "invalid_message"),
    ('{"type": "subscribe", "topics": [1, 2]}', "unknown_topic"),
    ('{"type": "subscribe", "topics": []}', "unknown_topic"),
    ('{"type": "refresh"}', "invalid_message"),
    ('{"type": "refresh", "token": 12}', "invalid_message"),
    ("[" * 100_00, "invalid_json"),
    (b"\x00\x01binary", "binary_not_supported"),
]


async def test_bad_frames_get_error_frames_and_the_connection_stays(hub: RunningHub) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
        await recv_json(ws)
        for frame, code in BAD_FRAMES:
            await ws.send(frame)
            reply = await recv_json(ws)
            assert (reply["type"], reply["code"]) == ("error", code), frame[:40]
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"


async def test_oversized_frame_closes_1009_and_flood_closes_1008(hub: RunningHub) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as other:
        await recv_json(other)
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            assert (await _close_code(ws))[0] == 1009
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
            await recv_json(ws)
            for _ in range(500):
                await ws.send('{"type": "ping"}')
            code, reason = await _close_code(ws)
            assert (code, reason) == (1008, "rate limit exceeded")
        await other.send('{"type": "ping"}')
        assert (await recv_json(other))["type"] == "pong"


async def test_a_close_during_a_resume_does_not_wait_for_the_replay(dsn: str, db: asyncpg.Connection) -> None:
    """A flood (1008) in the middle of a long replay closes at once, not after thousands more events."""
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'missed ' || g FROM generate_series(1, 3000) g")
    async with running_hub(dsn, replay_page=1, client_rate=1, client_burst=5) as hub:
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since=0") as ws:
            for _ in range(20):
                await ws.send('{"type": "ping"}')
            replayed, types = 0, set()
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    frame = await recv_json(ws, 30)
                    types.add(frame["type"])
                    replayed += frame["type"] == "event" and frame["seq"] is not None
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "rate limit exceeded")
            assert "replayed" not in types and replayed < 3000, (replayed, types)


async def _writer(dsn: str, stop: asyncio.Event, pace: float = 0.002) -> int:
    conn = await asyncpg.connect(dsn)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            if n % 4 == 0:
                async with conn.transaction():
                    await conn.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)")
                    await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'with trade')")
            else:
                await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", f"line {n}")
            await asyncio.sleep(pace)
    finally:
        await conn.close()
    return n


async def _collect_events(ws: Any, until_seq: int, timeout: float = 20) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < until_seq:
        frame = await recv_json(ws, timeout)
        if frame["type"] == "event" and frame["seq"] is not None:
            seqs.append(frame["seq"])
    return seqs


async def test_resume_while_writers_write_has_no_gap_and_no_duplicate(hub: RunningHub, dsn: str,
                                                                      db: asyncpg.Connection) -> None:
    stop = asyncio.Event()
    writing = asyncio.create_task(_writer(dsn, stop))
    try:
        await asyncio.sleep(0.3)
        token = hub.token()
        # Disconnect and resume three times while writes continue.
        received: list[int] = []
        since = 0
        for _ in range(3):
            async with await connect(f"{hub.ws}?token={token}&since={since}&topics=log_stream,trade_update") as ws:
                assert (await recv_json(ws))["resume"] is True
                replayed = None
                got: list[int] = []  # this connection's: the replay, then at least 20 live events after it
                while replayed is None or len(got) < 20 + replayed["count"]:
                    frame = await recv_json(ws)
                    if frame["type"] == "replayed":
                        replayed = frame
                        assert frame["recovered"] is True and frame["since"] == since
                        assert frame["count"] == len(got)
                    elif frame["type"] == "event" and frame["seq"] is not None:
                        got.append(frame["seq"])
                received += got
                since = received[-1]
            await asyncio.sleep(0.1)
        stop.set()
        await writing
        head = await db.fetchval("SELECT max(seq) FROM events")
        async with await connect(f"{hub.ws}?token={token}&since={since}&topics=log_stream,trade_update") as ws:
            received += await _collect_events(ws, head)
        truth = [r[0] for r in await db.fetch("SELECT seq FROM events ORDER BY seq")]
        assert received == truth
    finally:
        stop.set()
        await asyncio.gather(writing, return_exceptions=True)


async def test_resume_on_some_topics_only(hub: RunningHub, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('X', 'BUY', 1)")
    await db.execute("INSERT INTO logs (level, msg) VALUES ('ERROR', 'x')")
    await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('Y', 'BUY', 1)")
    async with await connect(f"{hub.ws}?token={hub.token()}&since=0&topics=trade_update,sys_status") as ws:
        frames = []
        while True:
            frame = await recv_json(ws)
            if frame["type"] == "replayed":
                break
            if frame["type"] == "event" and frame["topic"] != "sys_status":
                frames.append(frame["seq"])
        assert frames == [1, 4] and frame == {"type": "replayed", "since": 0, "head": 4, "count": 2,
                                               "recovered": True, "epoch": hub.hub.listener.epoch}


async def test_resume_past_the_cap_or_retention_is_not_recovered(dsn: str, db: asyncpg.Connection) -> None:
    async with running_hub(dsn, resume_cap=3) as hub:
        await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'm' FROM generate_series(1, 5)")
        async with await connect(f"{hub.ws}?token={hub.token()}&since=0&topics=log_stream") as ws:
            await recv_json(ws)
            replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
            assert replayed["recovered"] is False and replayed["head"] == 5 and replayed["count"] == 0
            await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'live')")
            frame = await recv_until(ws, _is_event("log_stream"))
            assert frame["seq"] == 6  # the stream continues from the head
        async with await connect(f"{hub.ws}?token={hub.token()}&since=3&topics=log_stream") as ws:
            await recv_json(ws)
            seqs = []
            while True:
                frame = await recv_json(ws)
                if frame["type"] == "replayed":
                    break
                seqs.append(frame["seq"])
            assert seqs == [4, 5, 6] and frame["recovered"] is True
        await db.execute("DELETE FROM events WHERE seq <= 4; "
                         "UPDATE event_retention SET pruned_through = 4")  # what prune does
        async with await connect(f"{hub.ws}?token={hub.token()}&since=2&topics=log_stream") as ws:
            await recv_json(ws)
            replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
            assert replayed["recovered"] is False
        async with await connect(f"{hub.ws}?token={hub.token()}&since=99&topics=log_stream") as ws:
            await recv_json(ws)
            assert (await recv_until(ws, lambda f: f["type"] == "replayed"))["recovered"] is False


async def test_graceful_shutdown_closes_clients_with_1001(dsn: str) -> None:
    async with running_hub(dsn) as hub:
        clients = [await connect(f"{hub.ws}?token={hub.token()}") for _ in range(5)]
        for ws in clients:
            await recv_json(ws)
        await hub.stop()
        for ws in clients:
            code, reason = await _close_code(ws)
            assert code == 1001 and "resume" in reason
            await ws.close()


async def test_a_fresh_client_gets_every_event_after_its_welcome_head(hub: RunningHub, dsn: str) -> None:
    """Connecting while events stream: nothing between the welcome's head and the first live frame is lost."""
    stop = asyncio.Event()
    writing = asyncio.create_task(_writer(dsn, stop, pace=0.001))
    try:
        async def one() -> None:
            async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream,trade_update") as ws:
                head = (await recv_json(ws))["head"]
                seqs = await _collect_events(ws, head + 15)
                assert seqs == list(range(head + 1, head + 16))

        await asyncio.sleep(0.2)
        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(15)))
    finally:
        stop.set()
        await asyncio.gather(writing, return_exceptions=True)


async def test_a_client_that_falls_behind_is_closed_4008_naming_its_last_seq(dsn: str,
                                                                             db: asyncpg.Connection) -> None:
    """A burst bigger than the client's queue (here 50 frames) closes it 4008; the reason names the last seq
    it was sent, so resuming from there loses and repeats nothing."""
    async with running_hub(dsn, queue_max_frames=50) as hub:
        url = f"{hub.ws}?token={hub.token()}&topics=log_stream"
        async with await connect(url) as ws:
            await recv_json(ws)
            # One transaction of 8 MB: the listener dispatches a page of 1000 in one go (this client shares
            # the hub's event loop, so it cannot read meanwhile), past what loopback buffers (~4 MB) and the
            # transport's high-water mark, so the rest queues and overflows.
            await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', g || repeat('x', 8000) "
                             "FROM generate_series(1, 1000) g")
            got: list[int] = []
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    frame = await recv_json(ws, 20)
                    if frame["type"] == "event" and frame["seq"] is not None:
                        got.append(frame["seq"])
        assert info.value.rcvd is not None and info.value.rcvd.code == 4008
        assert info.value.rcvd.reason == f"too slow; resume with since={got[-1]}"
        assert got == list(range(1, len(got) + 1)) and len(got) < 1000
        async with await connect(f"{url}&since={got[-1]}") as ws:
            await recv_json(ws)
            rest = await _collect_events(ws, 1000)
        assert got + rest == list(range(1, 1001))


async def test_a_subscribe_during_a_resume_takes_effect_after_replayed(dsn: str, db: asyncpg.Connection) -> None:
    """docs/protocol.md: the `topics` answer comes after `replayed`, and the new topic's events committed after
    that answer arrive; the replay is exactly the old topics' events, once each."""
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'missed ' || g FROM generate_series(1, 300) g")
    async with running_hub(dsn, replay_page=10) as hub:
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since=0") as ws:
            await ws.send(json.dumps({"type": "subscribe", "topics": ["trade_update"]}))
            order: list[str] = []
            logs: list[int] = []
            while "topics" not in order:
                frame = await recv_json(ws)
                if frame["type"] == "event" and frame["seq"] is not None:
                    assert frame["topic"] == "log_stream", frame  # nothing of the new topic before the answer
                    logs.append(frame["seq"])
                elif frame["type"] in ("welcome", "replayed", "topics"):
                    order.append(frame["type"])
            assert order == ["welcome", "replayed", "topics"] and logs == list(range(1, 301))
            await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
            await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'after')")
            frames = [await recv_until(ws, _is_event_with_seq) for _ in range(2)]
            assert [(f["topic"], f["seq"]) for f in frames] == [("trade_update", 301), ("log_stream", 302)]


def _is_event_with_seq(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event" and frame.get("seq") is not None
