"""Every use of uvicorn's internals, fenced in one module (pyproject.toml bounds uvicorn to the tested releases).

Two hub features need what ASGI does not offer:

- the direct write path: a finished WebSocket frame written straight to the
  transport of uvicorn's websockets-sansio protocol (attributes `conn`,
  `transport`, `writable`, `close_sent`), without an ASGI round trip;
- the abort: dropping a connection whose peer stopped reading (`transport`).

And the worker supervisor starts processes with uvicorn's private
`get_subprocess` and handles the signals uvicorn's Server does.

When a uvicorn release (or another server, or another WebSocket protocol)
no longer offers these attributes, the hub still works, through the ASGI
path, at a higher cost per frame, and says so: a warning at start-up
(`startup_problem`) and per process at the first connection concerned, and
the metrics `zepix_hub_direct_write_path` (0) and
`zepix_hub_connections_by_writer_total{writer="asgi"}`. Upgrading uvicorn: run the suite
against the new release (tests/test_uvicorn_fence.py checks this module),
then widen the bound in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from uvicorn._subprocess import get_subprocess as get_subprocess
from uvicorn.server import HANDLED_SIGNALS as HANDLED_SIGNALS
from websockets.protocol import State
from websockets.server import ServerProtocol

#: What the direct write path reads and writes on uvicorn's protocol object.
DIRECT_ATTRIBUTES = ("conn", "transport", "writable", "close_sent")


def _sansio_class() -> type | None:
    try:
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
