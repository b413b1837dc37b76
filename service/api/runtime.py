"""Hub: everything one hub process runs - pool, event store, listener, ConnectionManager, heartbeat, metrics.

Built by the app's lifespan (service/api/app.py), which owns its start and, through an AsyncExitStack, its
stop; it wires the data flow store -> listener -> ConnectionManager -> sockets and never awaits a socket
(docs/adr/0002-backpressure.md, docs/adr/0012-concern-packages.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

import asyncpg

from ..durations import parse_duration
from ..hub.connections import ConnectionManager
from ..hub.frames import Frame, live_event
from ..hub.heartbeat import Heartbeat
from ..hub.listener import Listener
from ..protocol import CLOSE_GOING_AWAY, CLOSE_LOG_RESET
from ..settings import Settings
from ..store.events import QUERIES, EventStore, prune
from ..topics import NOTIFICATION
from .auth import Verifier
from .limits import SubjectSlots
from .metrics import Metrics

log = logging.getLogger(__name__)


class Hub:
    """Everything one hub process runs, built and torn down by the lifespan."""

    def __init__(self, settings: Settings, verifier: Verifier, dsn: str, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.verifier = verifier
        self.pool = pool
        self.metrics = Metrics()
        self.store = EventStore(pool)
        self.manager = ConnectionManager(settings)
        self.subject_slots = SubjectSlots(settings.max_connections_per_subject)
        self.listener = Listener(dsn, self.store, settings, dispatch=self.dispatch, on_state=self._listener_state,
                                 on_reset=self._log_reset)
        self.heartbeat = Heartbeat(settings.heartbeat_s, broadcast=self.manager.broadcast, fields=self._measure)
        self.oldest_hint = 0
        self.head_hint = 0
        self._queue_peak = 0
        self._direct_warned = False
        self._tasks: list[asyncio.Task[None]] = []

    def note_direct_path(self, problem: str | None) -> None:
        """Record whether the direct write path (service/api/uvicorn_internals.py) works; say once why it does not."""
        self.metrics.direct_path.set(0 if problem else 1)
        if problem is not None and not self._direct_warned:
            self._direct_warned = True
            log.warning("the direct write path is not available, frames take the slower ASGI path: %s "
                        "(zepix_hub_direct_write_path is 0; see service/api/uvicorn_internals.py)", problem)

    def direct_fallback(self) -> None:
        """A WebSocket connection without the direct write path (another server, protocol or uvicorn); the
        session counts it in zepix_hub_connections_by_writer_total{writer="asgi"}."""
        self.note_direct_path("the server gave this WebSocket connection no direct write path")

    def dispatch(self, frame: Frame) -> None:
        """Hand one event to every subscribed client. Called by the listener, in seq order; never awaits."""
        fanout = self.manager.broadcast(frame)
        if frame.topic is not None:
            self.metrics.events.labels(topic=frame.topic).inc()
        self.metrics.frames.inc(fanout)
        if frame.appended is not None:
            self.metrics.latency.observe(max(0.0, time.time() - frame.appended))

    def _log_reset(self, dispatched: int, head: int, why: str) -> None:
        """The event log was restored to an earlier point or replaced under the listener: the clients hold
        seqs that the database no longer has, or has for other events. Close them 4410: they reload from a
        snapshot (which carries the log's epoch now)."""
        log.error("%s (a restore or failover, with or without the fence in docs/dba.md, a rebuilt database, or "
                  "pruning past what this hub had sent; last dispatched %d): closing %d client(s) 4410 so they "
                  "reload; live again from head %d, epoch %s", why, dispatched, len(self.manager), head,
                  self.listener.epoch)
        self.head_hint = head
        for client in self.manager.clients:
            client.request_close(CLOSE_LOG_RESET, "event log restored to an earlier point; reload", override=True)

    def _listener_state(self, up: bool) -> None:
        self.metrics.listener_up.set(1 if up else 0)
        if not up:
            self.metrics.reconnects.inc()
        was_degraded = self.heartbeat.degraded
        self.heartbeat.degraded = not up
        if not up and not was_degraded:
            self.manager.broadcast(live_event(NOTIFICATION, {
                "type": "error", "title": "Connection Lost",
                "body": "The hub lost its database connection; live events resume when it is back."}))
            self._spawn(self.heartbeat.beat(), "hub-heartbeat-now")
        elif up and was_degraded:
            self.manager.broadcast(live_event(NOTIFICATION, {
                "type": "info", "title": "Connection Restored",
                "body": "The hub is connected to the database again; no event was lost."}))
            self._spawn(self.heartbeat.beat(), "hub-heartbeat-now")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _measure(self) -> dict[str, object]:
        """The hub's own fields of each sys_status (connections, last_seq, listener; head and lag when the
        database answers), read from the manager, the listener and event_log_status; sets the matching gauges
        on the way."""
        fields: dict[str, object] = {
            "connections": len(self.manager),
            "last_seq": self.listener.last_seq,
            "listener": "up" if self.listener.up else "down",
        }
        peak = max((c.peak_depth for c in self.manager.clients), default=0)
        self.metrics.connections.set(len(self.manager))
        self._queue_peak = max(self._queue_peak, peak)
        self.metrics.queue_peak.set(self._queue_peak)
        if self.listener.up:
            async with asyncio.timeout(2):
                async with self.pool.acquire() as conn:
                    row = await conn.fetchrow(QUERIES["hub_status"])
            assert row is not None
            self.head_hint, self.oldest_hint = int(row["head"]), int(row["oldest"])
            lag = max(0, self.head_hint - self.listener.last_seq)
            fields.update(head=self.head_hint, lag=lag)
            self.metrics.listener_lag.set(lag)
            self.metrics.notify_queue.set(float(row["notify_queue_usage"]))
        return fields

    async def start(self, stack: AsyncExitStack) -> None:
        await self.listener.start_position()
        self.head_hint = self.listener.last_seq
        pos = await self.store.position()
        self.oldest_hint = pos.oldest
        await self.manager.start()
        stack.push_async_callback(self.manager.stop)
        await self.heartbeat.sample()
        for coro, name in self._background():
            self._spawn(coro, name)
        stack.push_async_callback(self.stop_tasks)
        # Startup completes when the hub is ready to deliver (so /readyz is green from the first request);
        # a database that stays away still lets it start, DEGRADED, and /readyz says why.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listener.first_up.wait(), 10)

    def _background(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        jobs: list[tuple[Coroutine[Any, Any, None], str]] = [
            (self.listener.run(), "hub-listener"),
            (self.heartbeat.run(), "hub-heartbeat"),
        ]
        if self.settings.retention:
            jobs.append((self._retention(), "hub-retention"))
        return jobs

    async def _retention(self) -> None:
        """Prune events older than HUB_RETENTION once an hour (and at start)."""
        assert self.settings.retention
        older_than = parse_duration(self.settings.retention)
        while True:
            try:
                async with self.pool.acquire() as conn:
                    deleted, floor = await prune(conn, older_than)
                if deleted:
                    log.info("retention: pruned %d events; floor is now %d", deleted, floor)
            except Exception as exc:
                log.warning("retention prune failed: %s", exc)
            await asyncio.sleep(3600)

    async def stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def going_away(self) -> None:
        """Close every client with 1001 so they reconnect (elsewhere) and resume with since."""
        await self.manager.close_all(CLOSE_GOING_AWAY, "hub shutting down; reconnect and resume")


def hub_behind(app: Any) -> Hub | None:
    """Find the Hub behind an ASGI app, through the middleware uvicorn may wrap around it."""
    seen = 0
    while app is not None and seen < 10:
        state = getattr(app, "state", None)
        hub = getattr(state, "hub", None) if state is not None else None
        if isinstance(hub, Hub):
            return hub
        app = getattr(app, "app", None)
        seen += 1
    return None
