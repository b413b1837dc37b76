"""The demo feed keeps writing however its database connection is ended (a DBA's pg_terminate_backend
mid-statement, between statements, or while asyncpg is between protocol states)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from service.cli.demo import run_demo

DEMO_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'zepix-hub-demo'"


async def _events(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events"))


async def _writing_again(db: asyncpg.Connection, feed: asyncio.Task[None], killed: set[int],
                         within: float = 30) -> int:
    """Wait until the feed has a new connection (not one of `killed`, which may linger in pg_stat_activity while
    it exits) and has written through it; return that backend's pid."""
    deadline = time.monotonic() + within
    pid, before = None, 0
    while True:
        assert not feed.done(), feed.exception() if not feed.cancelled() else "cancelled"
        assert time.monotonic() < deadline, f"the demo feed wrote nothing for {within} s after losing its connection"
        if pid is None:
            pids = [row["pid"] for row in await db.fetch(DEMO_BACKENDS) if row["pid"] not in killed]
            if pids:
                pid, before = pids[0], await _events(db)
        elif await _events(db) > before:
            return int(pid)
        await asyncio.sleep(0.01)


async def test_demo_feed_survives_its_connection_being_terminated_at_any_moment(
        dsn: str, db: asyncpg.Connection) -> None:
    """Terminated at varied points of a busy feed, the connection is opened again every time; asyncpg can then
    report the death as InternalClientError ("cannot switch to state 12"), which once stopped the feed for good."""
    feed = asyncio.create_task(run_demo(dsn, rate=400))
    try:
        killed: set[int] = set()
        for round_ in range(12):
            pid = await _writing_again(db, feed, killed)
            await asyncio.sleep(0.002 * (round_ % 7))  # vary where in a statement the kill lands
            assert await db.fetchval("SELECT pg_terminate_backend($1)", pid), round_
            killed.add(pid)
        await _writing_again(db, feed, killed)
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
