"""ASGI plumbing the hub needs and ASGI does not offer: aborting a WebSocket's TCP connection.

A peer that stopped reading cannot be sent a close frame (the buffers are
full), so the hub must drop the connection. ASGI has no "abort", and Starlette
wraps `send` in closures, so this outermost middleware captures uvicorn's
protocol object (the `__self__` of the raw `send`) and leaves an `abort`
callable in the scope. Under another server the callable is a no-op and the
requested close stands until that server times it out.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

from websockets.protocol import State

ABORT_KEY = "zepix.abort"
DIRECT_KEY = "zepix.direct"

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


class TransportAbort:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(send, "__self__", None)
            scope[ABORT_KEY] = lambda: _abort(protocol)
            scope[DIRECT_KEY] = DirectSocket.of(protocol)
        await self.app(scope, receive, send)


def _abort(protocol: object) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Reset, not FIN: a FIN would queue behind the megabytes the peer does not read, and the
                # kernel would keep them (and the peer would not notice) for minutes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(Exception):
            transport.abort()


class DirectSocket:
    """Writes finished WebSocket frames straight to uvicorn's transport, without the ASGI round trip.

    A server-to-client frame is not masked, so its bytes are the same for every client: the hub builds
    them once per event (`Frame.wire`) and hands the same bytes to every transport. Only for uvicorn's
    websockets-sansio protocol, and only while the connection is open and negotiated no extension
    (permessage-deflate compresses per client; such clients keep the ASGI path).
    """

    __slots__ = ("_conn", "_protocol", "_transport")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._conn = protocol.conn
        self._transport = protocol.transport

    @classmethod
    def of(cls, protocol: object) -> DirectSocket | None:
        if not all(hasattr(protocol, a) for a in ("conn", "transport", "writable", "close_sent")):
            return None  # another server or WebSocket implementation: the ASGI path it is
        return cls(protocol)

    def usable(self) -> bool:
        """Open, no extension, not closing (it may be paused: then wait for `drained`)."""
        return (self._conn.state is State.OPEN and not self._conn.extensions and not self._protocol.close_sent
                and not self._transport.is_closing())

    def closing(self) -> bool:
        """The connection is closing or closed (by either side): nothing more may be written to it."""
        return (self._conn.state is not State.OPEN or bool(self._protocol.close_sent)
                or self._transport.is_closing())

    def ready(self) -> bool:
        """Usable and below the transport's high-water mark: a write now does not pile up."""
        return bool(self._protocol.writable.is_set()) and self.usable()

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def drained(self) -> None:
        await self._protocol.writable.wait()


def direct_of(scope: Mapping[str, Any]) -> DirectSocket | None:
    direct: DirectSocket | None = scope.get(DIRECT_KEY)
    return direct


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None]:
    abort: Callable[[], None] = scope.get(ABORT_KEY) or (lambda: None)
    return abort
