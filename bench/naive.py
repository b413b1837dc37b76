"""The baseline: the spec's naive ConnectionManager, fed by the same NOTIFY channel as the hub.

A list of sockets; `broadcast` awaits `send_text` on each in turn; one task
takes notifications off a queue and broadcasts them, so one client whose
socket stops draining holds up every other client. Served by uvicorn with the
same WebSocket implementation and event loop as the hub, so the difference
measured is the fan-out design, not the server stack.

Run as `python -m bench.naive --dsn DSN --port 0`; prints `READY <port>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from .common import CHANNEL, FRAMES_OF, server_main


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        if websocket in self.active_connections:
            self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in list(self.active_connections):
            try:
                await connection.send_text(message)
            except Exception:
                self.disconnect(connection)  # the one concession: a dead socket must not stop the loop


def create_app(dsn: str) -> FastAPI:
    manager = ConnectionManager()
    inbox: asyncio.Queue[str] = asyncio.Queue()

    async def pump(conn: asyncpg.Connection) -> None:
        while True:
            # The payload is the seq (migration 0006): one read per notification, then the broadcast.
            for (frame,) in await conn.fetch(FRAMES_OF, [int(await inbox.get())]):
                await manager.broadcast(frame)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn = await asyncpg.connect(dsn)
        await conn.add_listener(CHANNEL, lambda _c, _p, _ch, payload: inbox.put_nowait(payload))
        task = asyncio.create_task(pump(conn))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await conn.close()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/live")
    async def live(websocket: WebSocket) -> None:
        await manager.connect(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            manager.disconnect(websocket)

    return app


async def serve(dsn: str, port: int) -> None:
    # HUB_BENCH_NAIVE_WS picks another uvicorn WebSocket implementation (e.g. "websockets", uvicorn's default
    # when ws="auto"), to see how much of the baseline's speed is the server stack rather than the design.
    ws = os.environ.get("HUB_BENCH_NAIVE_WS") or "websockets-sansio"
    config = uvicorn.Config(create_app(dsn), host="127.0.0.1", port=port, ws=ws,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("baseline server did not start")
        await asyncio.sleep(0.02)
    print(f"READY {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    await task


def main() -> None:
    server_main(serve)


if __name__ == "__main__":
    main()
