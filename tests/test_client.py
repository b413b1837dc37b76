"""HubClient against real hubs: events from SQL, resume without gaps or duplicates, rejection, cleanup."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from service.api.auth import mint
from service.client import (
    Connected,
    Event,
    HubClient,
    HubItem,
    HubRejected,
    HubUnavailable,
    Reconnecting,
    Resumed,
    backoff_delay,
    live_url,
)
from service.store.events import prune
from tests.hubs import SECRET, HubProcess, RunningHub, hub_settings, running_hub

T = TypeVar("T")
PERSISTED = ["trade_update", "log_stream", "notification"]


async def next_item(it: AsyncIterator[HubItem], within: float = 10) -> HubItem:
    return await asyncio.wait_for(anext(it), within)  # hang guard


async def next_of(it: AsyncIterator[HubItem], kind: type[T], within: float = 10) -> T:
    """The next item of `kind`, skipping sys_status events only (anything else is a test failure)."""
    deadline = time.monotonic() + within
    while True:
        item = await next_item(it, max(0.01, deadline - time.monotonic()))
        if isinstance(item, kind):
            return item
        assert isinstance(item, Event) and item.topic == "sys_status", f"{item!r} while waiting for {kind}"


async def events(it: AsyncIterator[HubItem], n: int, within: float = 10) -> list[Event]:
    """The next `n` persisted events (sys_status skipped)."""
    got: list[Event] = []
    while len(got) < n:
        event = await next_of(it, Event, within)
        if event.topic != "sys_status":
            got.append(event)
    return got


async def add_logs(db: asyncpg.Connection, *msgs: str) -> None:
    for msg in msgs:
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', $1, 'test')", msg)


async def until(pred: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- pure parts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/live"),
    ("http://127.0.0.1:8000/?token=abc", "ws://127.0.0.1:8000/ws/live"),
    ("https://hub.example.com/", "wss://hub.example.com/ws/live"),
    ("wss://hub.example.com/ws/live?since=3", "wss://hub.example.com/ws/live"),
    ("HTTP://h:1/prefix/", "ws://h:1/prefix/ws/live"),
])
def test_live_url_normalises_to_the_websocket_endpoint(given: str, expected: str) -> None:
    assert live_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://h/", "127.0.0.1:8000", "http://", "", "http://[::1", "http://h:99999",
                                 "http://h:abc", "http://h:0", "ws://[::1]:65536/ws/live"])
def test_live_url_rejects_what_is_not_a_hub_url(bad: str) -> None:
    with pytest.raises(ValueError, match="hub URL"):
        live_url(bad)
    with pytest.raises(ValueError, match="hub URL"):  # at construction, not when the first connect fails
        HubClient(bad, "t")


def test_live_url_errors_never_quote_the_query() -> None:
    with pytest.raises(ValueError) as caught:
        live_url("http://[::1/?token=eyJhbGciOiJIUzI1NiJ9.c2VjcmV0")
    assert "token" not in str(caught.value) and "eyJ" not in str(caught.value)


@pytest.mark.parametrize("bad", ["", "  ", "eyJh\nbGc", "eyJh bGc", "eyJh\tbGc", "eyJh\rbGc", "eyJh\x00bGc",
                                 "eyJh\x1bbGc", "eyJh\x7fbGc", "eyJhé"])
async def test_a_token_that_cannot_be_a_header_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError, match="token must") as caught:
        HubClient("http://127.0.0.1:1", bad)
    assert "eyJ" not in str(caught.value)
    # A token function is asked per connection: its bad token ends the iteration the same way, no retry.
    client = HubClient("http://127.0.0.1:1", lambda: bad, max_attempts=1)
    with pytest.raises(HubRejected, match="unusable token") as rejected:
        async with client:
            async for _ in client:
                pass
    assert "eyJ" not in str(rejected.value)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for failures, step in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (200, 30.0)]:
        delays = [backoff_delay(failures, 0.5, 30.0, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # jittered, not a fixed value


# -- against a real hub --------------------------------------------------------------------------------

async def test_yields_events_inserted_by_sql(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with HubClient(hub.http, hub.token()) as client:
        it = aiter(client)
        hello = await next_item(it)
        assert isinstance(hello, Connected)
        assert (hello.resume, hello.reconnect, hello.since, hello.head) == (False, False, None, 0)
        assert set(hello.topics) == {"trade_update", "log_stream", "notification", "sys_status"}
        assert client.last_seq == 0

        await db.execute("INSERT INTO trades (symbol, side, quantity, entry_price) "
                         "VALUES ('BTCUSDT', 'BUY', 1.5, 64000.5)")
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'order rejected', 'broker')")
        got = await events(it, 3)
        assert [(e.topic, e.seq) for e in got] == \
            [("trade_update", 1), ("log_stream", 2), ("notification", 3)]
        trade = got[0].data["trade"]
        assert (trade["symbol"], trade["side"], trade["quantity"], trade["entry_price"]) == \
            ("BTCUSDT", "BUY", 1.5, 64000.5)
        assert got[0].data["op"] == "INSERT"
        assert (got[1].data["level"], got[1].data["msg"]) == ("ERROR", "order rejected")
        assert got[2].data["type"] == "error"
        assert abs(got[0].time - datetime.now(UTC)) < timedelta(minutes=1)
        assert json.loads(got[2].raw)["seq"] == 3
        assert client.last_seq == 3

        # sys_status comes through too, live-only: no seq, and it does not move the resume position.
        status = await next_item(it)
        while not (isinstance(status, Event) and status.topic == "sys_status"):
            status = await next_item(it)
        assert status.seq is None and status.data["status"] == "RUNNING"
        assert client.last_seq == 3


async def test_resumes_after_the_hub_closes_the_socket(hub: RunningHub, db: asyncpg.Connection) -> None:
    async with HubClient(hub.http, hub.token(), topics=PERSISTED, backoff_base=0.05) as client:
        it = aiter(client)
        await next_of(it, Connected)
        await add_logs(db, "a", "b")
        assert [e.seq for e in await events(it, 2)] == [1, 2]

        await hub.hub.manager.close_all(4008, "too slow; resume with since=2")
        gone = await next_of(it, Reconnecting)
        assert (gone.code, gone.reason) == (4008, "too slow; resume with since=2")
        # The client waits for us before reconnecting: these two are missed and must be replayed.
        await add_logs(db, "c", "d")

        back = await next_of(it, Connected)
        assert (back.resume, back.since, back.reconnect) == (True, 2, True)
        replayed = await events(it, 2)
        assert [(e.seq, e.data["msg"]) for e in replayed] == [(3, "c"), (4, "d")]
        resumed = await next_of(it, Resumed)
        assert (resumed.since, resumed.count, resumed.recovered) == (2, 2, True)
        await add_logs(db, "e")
        assert [e.seq for e in await events(it, 1)] == [5]


async def test_resumes_across_a_hub_restart_without_gap_or_duplicate(
        dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    proc = HubProcess(dsn, tmp_path / "hub.log").start()
    token = mint(hub_settings(dsn), SECRET, subject="restart", ttl_s=600)
    try:
        async with HubClient(proc.http, token, topics=PERSISTED, backoff_base=0.2) as client:
            it = aiter(client)
            await next_of(it, Connected)
            await add_logs(db, "1", "2", "3")
            seen = await events(it, 3)

            await asyncio.to_thread(proc.terminate)  # SIGTERM: a graceful shutdown closes us with 1001
            gone = await next_of(it, Reconnecting)
            assert gone.code == 1001
            await add_logs(db, "4", "5", "6")  # committed while no hub runs
            await asyncio.to_thread(proc.start)

            # Attempts made before the new process listens are refused and retried, as in real life
            # (HubProcess.start() can return early on a restart: see the report on tests/hubs.py).
            back = await next_item(it, 30)
            while isinstance(back, Reconnecting) and back.code is None:
                back = await next_item(it, 30)
            assert isinstance(back, Connected)
            assert (back.resume, back.since) == (True, 3)
            seen += await events(it, 3)
            resumed = await next_of(it, Resumed)
            assert (resumed.since, resumed.count, resumed.recovered) == (3, 3, True)
            await add_logs(db, "7", "8", "9")
            seen += await events(it, 3)
    finally:
        proc.kill()
    assert [e.seq for e in seen] == list(range(1, 10))
    assert [e.data["msg"] for e in seen] == [str(n) for n in range(1, 10)]


async def test_surfaces_recovered_false_and_keeps_following(dsn: str, db: asyncpg.Connection) -> None:
    async with running_hub(dsn, resume_cap=2) as hub:
        async with HubClient(hub.http, hub.token(), topics=PERSISTED, backoff_base=0.05) as client:
            it = aiter(client)
            await next_of(it, Connected)
            await add_logs(db, "seen")
            assert [e.seq for e in await events(it, 1)] == [1]
            await hub.hub.manager.close_all(1001, "hub shutting down; reconnect and resume")
            await next_of(it, Reconnecting)
            await add_logs(db, "x", "y", "z")  # three missed, over the resume cap of two

            back = await next_of(it, Connected)
            assert (back.resume, back.since) == (True, 1)
            lost = await next_of(it, Resumed)
            assert (lost.since, lost.count, lost.recovered) == (1, 0, False)
            assert lost.reason == "too many missed events"
            await add_logs(db, "after")
            after = await events(it, 1)
            assert [(e.seq, e.data["msg"]) for e in after] == [(5, "after")]


async def test_recovered_false_for_a_pruned_since_and_for_a_reset_log(
        hub: RunningHub, db: asyncpg.Connection) -> None:
    await add_logs(db, "old-1", "old-2")
    await db.execute("UPDATE events SET created_at = created_at - interval '1 hour'")
    assert await prune(db, timedelta(minutes=1)) == (2, 2)

    async with HubClient(hub.http, hub.token(), topics=PERSISTED, since=0) as client:
        it = aiter(client)
        assert (await next_of(it, Connected)).resume
        gone = await next_of(it, Resumed)
        assert (gone.since, gone.recovered, gone.reason) == (0, False, "since not retained")

    # A position from a database that was since reset (since > head): events start again at
    # low seqs, and the client must not drop them as duplicates of its old position.
    async with HubClient(hub.http, hub.token(), topics=PERSISTED, since=1000) as client:
        it = aiter(client)
        await next_of(it, Connected)
        reset = await next_of(it, Resumed)
        assert (reset.since, reset.recovered) == (1000, False)
        await add_logs(db, "new")
        assert [(e.seq, e.data["msg"]) for e in await events(it, 1)] == [(3, "new")]


async def test_a_rejected_token_or_request_raises_without_retry(hub: RunningHub) -> None:
    cases: list[tuple[HubClient, int, str]] = [
        (HubClient(hub.http, "not-a-jwt"), 4001, "get a new token"),
        (HubClient(hub.http, hub.token(ttl=-60)), 4001, "token expired"),
        (HubClient(hub.http, hub.token(topics=["log_stream"]), topics=["trade_update"]), 4003,
         "trade_update"),
    ]
    for client, code, words in cases:
        seen: list[HubItem] = []
        with pytest.raises(HubRejected) as caught:
            async with client:
                async for item in client:
                    seen.append(item)
        assert caught.value.code == code
        assert words in str(caught.value)
        assert not any(isinstance(i, Reconnecting) for i in seen)
    await until(lambda: len(hub.hub.manager) == 0)

    with pytest.raises(HubRejected) as caught:
        async with HubClient(f"{hub.http}/not-the-hub/", hub.token()) as client:
            async for _ in client:
                pass
    assert 400 <= caught.value.code < 500
    assert "HTTP" in str(caught.value)


async def test_gives_up_after_max_attempts_when_nothing_listens() -> None:
    client = HubClient(f"http://127.0.0.1:{free_port()}", "t", max_attempts=3, backoff_base=0.01)
    retries: list[Reconnecting] = []
    with pytest.raises(HubUnavailable) as caught:
        async with client:
            async for item in client:
                assert isinstance(item, Reconnecting)
                retries.append(item)
    assert [(r.code, r.failures) for r in retries] == [(None, 1), (None, 2)]
    assert caught.value.attempts == 3


async def test_the_socket_is_closed_on_break_cancel_and_exit(hub: RunningHub) -> None:
    manager = hub.hub.manager

    # break without `async with`: the dropped generator is finalised, which closes the socket
    client = HubClient(hub.http, hub.token())
    async for item in client:
        if isinstance(item, Connected):
            await until(lambda: len(manager) == 1)
            break
    await until(lambda: len(manager) == 0)

    # an exception in the consumer, inside `async with`
    with pytest.raises(RuntimeError, match="consumer failed"):
        async with HubClient(hub.http, hub.token()) as client:
            async for _ in client:
                await until(lambda: len(manager) == 1)
                raise RuntimeError("consumer failed")
    assert client.closed
    await until(lambda: len(manager) == 0)

    # cancellation of the task that iterates (what Ctrl-C does to `zepix-hub tail`)
    connected = asyncio.Event()

    async def consume() -> None:
        async with HubClient(hub.http, hub.token()) as c:
            async for item in c:
                if isinstance(item, Connected):
                    connected.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(connected.wait(), 10)
    await until(lambda: len(manager) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: len(manager) == 0)


async def test_aclose_from_another_task_ends_the_iteration(hub: RunningHub) -> None:
    client = HubClient(hub.http, hub.token(), topics=PERSISTED)
    seen: list[Any] = []

    async def consume() -> None:
        async for item in client:
            seen.append(item)

    task = asyncio.create_task(consume())
    await until(lambda: len(hub.hub.manager) == 1 and bool(seen))
    await client.aclose()
    await asyncio.wait_for(task, 10)  # ends without an exception and without reconnecting
    assert [type(i) for i in seen] == [Connected]
    await until(lambda: len(hub.hub.manager) == 0)


async def test_aclose_while_the_socket_is_still_opening_ends_the_iteration(hub: RunningHub) -> None:
    """aclose() between the TCP connect and the iteration's first read must not leave the iterator waiting
    on a socket nobody closes. The token function runs just before the connect: the aclose() it schedules
    runs while the handshake is in flight, every time."""
    client: HubClient

    def token() -> str:
        asyncio.get_running_loop().create_task(client.aclose())
        return hub.token()

    client = HubClient(hub.http, token, topics=PERSISTED)

    async def consume() -> list[Any]:
        return [item async for item in client]

    seen = await asyncio.wait_for(consume(), 10)  # hang guard
    assert seen == []  # closed before the welcome was read
    await until(lambda: len(hub.hub.manager) == 0)
