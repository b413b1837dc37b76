"""The ceiling reference: a bare `websockets` server that LISTENs and calls `websockets.broadcast()`.

No framework, no task per client: one task reads the frames of the seqs the
notifications named (every seq that arrived meanwhile in one query; since
migration 0006 the payload is the seq alone) and writes them straight into
every socket's transport. That is the fastest a single Python process does
this job (and it has no backpressure at all: a client that stops reading grows
its write buffer without bound).

Run as `python -m bench.ceiling --dsn DSN --port 0`; prints `READY <port>`.
"""

from __future__ import annotations

import asyncio

import asyncpg
import websockets
from websockets.asyncio.server import ServerConnection, serve

from .common import CHANNEL, FRAMES_OF, server_main


async def run(dsn: str, port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    pending: list[int] = []
    wake = asyncio.Event()

    def on_notify(_c: object, _p: int, _ch: str, payload: str) -> None:
        pending.append(int(payload))
        wake.set()

    async def pump() -> None:
        while True:
            await wake.wait()
            wake.clear()
            seqs = pending[:]
            pending.clear()
            for (frame,) in await conn.fetch(FRAMES_OF, seqs):
                websockets.broadcast(clients, frame)

    conn = await asyncpg.connect(dsn)
    await conn.add_listener(CHANNEL, on_notify)
    task = asyncio.create_task(pump())
    try:
        async with serve(handler, "127.0.0.1", port) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(f"READY {bound}", flush=True)
            await asyncio.Future()  # until SIGTERM
    finally:
        task.cancel()


def main() -> None:
    server_main(run)


if __name__ == "__main__":
    main()
