"""The ceiling reference: a bare `websockets` server that LISTENs and calls `websockets.broadcast()`.

No framework, no queue, no task per client: asyncpg's notification callback
writes the payload straight into every socket's transport. That is the fastest
a single Python process does this job (and it has no backpressure at all: a
client that stops reading grows its write buffer without bound).

Run as `python -m service.bench.ceiling --dsn DSN --port 0`; prints `READY <port>`.
"""

from __future__ import annotations

import asyncio

import asyncpg
import websockets
from websockets.asyncio.server import ServerConnection, serve

from .common import CHANNEL, server_main


async def run(dsn: str, port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    conn = await asyncpg.connect(dsn)
    await conn.add_listener(CHANNEL, lambda _c, _p, _ch, payload: websockets.broadcast(clients, payload))
    async with serve(handler, "127.0.0.1", port) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {bound}", flush=True)
        await asyncio.Future()  # until SIGTERM


def main() -> None:
    server_main(run)


if __name__ == "__main__":
    main()
