"""The load generator, driven over stdin/stdout by the coordinator: the trading bot's side of the benchmark.

Commands:
- write: INSERT log lines at `rate`/s for `duration` s, one transaction each, each carrying
  `{"bench_t": time.time() just before the INSERT, "padding_x": pad}` in its context
- filler: bulk-insert `n` log lines (the events a resuming client has missed)
- trades: `writers` connections each inserting `per_writer` trades, one transaction each (S6)
- read_ref: page through the event log with the hub's own queries, straight from asyncpg (S5 reference)
Run as `python -m bench.writer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from service.store.events import ORDERED_WALK, QUERIES

from .common import Command, percentile, run_async, serve_commands

INSERT_LOG = "INSERT INTO logs (level, msg, source, context) VALUES ('INFO', $1, 'bench', $2::jsonb)"
INSERT_TRADE = ("INSERT INTO trades (symbol, side, order_type, quantity, entry_price, strategy) "
                "VALUES ($1, $2, 'LIMIT', $3, $4, 'bench')")


class Writer:
    def __init__(self) -> None:
        self.conns: dict[str, asyncpg.Connection] = {}

    async def conn(self, dsn: str) -> asyncpg.Connection:
        conn = self.conns.get(dsn)
        if conn is None or conn.is_closed():
            conn = await asyncpg.connect(dsn, server_settings={"application_name": "zepix-bench"})
            self.conns[dsn] = conn
        return conn

    async def handle(self, cmd: Command) -> dict[str, Any]:
        kind = cmd["cmd"]
        if kind == "write":
            return await self.write(cmd)
        if kind == "filler":
            return await self.filler(cmd)
        if kind == "trades":
            return await self.trades(cmd)
        if kind == "read_ref":
            return await self.read_ref(cmd)
        raise ValueError(f"unknown command {kind!r}")

    async def write(self, cmd: Command) -> dict[str, Any]:
        conn = await self.conn(cmd["dsn"])
        rate, duration = float(cmd["rate"]), float(cmd["duration"])
        pad = "x" * int(cmd.get("pad", 0))
        total = int(rate * duration)
        late: list[float] = []
        took: list[float] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(total):
            due = t0 + i / rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            late.append(loop.time() - due)
            t = time.time()
            context = f'{{"bench_t": {t:.6f}, "padding_x": "{pad}"}}'
            await conn.execute(INSERT_LOG, f"bench event {i}", context)
            took.append(time.time() - t)
        seconds = loop.time() - t0
        late.sort()
        took.sort()
        return {"written": total, "seconds": seconds, "rate": total / seconds if seconds else 0.0,
                "late_p99_ms": percentile(late, 99) * 1000, "late_max_ms": (late[-1] if late else 0.0) * 1000,
                "commit_p50_ms": percentile(took, 50) * 1000, "commit_p99_ms": percentile(took, 99) * 1000,
                "commit_max_ms": (took[-1] if took else 0.0) * 1000}

    async def filler(self, cmd: Command) -> dict[str, Any]:
        conn = await self.conn(cmd["dsn"])
        n, batch = int(cmd["n"]), 20_000
        t0 = time.perf_counter()
        done = 0
        while done < n:
            step = min(batch, n - done)
            await conn.execute(
                "INSERT INTO logs (level, msg, source, context) "
                "SELECT 'INFO', 'missed event ' || g, 'bench-filler', jsonb_build_object('i', g) "
                "FROM generate_series($1::int, $2::int) AS g", done + 1, done + step)
            done += step
        return {"inserted": n, "seconds": time.perf_counter() - t0}

    async def trades(self, cmd: Command) -> dict[str, Any]:
        dsn, writers, per = cmd["dsn"], int(cmd["writers"]), int(cmd["per_writer"])
        conns = [await asyncpg.connect(dsn, server_settings={"application_name": "zepix-bench-writer"})
                 for _ in range(writers)]
        listener: asyncpg.Connection | None = None
        notified = 0
        all_in = asyncio.Event()

        def on_notify(*_args: object) -> None:
            nonlocal notified
            notified += 1
            if notified >= writers * per:
                all_in.set()

        if cmd.get("listen"):
            listener = await asyncpg.connect(dsn)
            await listener.add_listener(cmd["listen"], on_notify)
        try:
            async def one(conn: asyncpg.Connection, w: int) -> None:
                for i in range(per):
                    await conn.execute(INSERT_TRADE, f"SYM{(w * 7 + i) % 50}", "BUY" if i % 2 else "SELL",
                                       1 + i % 5, 100 + (i % 100) / 10)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(c, w) for w, c in enumerate(conns)))
            seconds = time.perf_counter() - t0
            if listener is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await all_in.wait()
        finally:
            for c in conns:
                await c.close()
            if listener is not None:
                await listener.close()
        inserts = writers * per
        return {"inserts": inserts, "seconds": seconds, "rate": inserts / seconds, "notified": notified}

    async def read_ref(self, cmd: Command) -> dict[str, Any]:
        """The hub's replay page (position + events in one REPEATABLE READ snapshot), without HTTP."""
        conn = await self.conn(cmd["dsn"])
        since, limit = int(cmd["since"]), int(cmd["limit"])
        events = 0
        t0 = time.perf_counter()
        while True:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.fetchrow(QUERIES["log_position"])
                await conn.execute(ORDERED_WALK)
                rows = await conn.fetch(QUERIES["events_after_on_topics"], since, ["log_stream"], limit)
            events += len(rows)
            if len(rows) < limit:
                break
            since = rows[-1]["seq"]
        return {"events": events, "seconds": time.perf_counter() - t0}


def main() -> None:
    run_async(serve_commands(Writer().handle))


if __name__ == "__main__":
    main()
