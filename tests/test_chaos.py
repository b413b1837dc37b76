"""Chaos, nothing lost: resuming clients against a hub whose listener, database and process all die.

Writers commit (and roll back) trades and log lines at random pace while two
dozen clients on random topic sets drop their connections and resume at random,
some over the HTTP replay API, some over the WebSocket's `since`. Meanwhile the
listener's backend is terminated, the PostgreSQL server is restarted and the
hub process is SIGKILLed and started again on the same port. At the end each
client's received seqs must be exactly the committed events of its topics, in
order: nothing missing, nothing twice.

HUB_CHAOS_SECONDS (default 15) sets the length of the run; every 15 s of it
brings one more round of the three faults. HUB_CHAOS_SEED replays a run's
random choices (the seed is printed on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from service.api.auth import mint
from service.settings import load_settings
from tests.hubs import SECRET, HubProcess, RunningHub, connect, recv_json, running_hub
from tests.pg import fresh_private_database, private_down

CHAOS_SECONDS = float(os.environ.get("HUB_CHAOS_SECONDS", "15"))
PERSISTED = ("trade_update", "log_stream", "notification")
N_WRITERS = 4
N_CLIENTS = 24
ROLLBACK_RATE = 0.15
# Close codes a resuming client may meet during chaos; anything else (4001, 4003, 4400, 1008, 1009) is a bug.
RETRYABLE_CLOSES = {1000, 1001, 1006, 1011, 1012, 1013, 4008}
# InternalClientError: what asyncpg raises on a connection whose server went away mid-protocol.
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


@pytest.fixture
async def chaos_db(private_pg: tuple[Path, str]) -> AsyncIterator[tuple[Path, str]]:
    pgdata, admin = private_pg
    yield pgdata, await fresh_private_database(admin, "chaos_test")


# -- writers: the bot ------------------------------------------------------------------------------------

@dataclass
class WriterStats:
    commits: int = 0
    rollbacks: int = 0
    failures: Counter[str] = field(default_factory=Counter)


async def _writer(name: str, dsn: str, rng: random.Random, stop: asyncio.Event, stats: WriterStats) -> None:
    """Random transactions with a pause inside (a commit delay); some roll back, some die with the server.

    Nothing is recorded about what committed: the events table is the truth, so a
    transaction whose COMMIT was cut by the restart counts exactly as it ended up.
    """
    conn: asyncpg.Connection | None = None
    mine: list[int] = []  # trades this writer created: updates stay on them, so writers never wait on each other
    backoff = 0.05
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(dsn, timeout=3)
            new: list[int] = []
            async with conn.transaction():
                for _ in range(rng.randint(1, 3)):
                    roll = rng.random()
                    if roll < 0.3 or not mine:
                        new.append(await conn.fetchval(
                            "INSERT INTO trades (symbol, side, quantity, entry_price) "
                            "VALUES ($1, $2, $3, 100) RETURNING id",
                            rng.choice(["BTCUSDT", "ETHUSDT", "EURUSD"]), rng.choice(["BUY", "SELL"]),
                            rng.randint(1, 10)))
                    elif roll < 0.55:
                        await conn.execute(
                            "UPDATE trades SET status = $2, updated_at = clock_timestamp() WHERE id = $1",
                            rng.choice(mine), rng.choice(["OPEN", "PARTIALLY_FILLED", "FILLED", "CLOSED"]))
                    else:
                        level = rng.choices(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], [1, 5, 2, 2, 1])[0]
                        await conn.execute("INSERT INTO logs (level, msg, source) VALUES ($1, $2, $3)",
                                           level, f"chaos line {rng.random():.6f}", name)
                await asyncio.sleep(rng.uniform(0, 0.03))  # the commit delay, with the rows written
                if rng.random() < ROLLBACK_RATE:
                    raise _Rollback
            stats.commits += 1
            mine.extend(new)
            backoff = 0.05
        except _Rollback:
            stats.rollbacks += 1
        except DB_ERRORS as exc:
            stats.failures[type(exc).__name__] += 1
            if conn is not None:
                conn.terminate()
                conn = None
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 0.5)
        await asyncio.sleep(rng.uniform(0.005, 0.04))
    if conn is not None:
        conn.terminate()


class _Rollback(Exception):
    pass


# -- clients: dashboards that come and go ----------------------------------------------------------------

class Retry(Exception):
    """The hub is away (killed, restarting, its database down): back off, then resume."""


@dataclass
class ChaosClient:
    name: str
    topics: frozenset[str]  # may include sys_status (live only, ignored by the checker)
    http_resume: bool
    rng: random.Random
    received: list[int] = field(default_factory=list)
    cursor: int = 0  # where to resume: the last seq seen, or next_since of an HTTP page
    target: int | None = None  # set for the final drain: the last committed seq on our topics
    sessions: int = 0
    http_pages: int = 0
    replays: int = 0
    closes: Counter[int | str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    hints_ahead: list[str] = field(default_factory=list)

    @property
    def persisted(self) -> list[str]:
        return sorted(self.topics & set(PERSISTED))

    @property
    def done(self) -> bool:
        return self.target is not None and self.cursor >= self.target

    def record(self, seq: int, how: str) -> None:
        if seq <= self.cursor:
            self.problems.append(f"{how}: seq {seq} after cursor {self.cursor} (duplicate or out of order)")
        self.received.append(seq)
        self.cursor = max(self.cursor, seq)


async def _ws_session(c: ChaosClient, url: str, token: str, draining: asyncio.Event) -> None:
    query = f"token={token}&topics={','.join(sorted(c.topics))}&since={c.cursor}"
    try:
        ws = await connect(f"{url}?{query}")
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Retry(type(exc).__name__) from exc
    c.sessions += 1
    lifetime = c.rng.uniform(0.2, 2.0)
    deadline = time.monotonic() + lifetime
    try:
        try:
            welcome = await recv_json(ws, 15)
        except TimeoutError as exc:
            ws.transport.abort()
            raise Retry("no welcome in time") from exc
        if welcome.get("type") != "welcome":
            c.problems.append(f"first frame is not a welcome: {welcome}")
            ws.transport.abort()
            raise Retry("no welcome")
        while True:
            if draining.is_set():
                if c.done:
                    break
                deadline = time.monotonic() + 30  # keep the session while catching up to the end
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                frame = await recv_json(ws, remaining)
            except TimeoutError:
                continue
            kind = frame.get("type")
            if kind == "event":
                if frame.get("seq") is not None:
                    if frame.get("topic") not in c.topics:
                        c.problems.append(f"event on a topic not subscribed: {frame.get('topic')}")
                    c.record(int(frame["seq"]), "ws")
            elif kind == "replayed":
                c.replays += 1
                if frame.get("recovered") is not True:
                    c.problems.append(f"resume from {frame.get('since')} not recovered: {frame}")
            elif kind == "error":
                c.problems.append(f"error frame: {frame}")
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        c.closes[code] += 1
        if code not in RETRYABLE_CLOSES:
            c.problems.append(f"unexpected close {code} {exc.rcvd.reason if exc.rcvd else ''}")
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if "since=" in reason:
            hint = int(reason.rsplit("since=", 1)[1].split()[0].rstrip(";.,"))
            if hint > c.cursor:
                c.hints_ahead.append(f"close {code} says since={hint}, last seen {c.cursor}")
        raise Retry(f"closed {code}") from exc
    # Leave on our own, sometimes politely, sometimes by dropping the TCP connection.
    if c.rng.random() < 0.5:
        with contextlib.suppress(Exception):
            await ws.close()
        c.closes["client close"] += 1
    else:
        ws.transport.abort()
        c.closes["client abort"] += 1


async def _http_catch_up(c: ChaosClient, base: str, token: str, http: httpx.AsyncClient) -> None:
    """Page through /api/events from the cursor to the end, as a dashboard back from sleep would."""
    if not c.persisted:
        return
    while True:
        limit = c.rng.choice([5, 40, 500])
        try:
            resp = await http.get(f"{base}/api/events", params={
                "since": c.cursor, "topics": ",".join(c.persisted), "limit": limit},
                headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError as exc:
            raise Retry(type(exc).__name__) from exc
        if resp.status_code == 503:  # the database is away: retry
            c.closes[f"http {resp.status_code}"] += 1
            raise Retry(f"http {resp.status_code}")
        if resp.status_code != 200:
            c.problems.append(f"GET /api/events since={c.cursor}: {resp.status_code} {resp.text[:200]}")
            raise Retry(f"http {resp.status_code}")
        c.http_pages += 1
        page = resp.json()
        for frame in page["events"]:
            if frame["topic"] not in c.topics:
                c.problems.append(f"replay page has topic {frame['topic']}")
            c.record(int(frame["seq"]), "http")
        # A short page means nothing more on these topics up to its head: the cursor may jump there.
        c.cursor = max(c.cursor, int(page["next_since"]))
        if len(page["events"]) < limit:
            return


async def _client(c: ChaosClient, hub: HubProcess, token: str, http: httpx.AsyncClient,
                  draining: asyncio.Event) -> None:
    backoff = 0.05
    while not c.done:
        try:
            if c.http_resume and (draining.is_set() or c.rng.random() < 0.6):
                await _http_catch_up(c, hub.http, token, http)
                if c.done:
                    return
            await _ws_session(c, hub.ws, token, draining)
            backoff = 0.05
            if not draining.is_set():
                await asyncio.sleep(c.rng.uniform(0, 0.4))  # offline a while: events pile up to resume
        except Retry:
            await asyncio.sleep(backoff * (0.5 + c.rng.random()))
            backoff = min(backoff * 2, 1.0)


# -- the faults ------------------------------------------------------------------------------------------

async def _wait_ready(hub: HubProcess, http: httpx.AsyncClient, timeout: float = 30) -> None:
    """Faults hit a healthy system, so each one is a real fault, not a no-op on something already down."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(f"{hub.http}/readyz")).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"hub not ready in {timeout}s")
        await asyncio.sleep(0.1)


async def _kill_listener_backend(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'zepix-hub-listener' AND datname = current_database()"))
    finally:
        await conn.close()


async def _restart_pg(pgdata: Path, dsn: str, mode: str) -> None:
    async with private_down(pgdata, dsn, mode):  # back up even when wait_for cancels the outage
        await asyncio.sleep(1.0)  # an outage writers and resuming clients must live through


async def _restart_hub(hub: HubProcess, log_dir: Path, incarnation: int) -> None:
    await asyncio.to_thread(hub.kill)
    await asyncio.sleep(0.3)
    # A log file per incarnation keeps each process's lines apart for whoever reads them after a failure.
    hub.log_path = log_dir / f"hub-{incarnation}.log"
    await asyncio.to_thread(hub.start)


async def _faults(hub: HubProcess, pgdata: Path, dsn: str, http: httpx.AsyncClient, log_dir: Path,
                  started: float, seconds: float, record: list[str]) -> None:
    rounds = max(1, round(seconds / 15))
    span = seconds / rounds

    async def at(fraction: float, rnd: int) -> None:
        await asyncio.sleep(max(0.0, started + span * (rnd + fraction) - time.monotonic()))
        await _wait_ready(hub, http)

    for rnd in range(rounds):
        await at(0.2, rnd)
        killed = await _kill_listener_backend(dsn)
        assert killed >= 1, "no listener backend to terminate"
        record.append("listener backend terminated")
        await at(0.45, rnd)
        mode = "fast" if rnd % 2 == 0 else "immediate"
        await _restart_pg(pgdata, dsn, mode)
        record.append(f"postgres restarted ({mode})")
        await at(0.7, rnd)
        await _restart_hub(hub, log_dir, rnd + 1)
        record.append("hub SIGKILLed and restarted")


# -- the test --------------------------------------------------------------------------------------------

async def test_chaos_nothing_lost(chaos_db: tuple[Path, str], tmp_path: Path) -> None:
    pgdata, dsn = chaos_db
    seed = int(os.environ.get("HUB_CHAOS_SEED", str(random.randrange(2**32))))
    print(f"HUB_CHAOS_SEED={seed} HUB_CHAOS_SECONDS={CHAOS_SECONDS}")
    rng = random.Random(seed)
    hub = HubProcess(dsn, tmp_path / "hub-0.log", HUB_LOG_LEVEL="WARNING").start()
    token = mint(load_settings(jwt_secret=SECRET), SECRET, subject="chaos", ttl_s=3600)
    writer_stop, draining = asyncio.Event(), asyncio.Event()
    stats = [WriterStats() for _ in range(N_WRITERS)]
    clients: list[ChaosClient] = []
    for i in range(N_CLIENTS):
        persisted = [t for t in PERSISTED if rng.random() < 0.5] or [rng.choice(PERSISTED)]
        extra = ["sys_status"] if rng.random() < 0.3 else []
        clients.append(ChaosClient(f"client-{i}", frozenset(persisted + extra), http_resume=i % 3 == 0,
                                   rng=random.Random(rng.random())))
    faults: list[str] = []
    limits = httpx.Limits(max_connections=50)
    try:
        async with httpx.AsyncClient(timeout=5, limits=limits) as http:
            client_tasks = [asyncio.create_task(_client(c, hub, token, http, draining)) for c in clients]
            writer_tasks = [asyncio.create_task(_writer(f"writer-{i}", dsn, random.Random(rng.random()),
                                                        writer_stop, s)) for i, s in enumerate(stats)]
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    _faults(hub, pgdata, dsn, http, tmp_path, started, CHAOS_SECONDS, faults),
                    CHAOS_SECONDS + 120)
                await asyncio.sleep(max(0.0, started + CHAOS_SECONDS - time.monotonic()))
                writer_stop.set()
                await asyncio.wait_for(asyncio.gather(*writer_tasks), 30)
                truth = await _truth(dsn)
                for c in clients:
                    c.target = max((s for s, t in truth if t in c.topics), default=0)
                draining.set()
                # Hang guard only: the drain is quick when nothing is lost.
                done, pending = await asyncio.wait(client_tasks, timeout=60)
                stuck = [c.name for c, t in zip(clients, client_tasks, strict=True) if t in pending]
            finally:
                writer_stop.set()
                for task in [*client_tasks, *writer_tasks]:
                    task.cancel()
                await asyncio.gather(*client_tasks, *writer_tasks, return_exceptions=True)
        for task in done:
            task.result()  # a client that crashed on something unexpected fails the test here
    finally:
        hub.kill()

    context = _summary(seed, faults, stats, clients, truth)
    print(context)
    assert not stuck, f"clients never caught up: {stuck}\n{context}"
    assert faults[:3] == ["listener backend terminated", "postgres restarted (fast)",
                          "hub SIGKILLed and restarted"], context
    for c in clients:
        expected = [s for s, t in truth if t in c.topics]
        assert not c.problems, f"{c.name}: {c.problems[:5]}\n{context}"
        assert c.received == expected, f"{c.name} {sorted(c.topics)}: {_diff(c.received, expected)}\n{context}"
        assert not c.hints_ahead, f"{c.name}: a close reason named a since past what it had: {c.hints_ahead}"
    # The run exercised what it claims to.
    assert sum(s.commits for s in stats) > 50 and sum(s.rollbacks for s in stats) > 5, context
    assert sum(sum(s.failures.values()) for s in stats) > 0, f"no writer saw the restart\n{context}"
    assert {"trade_update", "log_stream", "notification"} <= {t for _, t in truth}, context
    assert all(c.sessions >= 2 for c in clients), context
    assert sum(c.http_pages for c in clients) > 0 and sum(c.replays for c in clients) > N_CLIENTS, context
    assert sum(c.closes[1006] + c.closes[1012] for c in clients) > 0, f"no client saw the hub die\n{context}"


async def _truth(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [(r["seq"], r["topic"]) for r in await conn.fetch("SELECT seq, topic FROM events ORDER BY seq")]
    finally:
        await conn.close()


def _diff(got: list[int], want: list[int]) -> str:
    missing = sorted(set(want) - set(got))
    twice = sorted(s for s, n in Counter(got).items() if n > 1)
    unexpected = sorted(set(got) - set(want))
    disorder = [(a, b) for a, b in itertools.pairwise(got) if b <= a]
    return (f"missing {missing[:20]} ({len(missing)}), twice {twice[:20]}, unexpected {unexpected[:20]}, "
            f"not increasing at {disorder[:5]}")


def _summary(seed: int, faults: list[str], stats: list[WriterStats], clients: list[ChaosClient],
             truth: list[tuple[int, str]]) -> str:
    closes: Counter[Any] = Counter()
    for c in clients:
        closes.update(c.closes)
    failures: Counter[str] = Counter()
    for s in stats:
        failures.update(s.failures)
    hints = [h for c in clients for h in c.hints_ahead]
    return (f"seed={seed} faults={faults} events={len(truth)} head={truth[-1][0] if truth else 0} "
            f"commits={sum(s.commits for s in stats)} rollbacks={sum(s.rollbacks for s in stats)} "
            f"writer_failures={dict(failures)} sessions={sum(c.sessions for c in clients)} "
            f"replays={sum(c.replays for c in clients)} http_pages={sum(c.http_pages for c in clients)} "
            f"closes={dict(closes)} close_hints_ahead_of_client={hints[:10]}")


# -- the two faults above, pinned down one at a time ---------------------------------------------------------

async def _hub_at(hub: RunningHub, dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(n):
            await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", f"line {i}")
    finally:
        await conn.close()
    for _ in range(200):
        if hub.hub.listener.last_seq == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"listener stuck at {hub.hub.listener.last_seq}")


async def test_1013_during_resume_names_the_clients_own_since(chaos_db: tuple[Path, str]) -> None:
    pgdata, dsn = chaos_db
    async with running_hub(dsn) as hub:
        await _hub_at(hub, dsn, 5)
        async with private_down(pgdata, dsn):
            async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream&since=1") as ws:
                assert (await recv_json(ws))["type"] == "welcome"
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        reason = info.value.rcvd.reason
        assert "since=" in reason, reason
        # The client holds events up to 1; "retry with since=5" would lose 2..5.
        assert int(reason.rsplit("since=", 1)[1]) == 1, reason


async def test_replay_api_answers_503_while_the_database_is_down(chaos_db: tuple[Path, str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    pgdata, dsn = chaos_db
    async with running_hub(dsn) as hub:
        # The hub's logging config (applied at start) detached pytest's handler from the root logger, and
        # "service" / "uvicorn.error" do not propagate: listen on them directly.
        watched = [logging.getLogger(name) for name in ("service", "uvicorn.error", "uvicorn.access")]
        for logger in watched:
            logger.addHandler(caplog.handler)
        try:
            await _hub_at(hub, dsn, 3)
            headers = {"Authorization": f"Bearer {hub.token()}"}
            async with httpx.AsyncClient(timeout=10) as http:
                async with private_down(pgdata, dsn):
                    events = await http.get(f"{hub.http}/api/events?since=0", headers=headers)
                    snapshot = await http.get(f"{hub.http}/api/snapshot", headers=headers)
                assert (events.status_code, snapshot.status_code) == (503, 503), (events.text, snapshot.text)
                # The capture works (the 503s were logged as warnings) and nothing was logged as an error.
                assert any("database unavailable" in r.getMessage() for r in caplog.records)
                assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
                # And it recovers by itself once the database is back.
                for _ in range(100):
                    again = await http.get(f"{hub.http}/api/events?since=0", headers=headers)
                    if again.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert [e["seq"] for e in again.json()["events"]] == [1, 2, 3]
        finally:
            for logger in watched:
                logger.removeHandler(caplog.handler)
