"""The event log's epoch (migration 0005): every position the hub hands out names its log, and a resume into
another log (a restore fence, a rebuilt database) reloads instead of replaying, over WebSocket and HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from service.client import Connected, HubClient, Reconnecting, Resumed
from service.errors import ResumeGone
from service.store import migrate
from service.store.events import EventStore
from tests.hubs import RunningHub, connect, listener_cut_off, recv_json, recv_until
from tests.pg import PgServer
from tests.test_cli import NO_DB, assert_usage_error, cli, cli_env, read_line_until, spawn
from tests.test_client import events, next_of
from tests.test_ops import _validators

ROOT = Path(__file__).resolve().parent.parent
FENCE = (ROOT / "sql" / "ops" / "fence_after_restore.sql").read_text()

#: What the hub's database looks like after it was rebuilt (dropped and migrated again, or restored from
#: another database's dump): a new log, numbered from 1 again, with its own epoch.
REBUILD = """
DELETE FROM events;
SELECT setval('events_seq', 1, false);
UPDATE event_retention SET pruned_through = 0, pruned_at = NULL;
UPDATE event_log_epoch SET epoch = gen_random_uuid(), started_at = now();
"""


async def _epoch(db: asyncpg.Connection) -> str:
    return str(await db.fetchval("SELECT epoch::text FROM event_log_epoch"))


async def _logs(db: asyncpg.Connection, prefix: str, n: int) -> None:
    await db.execute("INSERT INTO logs (level, msg) SELECT 'INFO', $1 || g FROM generate_series(1, $2) AS g",
                     prefix, n)


def _http(hub: RunningHub) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=hub.http, timeout=10, headers={"Authorization": f"Bearer {hub.token()}"})


async def _replace(db: asyncpg.Connection, how: str) -> int:
    """Six events a client holds (seq 1-6, under the log's first epoch), then the log is replaced `how`.
    Returns a since that lies inside the new log, so nothing but the epoch tells the two logs apart."""
    if how == "rebuilt":
        await db.execute(REBUILD)
        await _logs(db, "new ", 10)
        return 6
    # Restored to an earlier point (seq 4-6 lost, the sequence back at 3), new writes, then the fence.
    await db.execute("DELETE FROM events WHERE seq > 3; SELECT setval('events_seq', 3)")
    await _logs(db, "new ", 3)
    await db.execute(FENCE)
    await _logs(db, "after the fence ", 2)
    return int(await db.fetchval("SELECT max(seq) FROM events")) - 1


def _is_event_with_seq(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event" and frame.get("seq") is not None


async def test_welcome_events_snapshot_and_replayed_carry_the_log_epoch(hub: RunningHub,
                                                                        db: asyncpg.Connection) -> None:
    epoch = await _epoch(db)
    await _logs(db, "line ", 3)
    async with _http(hub) as http:
        page = (await http.get("/api/events", params={"since": 0})).json()
        assert (page["epoch"], [e["seq"] for e in page["events"]]) == (epoch, [1, 2, 3])
        snap = (await http.get("/api/snapshot")).json()
        assert (snap["epoch"], snap["head"]) == (epoch, 3)
        await db.execute("UPDATE event_retention SET pruned_through = 2")
        gone = await http.get("/api/events", params={"since": 1})
        assert gone.status_code == 410 and gone.json()["epoch"] == epoch
        schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
        for model in ("EventsPage", "SnapshotBody", "GoneBody"):
            assert "epoch" in schema[model]["required"], model
    async with await connect(f"{hub.ws}?token={hub.token()}&since=2&epoch={epoch}") as ws:
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["epoch"]) == ("welcome", epoch)
        _validators()["welcome"](welcome)
        replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
        assert (replayed["recovered"], replayed["count"], replayed["epoch"]) == (True, 1, epoch)
    # Upper case is the same UUID: accepted, and answered in the hub's spelling.
    async with _http(hub) as http:
        r = await http.get("/api/events", params={"since": 2, "epoch": epoch.upper()})
        assert r.status_code == 200 and r.json()["epoch"] == epoch


@pytest.mark.parametrize("how", ["fenced", "rebuilt"])
async def test_http_resume_with_another_logs_epoch_is_410_and_with_this_logs_works(
        hub: RunningHub, db: asyncpg.Connection, how: str) -> None:
    await _logs(db, "old ", 6)
    old = await _epoch(db)
    since = await _replace(db, how)
    new = await _epoch(db)
    assert new != old
    async with _http(hub) as http:
        gone = await http.get("/api/events", params={"since": since, "epoch": old})
        assert gone.status_code == 410, gone.text
        body = gone.json()
        assert body["epoch"] == new and f"epoch {old} is not this event log's" in body["detail"]
        assert "reload state from /api/snapshot" in body["detail"]
        ok = await http.get("/api/events", params={"since": since, "epoch": new})
        assert ok.status_code == 200 and ok.json()["epoch"] == new
        assert [e["seq"] for e in ok.json()["events"]] == list(range(since + 1, ok.json()["head"] + 1))


@pytest.mark.parametrize("how", ["fenced", "rebuilt"])
async def test_ws_resume_with_another_logs_epoch_is_not_recovered_and_with_this_logs_is(
        hub: RunningHub, db: asyncpg.Connection, how: str) -> None:
    await _logs(db, "old ", 6)
    old = await _epoch(db)
    since = await _replace(db, how)
    new = await _epoch(db)
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since={since}&epoch={old}") as ws:
        await recv_json(ws)
        replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
        assert (replayed["recovered"], replayed["reason"], replayed["count"]) == (False, "event log replaced", 0)
        assert replayed["epoch"] == new
        _validators()["replayed"](replayed)  # the AsyncAPI document knows this answer
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since={since}&epoch={new}") as ws:
        await recv_json(ws)
        replayed = await recv_until(ws, lambda f: f["type"] == "replayed")
        missed = int(await db.fetchval("SELECT max(seq) FROM events")) - since
        assert (replayed["recovered"], replayed["count"], replayed["epoch"]) == (True, missed, new)


async def test_a_resume_without_an_epoch_is_taken_at_its_word_as_before(hub: RunningHub,
                                                                       db: asyncpg.Connection) -> None:
    """Older clients send no epoch: they keep today's behaviour (docs/protocol.md says what they risk)."""
    await _logs(db, "old ", 6)
    await _replace(db, "rebuilt")
    async with _http(hub) as http:
        r = await http.get("/api/events", params={"since": 6})
        assert r.status_code == 200 and [e["seq"] for e in r.json()["events"]] == [7, 8, 9, 10]
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since=6") as ws:
        await recv_json(ws)
        assert (await recv_until(ws, lambda f: f["type"] == "replayed"))["recovered"] is True


MALFORMED = ["", "x", "3f2c8a9e1b7d4c529a1e6d0f4b8e2c71", "{3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71}",
             "urn:uuid:3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71", "3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c7g",
             "３f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71", "' OR 1=1 --" + "x" * 200]


@pytest.mark.parametrize("bad", MALFORMED)
async def test_a_malformed_epoch_is_422_over_http(hub: RunningHub, bad: str) -> None:
    async with _http(hub) as http:
        r = await http.get("/api/events", params={"since": 0, "epoch": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("epoch must be the log's epoch as the hub sent it (a UUID")


@pytest.mark.parametrize("query", [f"since=0&epoch={MALFORMED[2]}", "since=0&epoch=", "since=0&epoch=%00",
                                   "epoch=3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71"])
async def test_a_malformed_or_lone_epoch_is_4400_over_websocket(hub: RunningHub, query: str) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}&{query}") as ws:
        refusal = await recv_json(ws)
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
    assert refusal["code"] == "invalid_epoch"
    _validators()["error"](refusal)
    expected = "epoch must be the log's epoch" if "since" in query else "epoch goes with since"
    assert refusal["message"].startswith(expected)
    assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (4400, "invalid epoch")


async def test_a_fence_between_two_replay_pages_ends_the_replay(dsn: str, db: asyncpg.Connection) -> None:
    """Each replay page reads the epoch in its own snapshot: a replay never continues into another log."""
    await _logs(db, "line ", 6)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = EventStore(pool)
        replay = aiter(store.iter_after(0, None, page=2))
        assert [(await anext(replay)).seq for _ in range(2)] == [1, 2]
        await db.execute(FENCE)
        with pytest.raises(ResumeGone) as info:
            await anext(replay)
        assert info.value.replaced and info.value.epoch == await _epoch(db)
    finally:
        await pool.close()


async def test_the_listener_closes_its_clients_4410_when_only_the_epoch_changes(hub: RunningHub,
                                                                               db: asyncpg.Connection) -> None:
    """A new epoch alone (the floor, the sequence and every event unchanged) is another log: nothing the
    listener reads under it may reach a client of the old one, and new clients are welcomed with it."""
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as old:
        assert (await recv_json(old))["epoch"] == await _epoch(db)
        await _logs(db, "before ", 2)
        assert [(await recv_until(old, _is_event_with_seq))["seq"] for _ in range(2)] == [1, 2]
        await db.execute("UPDATE event_log_epoch SET epoch = gen_random_uuid()")
        await _logs(db, "after ", 2)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frame = await recv_json(old, 20)
                assert not _is_event_with_seq(frame), f"a client of the old epoch got {frame}"
        assert info.value.rcvd is not None and info.value.rcvd.code == 4410
    new = await _epoch(db)
    assert hub.hub.listener.epoch == new
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as fresh:
        welcome = await recv_json(fresh)
        assert (welcome["epoch"], welcome["head"]) == (new, 4)


async def test_resume_while_the_listener_is_away_is_checked_against_the_log_it_replays(
        hub: RunningHub, pg: PgServer, db: asyncpg.Connection) -> None:
    """Issue 5's open windows. While the listener is away: (1) a client of the old log resuming into the
    rebuilt one gets recovered=false, though its since lies inside the new log and the hub's welcome still
    names the old epoch; (2) a client replayed past the listener's position, from the new log, is closed
    4410 when the listener comes back to a log that is not the one it followed."""
    token = hub.token()
    async with await connect(f"{hub.ws}?token={token}&topics=log_stream") as live:
        await recv_json(live)
        await _logs(db, "old ", 6)
        assert [(await recv_until(live, _is_event_with_seq))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    old = await _epoch(db)
    async with listener_cut_off(pg.admin_dsn, db):
        await db.execute(REBUILD)
        await _logs(db, "new ", 10)
        new = await _epoch(db)
        # One resume at a time: the database refuses new connections, so the hub has only the pool's open one.
        stale = await connect(f"{hub.ws}?token={token}&topics=log_stream&since=6&epoch={old}")
        fresh = None
        try:
            assert (await recv_json(stale))["epoch"] == old  # the listener has not seen the new log yet
            replayed = await recv_until(stale, lambda f: f["type"] == "replayed")
            assert (replayed["recovered"], replayed["reason"], replayed["epoch"]) == (
                False, "event log replaced", new)

            fresh = await connect(f"{hub.ws}?token={token}&topics=log_stream&since=8&epoch={new}")
            await recv_json(fresh)
            got = [(await recv_until(fresh, _is_event_with_seq))["data"]["msg"] for _ in range(2)]
            assert got == ["new 9", "new 10"]
            replayed = await recv_until(fresh, lambda f: f["type"] == "replayed")
            assert (replayed["recovered"], replayed["epoch"]) == (True, new)
        except BaseException:
            await asyncio.gather(*(ws.close() for ws in (stale, fresh) if ws is not None))
            raise
    assert fresh is not None
    try:
        for ws in (stale, fresh):
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    frame = await recv_json(ws, 30)
                    assert not _is_event_with_seq(frame), f"a client got {frame} across the replacement"
            assert info.value.rcvd is not None and info.value.rcvd.code == 4410
    finally:
        await asyncio.gather(stale.close(), fresh.close())
    assert hub.hub.listener.epoch == new


async def test_a_client_replayed_past_the_listener_is_closed_4410_when_that_log_is_fenced(
        hub: RunningHub, pg: PgServer, db: asyncpg.Connection) -> None:
    """While the listener is away at seq 6, a client is replayed 7-10 from the pool; then the log is restored
    to seq 8 and fenced (a new epoch). The client holds seqs of a log that is gone: when the listener is back
    it must be closed 4410, and get none of the events that now reuse 9 and 10."""
    token = hub.token()
    async with await connect(f"{hub.ws}?token={token}&topics=log_stream") as live:
        await recv_json(live)
        await _logs(db, "old ", 6)
        assert [(await recv_until(live, _is_event_with_seq))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    old = await _epoch(db)
    async with listener_cut_off(pg.admin_dsn, db):
        await _logs(db, "lost ", 4)
        ahead = await connect(f"{hub.ws}?token={token}&topics=log_stream,notification&since=6&epoch={old}")
        try:
            await recv_json(ahead)
            got = [(await recv_until(ahead, _is_event_with_seq))["seq"] for _ in range(4)]
            assert got == [7, 8, 9, 10]
            replayed = await recv_until(ahead, lambda f: f["type"] == "replayed")
            assert (replayed["recovered"], replayed["epoch"]) == (True, old)
            await db.execute("DELETE FROM events WHERE seq > 8; SELECT setval('events_seq', 8)")
            await _logs(db, "reused ", 2)
            await db.execute(FENCE)
        except BaseException:
            await ahead.close()
            raise
    try:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frame = await recv_json(ahead, 30)
                assert not _is_event_with_seq(frame), f"a client of the fenced log got {frame}"
        assert info.value.rcvd is not None and info.value.rcvd.code == 4410
    finally:
        await ahead.close()
    assert hub.hub.listener.epoch == await _epoch(db) != old


async def test_hub_client_keeps_the_epoch_and_resumes_with_it(hub: RunningHub, db: asyncpg.Connection) -> None:
    epoch = await _epoch(db)
    async with HubClient(hub.http, hub.token(), topics=["log_stream"], backoff_base=0.05) as client:
        it = aiter(client)
        connected = await next_of(it, Connected)
        assert connected.epoch == epoch and client.epoch == epoch
        await _logs(db, "a", 2)
        assert [e.seq for e in await events(it, 2)] == [1, 2]
        assert client.connect_url().endswith(f"since=2&epoch={epoch}")
    async with HubClient(hub.http, hub.token(), topics=["log_stream"], since=0, epoch=epoch.upper(),
                         backoff_base=0.05) as client:
        assert client.connect_url().endswith(f"since=0&epoch={epoch}")
        it = aiter(client)
        await next_of(it, Connected)
        assert [e.seq for e in await events(it, 2)] == [1, 2]
        resumed = await next_of(it, Resumed)
        assert (resumed.recovered, resumed.count, resumed.epoch) == (True, 2, epoch)
        assert (client.last_seq, client.epoch) == (2, epoch)

        await hub.hub.manager.close_all(4008, "too slow; resume with since=2")
        assert (await next_of(it, Reconnecting)).code == 4008
        # While the client waits to reconnect (it waits for us), the log is rebuilt: its next resume,
        # since=2 with the epoch it kept, must not be replayed from the new log.
        await db.execute(REBUILD)
        await _logs(db, "new ", 4)
        new = await _epoch(db)
        back = await next_of(it, Connected)
        assert (back.since, back.resume) == (2, True)
        resumed = await next_of(it, Resumed)
        assert (resumed.recovered, resumed.reason, resumed.epoch) == (False, "event log replaced", new)


def test_hub_client_refuses_a_malformed_epoch_and_one_without_since() -> None:
    with pytest.raises(ValueError, match="epoch must be the log's epoch"):
        HubClient("http://127.0.0.1:1", "t", since=1, epoch="nope")
    with pytest.raises(ValueError, match="epoch goes with since"):
        HubClient("http://127.0.0.1:1", "t", epoch="3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71")


async def test_tail_prints_the_epoch_and_resumes_with_the_one_it_is_given(
        hub: RunningHub, db: asyncpg.Connection, tmp_path: Path) -> None:
    await _logs(db, "old ", 6)
    old = await _epoch(db)
    await _replace(db, "rebuilt")
    new = await _epoch(db)
    assert new != old
    env = cli_env(hub.settings.database_url or "", tmp_path)
    args = ("tail", "--url", hub.http, "--token", hub.token(), "--topics", "log_stream", "--since", "6")
    procs = [await spawn(env, *args, "--epoch", old), await spawn(env, *args, "--epoch", new)]
    try:
        stale, current = (p.stderr for p in procs)
        assert stale is not None and current is not None
        await read_line_until(stale, r"^-- connected to .*\(head seq \d+, epoch [0-9a-f-]{36}; topics log_stream\)$")
        await read_line_until(stale, r"^-- could not recover: event log replaced; events after seq 6 were missed")
        await read_line_until(current, r"^-- resumed from seq 6: 4 missed events$")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_tail_refuses_a_malformed_epoch_and_one_without_since(tmp_path: Path) -> None:
    bad, lone = await asyncio.gather(
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--since", "3", "--epoch", "nope"),
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--epoch", "3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71"),
    )
    assert_usage_error(bad, "epoch must be the log's epoch")
    assert_usage_error(lone, "epoch goes with since")


async def test_serve_without_auto_migration_refuses_a_database_before_the_epoch(pg: PgServer,
                                                                                tmp_path: Path) -> None:
    """This hub reads event_log_epoch: on a database at 0004 it would fail inside uvicorn's lifespan with a
    traceback. It says what to do in one line instead."""
    name = await pg.create_database(prefix="epoch_0004")
    try:
        await asyncio.to_thread(migrate.upgrade, pg.dsn(name), "0004")
        run = await cli(cli_env(pg.dsn(name), tmp_path, HUB_AUTO_MIGRATE="false"), "serve", "--port", "0")
        assert run.code == 1 and "Traceback" not in run.out + run.err, run
        assert [line for line in run.err.splitlines() if line.startswith("zepix-hub")] == [
            f"zepix-hub: the database is at migration 0004, this hub needs {migrate.head_revision()}, and "
            "HUB_AUTO_MIGRATE is false: run zepix-hub migrate first"], run.err
    finally:
        await pg.drop_database(name)


async def test_the_fence_replaces_the_epoch_and_gives_one_to_a_log_that_lost_it(db: asyncpg.Connection) -> None:
    await _logs(db, "line ", 2)
    before = await _epoch(db)
    await db.execute(FENCE)
    fenced = await db.fetch("SELECT epoch::text AS epoch, started_at FROM event_log_epoch")
    assert len(fenced) == 1 and fenced[0]["epoch"] != before
    await db.execute("DELETE FROM event_log_epoch")
    await db.execute(FENCE)
    assert len(await db.fetch("SELECT 1 FROM event_log_epoch")) == 1 and await _epoch(db) != fenced[0]["epoch"]
