"""A silently dead database connection: the listener's TCP path stops carrying bytes but nothing closes.

The hub reaches PostgreSQL through tests/proxy.py; the tests write directly. Only the listener's connection
is blackholed (matched by its application_name), so the pool, /readyz and the writer go on: what is tested
is how the listener notices a connection that raises nothing and delivers nothing.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx
import websockets

from tests.hubs import RunningHub, connect, recv_json, running_hub
from tests.proxy import faulty_proxy

LISTENER = b"zepix-hub-listener"
HEALTH_S = 0.5
NEVER_S = 3600.0  # a safety-net read or a probe this rarely does not happen during a test


async def write_logs(db: asyncpg.Connection, n: int, tag: str) -> list[int]:
    """Commit `n` log lines in one transaction; returns the seqs of their events."""
    async with db.transaction():
        await db.execute("INSERT INTO logs (level, msg, source) SELECT 'INFO', $1 || ' ' || i, 'blackhole' "
                         "FROM generate_series(1, $2) AS i", tag, n)
    rows = await db.fetch("SELECT seq FROM events WHERE payload->>'msg' LIKE $1 || ' %' ORDER BY seq", tag)
    return [int(r["seq"]) for r in rows]


async def frames_until(ws: websockets.ClientConnection, pred: Any, within: float, what: str,
                       seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Receive until a frame satisfies `pred`, appending every frame to `seen`; an assertion names `what`
    if none does within `within` seconds (a hang guard, generous)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{what} (waited {within:.0f} s)"
        try:
            frame = await recv_json(ws, left)
        except TimeoutError:
            raise AssertionError(f"{what} (waited {within:.0f} s)") from None
        seen.append(frame)
        if pred(frame):
            return frame


def status_is(value: str) -> Any:
    return lambda f: f.get("topic") == "sys_status" and f["data"].get("status") == value


def titled(title: str) -> Any:
    return lambda f: f.get("topic") == "notification" and f["data"].get("title") == title


def log_seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f.get("topic") == "log_stream"]


async def readyz(hub: RunningHub) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{hub.http}/readyz")
    body = response.json()
    assert isinstance(body, dict)
    return response.status_code, body


async def test_listener_notices_blackholed_connection(dsn: str, db: asyncpg.Connection) -> None:
    async with faulty_proxy(dsn) as proxy, running_hub(
            proxy.dsn(dsn), listener_health_s=HEALTH_S, listener_poll_s=NEVER_S, heartbeat_s=0.25) as hub:
        seen: list[dict[str, Any]] = []
        url = f"{hub.ws}?token={hub.token()}&topics=log_stream,sys_status,notification"
        async with await connect(url) as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            [first] = await write_logs(db, 1, "before")
            await frames_until(ws, lambda f: f.get("seq") == first, 10, "the path works before the fault", seen)
            assert proxy.connections(LISTENER) == 1, "the listener's connection does not go through the proxy"

            proxy.blackhole(LISTENER)
            during = await write_logs(db, 3, "unnoticed")
            # Nothing closes and nothing arrives: only the liveness probe, every HEALTH_S, can tell.
            await frames_until(ws, status_is("DEGRADED"), 10 + 10 * HEALTH_S,
                               "the listener never reported DEGRADED while its connection was blackholed", seen)
            assert not set(log_seqs(seen)) & set(during), "an event got through a blackholed connection"
            code, body = await readyz(hub)
            assert code == 503 and any("listener is not connected" in p for p in body["problems"]), body
            during += await write_logs(db, 3, "noticed")

            proxy.resume()
            await frames_until(ws, titled("Connection Restored"), 30,
                               "the listener did not come back after the path did", seen)
            [sentinel] = await write_logs(db, 1, "after")
            await frames_until(ws, lambda f: f.get("seq") == sentinel, 10, "live events flow again", seen)
            assert log_seqs(seen) == [first, *during, sentinel], "events lost, doubled or out of order"
            code, body = await readyz(hub)
            assert code == 200, body
            await frames_until(ws, status_is("RUNNING"), 10, "sys_status did not say RUNNING again", seen)
            lost = next(i for i, f in enumerate(seen) if titled("Connection Lost")(f))
            back = next(i for i, f in enumerate(seen) if titled("Connection Restored")(f))
            outage = [f["data"]["status"] for f in seen[lost:back] if f.get("topic") == "sys_status"]
            assert set(outage) == {"DEGRADED"}, f"sys_status during the outage: {outage}"


async def test_readyz_reports_listener_lag(dsn: str, db: asyncpg.Connection) -> None:
    # The listener never probes its connection here: it stays "up" while it falls behind, as a listener
    # stuck on a slow or half-dead connection does, and only the lag check can say so.
    async with faulty_proxy(dsn) as proxy, running_hub(
            proxy.dsn(dsn), listener_health_s=NEVER_S, listener_poll_s=NEVER_S) as hub:
        code, body = await readyz(hub)
        assert code == 200, body
        assert proxy.connections(LISTENER) == 1, "the listener's connection does not go through the proxy"
        proxy.blackhole(LISTENER)
        written = await write_logs(db, 1001, "burst")
        code, body = await readyz(hub)
        assert code == 503, f"/readyz is green while the listener is {len(written)} events behind: {body}"
        assert any(f"listener lags {len(written)} events" in p for p in body["problems"]), body
        assert hub.hub.listener.up, "the listener should still think it is connected"

        proxy.resume()
        deadline = time.monotonic() + 30
        while code != 200 and time.monotonic() < deadline:
            code, body = await readyz(hub)
        assert code == 200, f"/readyz stayed red after the listener caught up: {body}"
        assert hub.hub.listener.last_seq == written[-1]


async def test_a_cut_listener_connection_is_replaced_and_nothing_is_lost(dsn: str, db: asyncpg.Connection) -> None:
    # The loud failure next to the silent one: a reset is seen at once, with no probe (poll and probe are off).
    async with faulty_proxy(dsn) as proxy, running_hub(
            proxy.dsn(dsn), listener_health_s=NEVER_S, listener_poll_s=NEVER_S) as hub:
        seen: list[dict[str, Any]] = []
        async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream,notification") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            assert proxy.cut(LISTENER) == 1
            written = await write_logs(db, 3, "cut")
            await frames_until(ws, titled("Connection Restored"), 30, "the listener did not reconnect", seen)
            if written[-1] not in log_seqs(seen):  # the catch-up after the reconnect may have sent them first
                await frames_until(ws, lambda f: f.get("seq") == written[-1], 10, "events written meanwhile", seen)
            assert log_seqs(seen) == written
            assert titled("Connection Lost")(seen[0]), seen
