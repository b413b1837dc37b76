"""HubServer: uvicorn's Server, with the hub's close codes on shutdown.

uvicorn closes open WebSockets with 1012 when it shuts down; the hub's
protocol promises 1001 ("going away": reconnect and resume). So before
uvicorn's own shutdown, HubServer asks the hub to close every client with 1001
and waits for them (bounded).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from .app import hub_of
from .logconfig import logging_config
from .settings import Settings


def uvicorn_config(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None,
                   **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,  # bigger client frames: close 1009, enforced by the protocol layer
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        # Browsers offer permessage-deflate; accepting it means compressing every frame once per client
        # (zepix-hub bench S2D), and such clients cannot share the pre-built frame bytes.
        ws_per_message_deflate=False,
        log_config=logging_config(settings.log_level, settings.log_format),
        lifespan="on",
        timeout_graceful_shutdown=10,
        **kwargs,
    )


class HubServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = hub_of(self.config.loaded_app)
        if hub is not None:
            try:
                await asyncio.wait_for(hub.going_away(), timeout=8)
            except Exception:
                pass  # uvicorn's own shutdown still closes whatever is left
        await super().shutdown(sockets)

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("server is not listening")


def run_workers(config: uvicorn.Config, workers: int, on_bound: Callable[[int], None] | None = None) -> None:
    """Run `workers` HubServer processes on one listening socket until SIGINT/SIGTERM.

    uvicorn's own supervisor would start plain uvicorn Servers (1012 on shutdown
    instead of the hub's 1001), so this small one starts HubServers. Each worker
    runs its own listener on the shared database. A worker that dies is not
    restarted: the others keep serving, and its clients resume elsewhere.
    """
    from uvicorn._subprocess import get_subprocess

    sock = config.bind_socket()
    if on_bound is not None:
        on_bound(int(sock.getsockname()[1]))
    processes = [get_subprocess(config, target=HubServer(config).run, sockets=[sock]) for _ in range(workers)]
    for process in processes:
        process.start()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop.is_set() and any(p.is_alive() for p in processes):
        stop.wait(0.5)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(30)
    sock.close()
