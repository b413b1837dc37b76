"""uvicorn's httptools HTTP/1.1 protocol with the limits a server on a network needs (uvicorn-specific).

uvicorn (0.55, httptools) bounds none of these: httptools buffers a header
line of any length, a connection that sends nothing (or a byte now and then)
is never closed before its first request, and `limit_concurrency` answers 503
only once a complete request head has arrived (and not for WebSocket
upgrades), so idle sockets are never counted. Hence this protocol:

- at most `max_connections` open connections (HTTP and WebSocket alike, per
  process): one over it gets a fixed 503 and is closed at once, before
  anything is read from it;
- a request head (request line and headers, the WebSocket upgrade included)
  of at most `max_header_bytes`: over it, 431 and close, having buffered no
  more than the limit plus one slice;
- a complete request head within `header_timeout_s` of connecting or of the
  previous response: otherwise the connection is closed. This covers idle
  sockets, slowloris heads and bodies dribbled after the response;
- a response write that stays above the transport's high-water mark for
  `send_timeout_s` (a client that does not read what it asked for): the
  connection is reset. uvicorn would wait for the drain forever.

Once a WebSocket is open none of this applies: the ping timeout, the send
timeout and the per-subject cap do. docs/adr/0009-front-door-limits.md says why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .app import hub_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    send_timeout_s: float = 2.0


#: Descriptors beyond the connections: the database pool and listener, logs, the embedded server's pipes.
SPARE_FILES = 100


def fit_open_file_limit(max_connections: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards its hard limit so `max_connections` sockets fit.

    A soft limit of 1024 (systemd's default) would otherwise make accept() fail with EMFILE long before the
    connection limit, and the hub could not open a database connection either. Warns when the hard limit is
    too low; never lowers a limit.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return
    if target < wanted:
        log.warning("the open-file limit (hard %d) is below HUB_MAX_CONNECTIONS (%d) + %d: raise it "
                    "(LimitNOFILE=, ulimit -n) or lower HUB_MAX_CONNECTIONS", hard, max_connections, SPARE_FILES)


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
        hub = hub_of(self.app)
        if hub is not None:
            hub.metrics.refusal(reason)
        log.debug("connection refused or closed at the front door: %s", reason)
