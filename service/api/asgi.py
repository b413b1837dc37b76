"""ASGI plumbing the hub needs and ASGI does not offer: aborting a WebSocket's TCP connection, writing to it
directly.

An outermost middleware leaves an `abort` callable and the direct write path in each WebSocket's scope
(docs/adr/0002-backpressure.md); what that takes from uvicorn lives in service/api/uvicorn_internals.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .uvicorn_internals import DirectSocket as DirectSocket
from .uvicorn_internals import abort, protocol_of

ABORT_KEY = "zepix.abort"
DIRECT_KEY = "zepix.direct"

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


class TransportAbort:
    """The outermost middleware: the abort and the direct write path, in the scope of every WebSocket.

    A peer that stopped reading cannot be sent a close frame (the buffers are
    full), so the hub must drop the connection. ASGI has no "abort", and Starlette
    wraps `send` in closures, so this outermost middleware captures the server's
    protocol object (the `__self__` of the raw `send`) and leaves an `abort`
    callable and the direct write path in the scope. What that takes from
    uvicorn lives in service/api/uvicorn_internals.py; under another server the
    abort is a no-op (the requested close stands until that server times it
    out) and frames take the ASGI path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            protocol = protocol_of(send)
            scope[ABORT_KEY] = lambda: abort(protocol)
            scope[DIRECT_KEY] = DirectSocket.of(protocol)
        await self.app(scope, receive, send)


def direct_of(scope: Mapping[str, Any]) -> DirectSocket | None:
    direct: DirectSocket | None = scope.get(DIRECT_KEY)
    return direct


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None]:
    found: Callable[[], None] = scope.get(ABORT_KEY) or (lambda: None)
    return found
