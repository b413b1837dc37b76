"""ConnectionManager: fan-out of frames to WebSocket clients that one slow client cannot stall.

`broadcast` never awaits; each client has a bounded queue and one sender task. A client that falls
behind is closed 4008 (or reset when its socket stalls) and resumes with `since`, losing nothing
(docs/adr/0002-backpressure.md). Row filters cost once per distinct filter per event: clients are
grouped by their filter's canonical key (docs/adr/0014-row-filters-and-scopes.md). The whole policy: class
ConnectionManager.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.websockets import WebSocketDisconnect

from ..filters import RowFilter, TopicFilter, event_fields
from ..protocol import CLOSE_INTERNAL_ERROR, CLOSE_TOO_SLOW
from ..settings import Settings
from ..topics import ALL_TOPICS
from .frames import Frame, ws_text_frame

log = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]
Prelude = Callable[["Client"], Awaitable[None]]

_ids = itertools.count(1)


def next_delivered(delivered: int, frame: Frame) -> int | None:
    """The client's `delivered` mark once `frame` is sent, or None: skip it, it was sent already.

    The resume replay runs first and sends persisted frames up to some seq; live frames queued meanwhile
    that it covered arrive again here. Live-only frames (seq None) are always sent and move no mark.
    """
    if frame.seq is None:
        return delivered
    return frame.seq if frame.seq > delivered else None


class DirectWriter(Protocol):
    """A socket's direct write path, as the server offers it (service/api/uvicorn_internals.py's DirectSocket).

    Declared here so the fan-out does not import the web layer that supplies it.
    """

    def usable(self) -> bool: ...
    def closing(self) -> bool: ...
    def ready(self) -> bool: ...
    def write(self, data: bytes) -> None: ...
    async def drained(self) -> None: ...


class Client:
    """One connected socket: its topics, its bounded queue and its sender task.

    Created by the session, registered with the manager, which starts and owns its sender task.
    """

    __slots__ = (
        "_abort", "_close", "_send", "_sender", "_settings", "close_code", "close_request", "delivered", "direct",
        "id", "idle", "interrupted", "peak_depth", "prelude", "queue", "queued_bytes", "row_filter", "sending_since",
        "topics", "wake",
    )

    def __init__(self, settings: Settings, *, send: SendText, close: CloseSocket,
                 abort: Callable[[], None], topics: frozenset[str], delivered: int,
                 direct: DirectWriter | None = None, row_filter: RowFilter | None = None) -> None:
        self.id = f"c{next(_ids)}"
        self.topics: frozenset[str] = topics
        self.row_filter = row_filter  # the effective filter (request and token scope); set via the manager
        self.queue: deque[Frame] = deque()
        self.queued_bytes = 0
        self.peak_depth = 0
        self.wake = asyncio.Event()
        self.delivered = delivered  # highest persisted seq handed to the socket (or skipped as known)
        self.close_request: tuple[int, str] | None = None
        self.close_code: int | None = None
        self.sending_since: float | None = None
        self.interrupted = False
        self.prelude: Prelude | None = None  # set by the session: the resume replay, run first by the sender
        self._settings = settings
        self._send = send
        self._close = close
        self._abort = abort
        self._sender: asyncio.Task[None] | None = None
        self.direct = direct
        self.idle = False  # the sender is parked with an empty queue: broadcast may write for it

    # -- called from the broadcast path: must never await ------------------------------------------
    def offer(self, frame: Frame) -> None:
        if self.close_request is not None:
            return
        direct = self.direct
        if self.idle and direct is not None and direct.ready():
            # Nothing queued ahead and the socket takes data: write the shared frame bytes now, no task
            # switch, no ASGI layers (a transport write never blocks; backpressure shows as not ready()).
            mark = next_delivered(self.delivered, frame)
            if mark is None:
                return
            self.delivered = mark
            direct.write(frame.wire)
            return
        self.idle = False  # until the sender has drained the queue, later frames queue up behind this one
        self.queue.append(frame)
        self.queued_bytes += len(frame.wire)
        depth = len(self.queue)
        if depth > self.peak_depth:
            self.peak_depth = depth
        if depth > self._settings.queue_max_frames or self.queued_bytes > self._settings.queue_max_bytes:
            self.request_close(CLOSE_TOO_SLOW, self.too_slow_reason())
        self.wake.set()

    def request_close(self, code: int, reason: str, *, override: bool = False) -> None:
        """Ask the sender task to close the socket after what it is writing now. The first request wins,
        unless `override` (a 4410 must replace a pending "resume with since": resuming would be wrong)."""
        if self.close_request is None or override:
            self.close_request = (code, reason[:120])  # a close reason must fit in 123 bytes
        self.idle = False
        self.wake.set()

    def too_slow_reason(self) -> str:
        return f"too slow; resume with since={self.delivered}"

    # -- the sender task --------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            if self.prelude is not None:
                await self.prelude(self)
            await self._drain_forever()
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            # The watchdog cut a stalled write short: close 4008 (or abort) ourselves.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            # The peer stopped reading: no close frame can get through its full buffers, so waiting
            # send_timeout_s more for one only delays the inevitable. Drop the connection now.
            self.close_code = self.close_request[0] if self.close_request else CLOSE_TOO_SLOW
            self._abort()
        except (WebSocketDisconnect, OSError) as exc:
            # The peer went away mid-write: the session's receive loop sees its close and ends the session.
            log.debug("client %s gone while sending: %s", self.id, type(exc).__name__)
        except Exception as exc:
            # Anything else is a bug (logged as one) and must not leave a connected client without a sender:
            # close it so it reconnects and resumes.
            log.error("client %s sender failed, closing 1011: %s", self.id, type(exc).__name__, exc_info=True)
            with contextlib.suppress(Exception):
                await self._do_close(CLOSE_INTERNAL_ERROR, f"internal error; resume with since={self.delivered}")
        finally:
            self.sending_since = None

    async def _drain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self.queue
        while True:
            if not queue and self.close_request is None:
                self.wake.clear()
                self.idle = True
                await self.wake.wait()
                self.idle = False
            if self.close_request is not None:
                await self._do_close(*self.close_request)
                return
            direct = self.direct
            if direct is not None and direct.closing():
                return  # the client closed (or the hub is closing it): the session's receive loop ends it
            if direct is not None and direct.usable():
                if not direct.ready():  # the peer is behind: wait (the watchdog sees the stall)
                    self.sending_since = loop.time()
                    await direct.drained()
                    self.sending_since = None
                    continue
                # Everything queued in one write: one syscall, not a round trip through the loop per frame.
                parts: list[bytes] = []
                last = self.delivered
                while queue:
                    frame = queue.popleft()
                    self.queued_bytes -= len(frame.wire)
                    mark = next_delivered(last, frame)
                    if mark is None:
                        continue
                    last = mark
                    parts.append(frame.wire)
                if parts:
                    direct.write(b"".join(parts))
                self.delivered = last
                continue
            while queue and self.close_request is None:
                frame = queue.popleft()
                self.queued_bytes -= len(frame.wire)
                mark = next_delivered(self.delivered, frame)
                if mark is None:
                    continue
                self.sending_since = loop.time()
                await self._send(frame.text)
                self.sending_since = None
                self.delivered = mark

    async def send_many(self, texts: list[str]) -> None:
        """Write several frames at once (a page of the resume replay), waiting first if the peer is behind."""
        direct = self.direct
        if direct is None or not direct.usable():
            for text in texts:
                await self.send_now(text)
            return
        self.sending_since = asyncio.get_running_loop().time()
        await direct.drained()
        self.sending_since = None
        if direct.closing():
            return  # the client left while we waited
        direct.write(b"".join(ws_text_frame(t.encode()) for t in texts))

    async def send_now(self, text: str) -> None:
        """Write directly (used by the resume prelude, which runs inside the sender task)."""
        self.sending_since = asyncio.get_running_loop().time()
        await self._send(text)
        self.sending_since = None

    async def _do_close(self, code: int, reason: str) -> None:
        if code == CLOSE_TOO_SLOW:
            # Named now, not when requested: a replay page written meanwhile moved `delivered` on.
            reason = self.too_slow_reason()
        self.close_code = code
        # A socket the watchdog found stalled will not take a close frame either: do not wait long for it.
        wait = 0.2 if self.interrupted else self._settings.send_timeout_s
        try:
            async with asyncio.timeout(wait):
                await self._close(code, reason)
        except Exception:
            # The peer does not read: its buffers are full and no close frame can reach it.
            self._abort()

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.sending_since is None else now - self.sending_since

    def interrupt_stalled_write(self) -> None:
        """Called by the watchdog: stop waiting on a socket that does not drain, and close it 4008."""
        if self._sender is None or self._sender.done() or self.interrupted:
            return
        self.interrupted = True
        if self.close_request is None:
            self.close_request = (CLOSE_TOO_SLOW, self.too_slow_reason())
        self._sender.cancel()


class ConnectionManager:
    """All clients of this hub process, indexed by topic for a cheap broadcast.

    Owned by the app's lifespan (one per app, not a module global).

    Policy (docs/adr/0002-backpressure.md):
    - `broadcast` never awaits. A frame is serialised once and its WebSocket
      bytes built once. For a client whose sender is idle and whose transport is
      below its high-water mark, broadcast writes those bytes straight to the
      transport (a write never blocks); otherwise it appends the frame to the
      client's bounded queue and wakes the client's sender task.
    - Each client has exactly one sender task; it and that direct write (only
      while the sender is parked with an empty queue) are the only writers to the
      socket, so frames keep their order.
    - A client whose queue passes `queue_max_frames` or `queue_max_bytes` is
      closed with 4008 and a reason naming the last seq handed to its socket; one
      whose socket write stalls longer than `send_timeout_s` is reset (no close
      frame can get through its full buffers). Either way it loses nothing: it
      resumes with `since` from the event store.
    - Row filters (filters.py) cost once per distinct filter per event, not per
      client: clients of a topic are grouped by the canonical key of their
      effective filter on it; broadcast reads the event's fields once, evaluates
      each group's filter once and offers the same Frame to every member.
      Clients without a filter on the topic pay nothing new.
    - The manager is owned by the app's lifespan. `close_all` (shutdown) closes
      every client with 1001 and awaits every sender task.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[str, Client] = {}
        self._by_topic: dict[str, set[Client]] = {t: set() for t in ALL_TOPICS}  # no filter on that topic
        # topic -> canonical key of the filter on it -> (the filter, its clients)
        self._groups: dict[str, dict[str, tuple[TopicFilter, set[Client]]]] = {t: {} for t in ALL_TOPICS}
        #: Filter evaluations so far: one per distinct filter per event (tests and the bench read it).
        self.filter_evaluations = 0
        self._watchdog: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def clients(self) -> list[Client]:
        return list(self._clients.values())

    async def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch_stalls(), name="hub-send-watchdog")

    def register(self, client: Client) -> None:
        """Start delivering to `client` from the next broadcast on; starts its sender task."""
        self._clients[client.id] = client
        self._index(client)
        client._sender = asyncio.create_task(client._run(), name=f"hub-sender-{client.id}")

    def set_topics(self, client: Client, topics: frozenset[str], row_filter: RowFilter | None = None) -> None:
        """Change what `client` gets from the next broadcast on: its topics and its effective filter."""
        self._unindex(client)
        client.topics = topics
        client.row_filter = row_filter
        self._index(client)

    def _index(self, client: Client) -> None:
        flt = client.row_filter
        for topic in client.topics:
            on = flt.on(topic) if flt is not None else None
            if on is None:
                self._by_topic[topic].add(client)
            else:
                self._groups[topic].setdefault(on.key, (on, set()))[1].add(client)

    def _unindex(self, client: Client) -> None:
        flt = client.row_filter
        for topic in client.topics:
            on = flt.on(topic) if flt is not None else None
            if on is None:
                self._by_topic[topic].discard(client)
                continue
            groups = self._groups[topic]
            group = groups.get(on.key)
            if group is not None:
                group[1].discard(client)
                if not group[1]:
                    del groups[on.key]

    async def unregister(self, client: Client) -> None:
        """Forget `client` and stop its sender task; safe to call twice and on any path."""
        if self._clients.pop(client.id, None) is None:
            return
        self._unindex(client)
        client.queue.clear()
        client.queued_bytes = 0
        task = client._sender
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def broadcast(self, frame: Frame) -> int:
        """Queue `frame` for every client subscribed to its topic. Never awaits; returns the fan-out."""
        assert frame.topic is not None
        targets = self._by_topic.get(frame.topic, ())  # a topic this hub does not know (a newer schema's)
        for client in targets:
            client.offer(frame)
        fanout = len(targets)
        groups = self._groups.get(frame.topic)
        if groups:
            fields = event_fields(frame.topic, frame.text)  # one parse per event, not per filter
            for flt, members in groups.values():
                self.filter_evaluations += 1
                if flt.matches(fields):
                    for client in members:
                        client.offer(frame)
                    fanout += len(members)
        return fanout

    async def close_all(self, code: int, reason: str, timeout: float = 5.0) -> None:
        """Close every client with `code` and wait (up to `timeout`) for their sender tasks to finish."""
        clients = list(self._clients.values())
        for client in clients:
            client.request_close(code, reason)
        tasks = [c._sender for c in clients if c._sender is not None and not c._sender.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for client in clients:
            await self.unregister(client)

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for client in list(self._clients.values()):
            await self.unregister(client)

    async def _watch_stalls(self) -> None:
        """Twice a second: close (4008) every client whose current socket write has stalled too long.

        A timer per write would cost a handle per frame on the hot path; a sweep costs O(clients)/s.
        """
        loop = asyncio.get_running_loop()
        limit = self._settings.send_timeout_s
        while True:
            await asyncio.sleep(min(0.5, limit / 4))
            now = loop.time()
            for client in list(self._clients.values()):
                if client.stalled_for(now) > limit:
                    log.info("client %s: socket write stalled %.1fs; closing 4008", client.id,
                             client.stalled_for(now))
                    client.interrupt_stalled_write()
