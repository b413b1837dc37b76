"""Every use of uvicorn's internals, fenced in one module (pyproject.toml bounds uvicorn to the tested releases).

The direct write path and the abort (docs/adr/0002-backpressure.md), the front door's limits
(docs/adr/0009-front-door-limits.md) and the worker supervisor's process start. Without them the hub still
works, through the ASGI path and slower, and says so; tests/test_uvicorn_fence.py checks this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any, cast

from uvicorn._subprocess import get_subprocess as get_subprocess
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import HANDLED_SIGNALS as HANDLED_SIGNALS
from uvicorn.server import ServerState
from websockets.protocol import State
from websockets.server import ServerProtocol

from .limits import FrontDoorLimits

log = logging.getLogger(__name__)

# What this module takes from uvicorn, and what happens without it:
# Two hub features need what ASGI does not offer:
#
# - the direct write path: a finished WebSocket frame written straight to the
#   transport of uvicorn's websockets-sansio protocol (attributes `conn`,
#   `transport`, `writable`, `close_sent`), without an ASGI round trip;
# - the abort: dropping a connection whose peer stopped reading (`transport`).
#
# And the worker supervisor starts processes with uvicorn's private
# `get_subprocess` and handles the signals uvicorn's Server does. And the front
# door (GuardedHttpToolsProtocol) subclasses uvicorn's httptools protocol to
# bound what a stranger can hold before a request is complete (ADR 0009):
# at most `max_connections` connections (one over it: 503 before anything is
# read), a request head of at most `max_header_bytes` (431), a complete head
# within `header_timeout_s`, and a response write stalled for `send_timeout_s`
# reset. Once a WebSocket is open none of this applies.
#
# When a uvicorn release (or another server, or another WebSocket protocol)
# no longer offers these attributes, the hub still works, through the ASGI
# path, at a higher cost per frame, and says so: a warning at start-up
# (`startup_problem`) and per process at the first connection concerned, and
# the metrics `zepix_hub_direct_write_path` (0) and
# `zepix_hub_connections_by_writer_total{writer="asgi"}`. Upgrading uvicorn: run the suite
# against the new release (tests/test_uvicorn_fence.py checks this module),
# then widen the bound in pyproject.toml.

#: What the direct write path reads and writes on uvicorn's protocol object.
DIRECT_ATTRIBUTES = ("conn", "transport", "writable", "close_sent")


def _sansio_class() -> type | None:
    try:
        # Lazy and guarded: a uvicorn without this protocol (renamed or removed) costs the direct path only.
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    return WebSocketsSansIOProtocol


def startup_problem(ws_protocol_class: object) -> str | None:
    """Why the direct write path cannot work with this protocol class (None: it can), found before any client.

    The attributes are set per connection, so the class's code is read for their names: a uvicorn that
    renamed one is caught here, at start-up, and not at the first client.
    """
    sansio = _sansio_class()
    if sansio is None:
        return "this uvicorn has no websockets-sansio protocol"
    if not (isinstance(ws_protocol_class, type) and issubclass(ws_protocol_class, sansio)):
        name = getattr(ws_protocol_class, "__qualname__", repr(ws_protocol_class))
        return f"uvicorn runs WebSockets with {name}, not websockets-sansio"
    names: set[str] = set()
    for klass in ws_protocol_class.__mro__:
        for value in vars(klass).values():
            code = getattr(value, "__code__", None)
            if code is not None:
                names.update(code.co_names)
    missing = [a for a in DIRECT_ATTRIBUTES if a not in names]
    if missing:
        return f"uvicorn's websockets-sansio protocol no longer uses {', '.join(missing)}"
    return None


def protocol_of(send: Any) -> object | None:
    """uvicorn's protocol object behind the raw ASGI `send` (a bound method of it), if any."""
    return getattr(send, "__self__", None)


def abort(protocol: object) -> None:
    """Drop the TCP connection at once (RST); a no-op for an object without a transport."""
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
        """The direct path for this connection, or None (the ASGI path it is: see the module docstring)."""
        sansio = _sansio_class()
        if sansio is None or not isinstance(protocol, sansio):
            return None
        if not all(hasattr(protocol, a) for a in DIRECT_ATTRIBUTES):
            return None
        if not isinstance(getattr(protocol, "conn", None), ServerProtocol):
            return None
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


# -- the front door: uvicorn's httptools protocol with the limits uvicorn lacks ---------------------------

def _fixed_response(status: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", f"content-length: {len(body)}",
            "connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TOO_MANY_CONNECTIONS = _fixed_response("503 Service Unavailable", "too many connections; retry shortly\n",
                                       "retry-after: 1")
HEAD_TOO_LARGE = _fixed_response("431 Request Header Fields Too Large", "request head too large\n")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the connection cap, the head size limit and the head deadline (module doc).

    Reads its limits from `config.front_door` (server.HubConfig); a plain uvicorn Config gets the defaults.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "front_door", None)
        self.limits = limits if isinstance(limits, FrontDoorLimits) else FrontDoorLimits()
        # Data is fed to the parser in slices, so a head over the limit is caught having buffered at most
        # the limit plus one slice, whatever size the socket read was.
        self._slice = max(1024, self.limits.max_header_bytes // 4)
        self._head_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_bytes = 0
        self._refused = False
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            # Not added to `connections`; uvicorn's connection_lost is skipped for it too.
            self._refused = True
            self._refuse(transport, "connection_limit", TOO_MANY_CONNECTIONS)
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_stall_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        view = memoryview(data)
        for start in range(0, len(data), self._slice):
            piece = bytes(view[start:start + self._slice])
            super().data_received(piece)
            if self._upgraded or self.transport.is_closing():
                return  # a WebSocket now (uvicorn drops bytes after the upgrade head too), or closed
            if self._awaiting_head:
                # Counts the whole slice even when part of it ended the previous request: the limit may
                # bite up to one slice early, never late.
                self._head_bytes += len(piece)
                if self._head_bytes > self.limits.max_header_bytes:
                    self._refuse(self.transport, "header_too_large", HEAD_TOO_LARGE)
                    return

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True

    def on_response_complete(self) -> None:
        next_is_pipelined = bool(self.pipeline)
        super().on_response_complete()
        # The next request's head (or the rest of a body nobody reads) gets the same deadline as a first one.
        if not next_is_pipelined and not self.transport.is_closing():
            self._arm_head_timer()

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True
        self._cancel_head_timer()
        super().handle_websocket_upgrade()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.limits.send_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._cancel_stall_timer()
        super().resume_writing()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _write_stalled(self) -> None:
        self._stall_timer = None
        if self._upgraded:
            return  # the WebSocket protocol owns the transport now, and its own send timeout (ADR 0002)
        self._count("write_stalled")
        # Reset, not close: a close would wait for the buffer this client does not read.
        self.transport.abort()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._count("header_timeout")
            self.transport.close()

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, response: bytes) -> None:
        self._count(reason)
        self._cancel_head_timer()
        # uvloop's transports are not asyncio.WriteTransport subclasses, but they all write.
        cast(asyncio.Transport, transport).write(response)
        transport.close()

    def _count(self, reason: str) -> None:
        if self.limits.on_refusal is not None:
            self.limits.on_refusal(self.app, reason)
        log.debug("connection refused or closed at the front door: %s", reason)
