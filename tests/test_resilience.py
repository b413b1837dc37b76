"""Slow clients, dropped connections, a dying listener, a restarting database, several hub processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from service.client import Connected, HubClient, Reconnecting, Resumed
from tests.hubs import (
    HubProcess,
    RunningHub,
    alive,
    connect,
    kill_all,
    listener_cut_off,
    raw_handshake,
    recv_json,
    recv_until,
    running_hub,
)
from tests.pg import PgServer, fresh_private_database, private_down


async def _write_logs(dsn: str, n: int, size: int = 0, pace: float = 0.0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(n):
            await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", f"{i} " + "x" * size)
            if pace:
                await asyncio.sleep(pace)
    finally:
        await conn.close()


async def _read_seqs(ws: Any, until: int, timeout: float = 20) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < until:
        frame = await recv_json(ws, timeout)
        if frame.get("type") == "event" and frame.get("seq") is not None:
            seqs.append(frame["seq"])
    return seqs


async def test_a_stalled_client_is_cut_with_4008_and_the_others_are_untouched(dsn: str) -> None:
    # Generous queues: under CPU load a healthy reader may lag a few hundred frames; the stalled one
    # is cut by the stalled-write watchdog (send_timeout_s) or by overflowing anyway.
    async with running_hub(dsn, queue_max_frames=300, queue_max_bytes=16 * 2**20, send_timeout_s=1.0) as hub:
        token = hub.token()
        url = f"{hub.ws}?token={token}&topics=log_stream"
        healthy = [await connect(url) for _ in range(3)]
        # A raw client that completes the handshake and then never reads; a tiny receive buffer keeps
        # the kernel from absorbing megabytes on its behalf.
        stalled_sock = await raw_handshake(hub.port, f"/ws/live?token={token}&topics=log_stream", rcvbuf=4096)
        for ws in healthy:
            await recv_json(ws)
        n = 400
        writing = asyncio.create_task(_write_logs(dsn, n, size=16000))
        results = await asyncio.gather(*(_read_seqs(ws, n) for ws in healthy))
        await writing
        for seqs in results:
            assert seqs == list(range(1, n + 1))
        # The hub gave up on the stalled one (server side: 4008) without slowing anyone down.
        for _ in range(100):
            if hub.hub.metrics.closes(4008):
                break
            await asyncio.sleep(0.1)
        assert hub.hub.metrics.closes(4008) == 1
        assert len(hub.hub.manager) == 3
        # It finds its connection dropped; resuming from the last seq it would have read loses nothing.
        stalled_sock.close()
        async with await connect(f"{url}&since=0") as again:
            await recv_json(again)
            assert await _read_seqs(again, n) == list(range(1, n + 1))
        for ws in healthy:
            await ws.close()



async def test_thousands_of_abrupt_disconnects_leak_nothing(hub: RunningHub) -> None:
    manager = hub.hub.manager
    baseline_tasks = len(asyncio.all_tasks())
    token = hub.token()
    for _ in range(10):
        batch = await asyncio.gather(*(connect(f"{hub.ws}?token={token}") for _ in range(100)))
        await asyncio.gather(*(recv_json(ws) for ws in batch))
        for ws in batch:
            ws.transport.abort()  # no close handshake: the TCP connection just dies
        await asyncio.gather(*(ws.wait_closed() for ws in batch))
    for _ in range(100):
        if len(manager) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(manager) == 0
    assert all(not t.get_name().startswith("hub-sender-") for t in asyncio.all_tasks())
    assert len(asyncio.all_tasks()) <= baseline_tasks + 2
    async with await connect(f"{hub.ws}?token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"


def _is_note(title: str) -> Any:
    return lambda f: f.get("topic") == "notification" and f["data"].get("title") == title


async def test_listener_backend_killed_clients_stay_and_nothing_is_lost(hub: RunningHub, dsn: str,
                                                                        db: asyncpg.Connection) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}") as ws:
        await recv_json(ws)
        writing = asyncio.create_task(_write_logs(dsn, 150, pace=0.005))
        await asyncio.sleep(0.2)
        killed = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = 'zepix-hub-listener' AND datname = current_database()")
        assert killed == 1
        seqs: list[int] = []
        notes: list[str] = []
        statuses: list[str] = []
        await writing
        head = await db.fetchval("SELECT max(seq) FROM events")
        while not seqs or seqs[-1] < head or "Connection Restored" not in notes:
            frame = await recv_json(ws, 20)
            if frame.get("type") != "event":
                continue
            if frame["topic"] == "notification" and frame["seq"] is None:
                notes.append(frame["data"]["title"])
            elif frame["topic"] == "sys_status":
                statuses.append(frame["data"]["status"])
            elif frame["seq"] is not None:
                seqs.append(frame["seq"])
        assert seqs == list(range(1, head + 1))
        assert notes == ["Connection Lost", "Connection Restored"]
        assert "DEGRADED" in statuses and statuses[-1] == "RUNNING"


async def test_a_restored_log_closes_clients_4410_and_live_goes_on(hub: RunningHub, pg: PgServer,
                                                                   db: asyncpg.Connection) -> None:
    """A restore (or a failover to a lagging replica) without the fence: events the clients hold vanish and
    their seqs are issued again, here even past the hub's position before its listener is back. A running
    hub must neither skip the new events nor let its clients resume as if nothing happened."""
    token = hub.token()
    client = HubClient(hub.http, token, topics=["log_stream"], backoff_base=0.05)
    items = client.__aiter__()
    assert isinstance(await asyncio.wait_for(items.__anext__(), 10), Connected)
    async with await connect(f"{hub.ws}?token={token}&topics=log_stream") as old:
        await recv_json(old)
        await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'before ' || g FROM generate_series(1, 6) g")
        assert [(await recv_until(old, _is_event_with_seq))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
        async with listener_cut_off(pg.admin_dsn, db):
            # What the restored database looks like, after new writes: 4..7 are other events than the 4..6
            # the clients saw, and the head (7) is already past the hub's position (6).
            await db.execute("DELETE FROM events WHERE seq > 3")
            await db.execute("SELECT setval('events_seq', 3)")
            await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'after ' || g FROM generate_series(1, 4) g")
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(old, 20)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4410, "event log restored to an earlier point; "
                                                                        "reload")
    # What the dashboard does on 4410: reload from a snapshot, then connect with since=<its head>.
    async with httpx.AsyncClient(base_url=hub.http, headers={"Authorization": f"Bearer {token}"}) as http:
        snapshot = (await http.get("/api/snapshot")).json()
    assert snapshot["head"] == 7 and [line["msg"] for line in snapshot["logs"]][-4:] == [
        "after 1", "after 2", "after 3", "after 4"]
    async with await connect(f"{hub.ws}?token={token}&topics=log_stream&since=7") as back:
        await recv_json(back)
        assert (await recv_until(back, lambda f: f.get("type") == "replayed"))["recovered"] is True
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'live again')")
        frame = await recv_until(back, _is_event_with_seq)
        assert (frame["seq"], frame["data"]["msg"]) == (8, "live again")
    # HubClient: it does not resume with the seqs it held; it connects live and says "reload".
    seen: list[Any] = []
    try:
        while not (seen and isinstance(seen[-1], Resumed)):
            seen.append(await asyncio.wait_for(items.__anext__(), 20))
    finally:
        await client.aclose()
    reconnecting = [i for i in seen if isinstance(i, Reconnecting)]
    assert reconnecting and reconnecting[0].code == 4410
    assert isinstance(seen[-2], Connected) and seen[-2].since is None
    assert (seen[-1].recovered, seen[-1].since, seen[-1].reason) == (False, 6, "event log reset")


FENCE = (Path(__file__).resolve().parent.parent / "sql" / "ops" / "fence_after_restore.sql").read_text()


@pytest.mark.parametrize("how", ["in place", "fenced", "pruned"])
async def test_the_listener_tells_a_replaced_log_from_a_pruned_one(hub: RunningHub, db: asyncpg.Connection,
                                                                  how: str) -> None:
    """Without its connection being cut: a log rewound in place (pg_restore --clean into the live database)
    or rewound and then fenced (docs/dba.md) closes the clients 4410; the same events pruned by retention
    close nobody."""
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as old:
        await recv_json(old)
        await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'before ' || g FROM generate_series(1, 6) g")
        assert [(await recv_until(old, _is_event_with_seq))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
        if how == "pruned":
            await db.execute("DELETE FROM events")
            await db.execute("UPDATE event_retention SET pruned_through = 6, pruned_at = now()")
        else:
            await db.execute("DELETE FROM events WHERE seq > 3")
            await db.execute("SELECT setval('events_seq', 3)")
            if how == "fenced":
                await db.execute(FENCE)
        await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', 'after ' || g FROM generate_series(1, 4) g")
        if how == "pruned":
            got = [(await recv_until(old, _is_event_with_seq))["seq"] for _ in range(4)]
            assert got == [7, 8, 9, 10] and hub.hub.listener.up
            return
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frame = await recv_json(old, 20)
                assert not _is_event_with_seq(frame), f"a client of the replaced log got {frame}"
        assert info.value.rcvd is not None and info.value.rcvd.code == 4410


def _is_event_with_seq(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event" and frame.get("seq") is not None


# -- a database that restarts: a private embedded server, so the shared one is never touched --------------

@pytest.fixture
async def restartable(private_pg: tuple[Path, str]) -> AsyncIterator[tuple[Path, str]]:
    pgdata, admin = private_pg
    yield pgdata, await fresh_private_database(admin, "restart_test")


async def test_database_restart_degraded_then_running_and_no_event_lost(restartable: tuple[Path, str]) -> None:
    pgdata, dsn = restartable
    async with running_hub(dsn) as hub:
        async with await connect(f"{hub.ws}?token={hub.token()}") as ws:
            await recv_json(ws)
            live: list[int] = []  # every persisted seq this client gets live, across the outage

            async def until(pred: Any, timeout: float = 10) -> None:
                while True:
                    frame = await recv_json(ws, timeout)
                    if frame.get("type") == "event" and frame["seq"] is not None:
                        live.append(frame["seq"])
                    if pred(frame):
                        return

            await _write_logs(dsn, 20)
            async with private_down(pgdata, dsn):  # started again even if an assertion in here fails
                await until(_is_note("Connection Lost"))
                await until(lambda f: f.get("topic") == "sys_status" and f["data"]["status"] == "DEGRADED")
                # A new client can still connect during the outage.
                async with await connect(f"{hub.ws}?token={hub.token()}&topics=sys_status") as during:
                    assert (await recv_json(during))["type"] == "welcome"
            await _write_logs(dsn, 20)
            await until(_is_note("Connection Restored"), timeout=30)
            await until(lambda f: bool(live) and live[-1] >= 40, timeout=30)
            assert live == list(range(1, 41))  # the live client lost nothing to the restart
        # Everything, in order, over the same hub after the restart.
        async with await connect(f"{hub.ws}?token={hub.token()}&since=0&topics=log_stream") as again:
            await recv_json(again)
            assert await _read_seqs(again, 40) == list(range(1, 41))
        await recv_status_running(hub)


async def test_a_database_outage_is_logged_in_lines_not_tracebacks(restartable: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    """While PostgreSQL is away, asyncpg's pool retries every second, with a traceback each time unless the
    hub's logging trims it; the hub's own lines (listener lost) say the same in one line."""
    pgdata, dsn = restartable
    proc = await asyncio.to_thread(HubProcess(dsn, tmp_path / "hub.log").start)
    try:
        async with private_down(pgdata, dsn):
            for _ in range(100):
                if "Failed to restore the pool connection floor" in (tmp_path / "hub.log").read_text():
                    break
                await asyncio.sleep(0.1)
        log = (tmp_path / "hub.log").read_text()
        assert "Failed to restore the pool connection floor; retrying (" in log
        assert "listener connection lost or failed" in log
        assert "Traceback" not in log, log[-3000:]
    finally:
        await asyncio.to_thread(proc.kill)


async def recv_status_running(hub: RunningHub) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=sys_status") as ws:
        await recv_json(ws)
        await recv_until(ws, lambda f: f.get("topic") == "sys_status" and f["data"]["status"] == "RUNNING")


# -- several hub processes on one database ---------------------------------------------------------------

async def test_two_hub_processes_send_identical_streams_and_a_client_can_move(dsn: str, tmp_path: Path) -> None:
    a, b = HubProcess(dsn, tmp_path / "a.log"), HubProcess(dsn, tmp_path / "b.log")
    try:
        a.start()
        b.start()
        from service.api.auth import mint
        from service.settings import load_settings
        from tests.hubs import SECRET

        token = mint(load_settings(jwt_secret=SECRET), SECRET, subject="two", ttl_s=600)
        url_a, url_b = f"{a.ws}?token={token}", f"{b.ws}?token={token}"
        on_a = await connect(url_a + "&topics=log_stream,trade_update")
        on_b = await connect(url_b + "&topics=log_stream,trade_update")
        mover = await connect(url_a + "&topics=log_stream")
        for ws in (on_a, on_b, mover):
            await recv_json(ws)
        writing = asyncio.create_task(_write_logs(dsn, 200, pace=0.003))
        moved: list[int] = []
        while len(moved) < 50:
            frame = await recv_json(mover)
            if frame.get("type") == "event":
                moved.append(frame["seq"])
        await mover.close()
        mover = await connect(f"{url_b}&topics=log_stream&since={moved[-1]}")
        await recv_json(mover)
        await writing
        conn = await asyncpg.connect(dsn)
        truth = [r[0] for r in await conn.fetch("SELECT seq FROM events ORDER BY seq")]
        await conn.close()
        seen_a, seen_b, rest = await asyncio.gather(_read_seqs(on_a, truth[-1]), _read_seqs(on_b, truth[-1]),
                                                    _read_seqs(mover, truth[-1]))
        assert seen_a == seen_b == truth
        assert moved + rest == truth
        for ws in (on_a, on_b, mover):
            await ws.close()
    finally:
        # Each on its own: a hub that fails to stop must not leave the other running.
        codes = [hub.terminate() for hub in (a, b) if hub.proc is not None]
    assert codes == [0, 0]
    log_a = (tmp_path / "a.log").read_text()
    assert token not in log_a and "token=[REDACTED]" in log_a


async def test_sigterm_closes_clients_1001(dsn: str, tmp_path: Path) -> None:
    proc = HubProcess(dsn, tmp_path / "hub.log").start()
    try:
        from service.api.auth import mint
        from service.settings import load_settings
        from tests.hubs import SECRET

        token = mint(load_settings(jwt_secret=SECRET), SECRET, subject="t", ttl_s=600)
        ws = await connect(f"{proc.ws}?token={token}")
        await recv_json(ws)
        proc.proc.send_signal(15)  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0  # type: ignore[union-attr]
    finally:
        proc.kill()


def _workers(proc: HubProcess) -> list[psutil.Process]:
    """The live worker processes of a `serve --workers N` supervisor (not its resource tracker, not zombies)."""
    assert proc.proc is not None
    found = []
    for child in psutil.Process(proc.proc.pid).children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited, not yet reaped by the supervisor
            pass
    return found



async def _served(url: str, dsn: str, n: int) -> list[int]:
    """Connect n clients, write one log line, return the seq each of them received."""
    clients = [await connect(url) for _ in range(n)]
    try:
        for ws in clients:
            assert (await recv_json(ws))["type"] == "welcome"
        await _write_logs(dsn, 1)
        return [(await recv_until(ws, lambda f: f.get("type") == "event"))["seq"] for ws in clients]
    finally:
        for ws in clients:
            await ws.close()


async def test_workers_share_the_port_a_killed_worker_is_replaced_and_sigterm_closes_1001(
        dsn: str, tmp_path: Path) -> None:
    proc = HubProcess(dsn, tmp_path / "hub.log", args=("--workers", "2")).start()
    before: list[psutil.Process] = []
    now: list[psutil.Process] = []
    family: list[psutil.Process] = []
    try:
        from service.api.auth import mint
        from service.settings import load_settings
        from tests.hubs import SECRET

        url = f"{proc.ws}?token={mint(load_settings(jwt_secret=SECRET), SECRET, subject='w', ttl_s=600)}"
        for _ in range(200):  # the port answers as soon as one worker is up; wait for both
            if len(_workers(proc)) == 2 and proc.log_path.read_text().count("Application startup complete") >= 2:
                break
            await asyncio.sleep(0.05)
        before = _workers(proc)
        assert len(before) == 2
        assert proc.log_path.read_text().count("Application startup complete") >= 2
        assert len(set(await _served(url, dsn, 6))) == 1

        victim = before[0]
        victim.kill()
        for _ in range(300):
            now = _workers(proc)
            if len(now) == 2 and victim.pid not in {p.pid for p in now}:
                break
            await asyncio.sleep(0.05)
        assert len(now) == 2 and victim.pid not in {p.pid for p in now}
        for _ in range(200):
            if proc.log_path.read_text().count("Application startup complete") >= 3:
                break
            await asyncio.sleep(0.05)
        log = proc.log_path.read_text()
        assert log.count("Application startup complete") >= 3, log[-2000:]  # the replacement is serving
        assert re.search(rf"worker \d \(pid {victim.pid}\) exited with -9", log), log[-2000:]
        seqs = await _served(url, dsn, 6)
        assert len(seqs) == 6 and len(set(seqs)) == 1

        ws = await connect(url)
        await recv_json(ws)
        family = psutil.Process(proc.proc.pid).children(recursive=True)  # type: ignore[union-attr]
        proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0  # type: ignore[union-attr]
        assert not any(alive(p) for p in now)
    finally:
        proc.kill()  # the supervisor and its children, while it still runs
        # Children of a supervisor that already exited are orphans nobody stops: the workers seen here and
        # all it had just before SIGTERM (its resource tracker too).
        await asyncio.to_thread(kill_all, [*family, *before, *now])


async def test_a_half_open_client_that_never_answers_pings_is_dropped(dsn: str) -> None:
    async with running_hub(dsn, ws_ping_interval_s=0.3, ws_ping_timeout_s=0.5) as hub:
        sock = await raw_handshake(hub.port, f"/ws/live?token={hub.token()}", rcvbuf=4096)
        try:
            for _ in range(100):
                if len(hub.hub.manager) == 1:
                    break
                await asyncio.sleep(0.05)
            assert len(hub.hub.manager) == 1
            for _ in range(100):  # ping after 0.3 s, no pong within 0.5 s: closed
                if len(hub.hub.manager) == 0:
                    break
                await asyncio.sleep(0.05)
            assert len(hub.hub.manager) == 0
        finally:
            sock.close()


async def test_an_event_whose_notification_never_came_is_read_by_the_safety_net(hub: RunningHub,
                                                                                 db: asyncpg.Connection) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
        await recv_json(ws)
        # Appended by hand, without NOTIFY: what a lost notification looks like to the listener.
        await db.execute("INSERT INTO events (seq, topic, op, payload) "
                         "VALUES (nextval('events_seq'), 'log_stream', 'INSERT', '{\"msg\": \"quiet\"}')")
        frame = await recv_until(ws, lambda f: f.get("type") == "event", timeout=10)
        assert (frame["seq"], frame["data"]) == (1, {"msg": "quiet"})
        # And the next notified event follows in order.
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'loud')")
        frame = await recv_until(ws, lambda f: f.get("type") == "event", timeout=10)
        assert frame["seq"] == 2


async def test_a_forged_notification_is_only_a_wake_up(hub: RunningHub, db: asyncpg.Connection) -> None:
    """Any role that can connect may NOTIFY any channel. A payload shaped like the next frame (or junk, or a
    topic nobody knows) must neither reach clients nor push the real event with that seq aside."""
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream,notification") as ws:
        head = (await recv_json(ws))["head"]
        forged = {"type": "event", "seq": head + 1, "topic": "log_stream", "ts": "2026-01-01T00:00:00+00:00",
                  "data": {"level": "INFO", "msg": "forged"}}
        for payload in (json.dumps(forged), json.dumps({**forged, "topic": "weather"}),
                        json.dumps({**forged, "seq": head + 2}), "not json", ""):
            await db.execute("SELECT pg_notify('zepix_hub_events', $1)", payload)
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'real one'), ('INFO', 'real two')")
        got = [await recv_until(ws, lambda f: f.get("type") == "event", timeout=10) for _ in range(2)]
        assert [(f["seq"], f["data"]["msg"]) for f in got] == [(head + 1, "real one"), (head + 2, "real two")]
        assert hub.hub.listener.up  # junk did not cost the listener its connection (no Connection Lost)


async def test_clients_that_close_mid_stream_are_counted_with_their_own_code(dsn: str) -> None:
    """A client closing while frames are queued for it is its own close (here 4321), not a hub 1011."""
    async with running_hub(dsn) as hub:
        url = f"{hub.ws}?token={hub.token()}&topics=log_stream"
        writing = asyncio.create_task(_write_logs(dsn, 3000, size=2000))
        try:
            for _ in range(20):
                ws = await connect(url)
                await recv_json(ws)  # welcome
                await recv_until(ws, lambda f: f.get("type") == "event")
                await ws.close(4321, "bye")
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        for _ in range(100):
            if len(hub.hub.manager) == 0:
                break
            await asyncio.sleep(0.05)
        assert len(hub.hub.manager) == 0
        assert hub.hub.metrics.closes("other") == 20  # 4321 is no code of the protocol's: no label of its own
        assert hub.hub.metrics.closes(1011) == 0
