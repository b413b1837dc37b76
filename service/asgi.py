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
from collections.abc import Callable, Mapping
from typing import Any

ABORT_KEY = "zepix.abort"

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


class TransportAbort:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(send, "__self__", None)
            scope[ABORT_KEY] = lambda: _abort(protocol)
        await self.app(scope, receive, send)


def _abort(protocol: object) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None]:
    abort: Callable[[], None] = scope.get(ABORT_KEY) or (lambda: None)
    return abort
