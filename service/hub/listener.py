"""The listener: one dedicated LISTEN connection per hub process, turning NOTIFY wake-ups into ordered frames.

A NOTIFY only says "read now": every frame is read from the event store after the last dispatched seq,
never taken from a payload (docs/adr/0005-notify-is-a-wake-up.md); seq order is commit order
(docs/adr/0001-commit-ordered-seq.md), so every client sees one order. Failure handling: class Listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable

import asyncpg

from ..backoff import backoff_delay
from ..settings import Settings
from ..store.database import connect
from ..store.events import EventStore, Position, StoredEvent
from .frames import Frame

log = logging.getLogger(__name__)

CHANNEL = "zepix_hub_events"
#: The first reconnect waits up to this; later ones double, up to HUB_RECONNECT_MAX_S.
RECONNECT_MIN_S = 0.1


class Listener:
    """Reads committed events after `last_seq` and dispatches them in seq order, woken by NOTIFY.

    NOTIFY is only a wake-up. Every frame a client gets is read from the event
    store (`seq > last_seq`, in seq order), never taken from a notification's
    payload: PostgreSQL lets any role that can connect NOTIFY any channel, so a
    payload proves nothing, and trusting one would let a stray or forged NOTIFY
    with the next seq push a real event aside for every live client. A
    notification, whatever it carries, only says "read now"; notifications that
    arrive during a read are folded into the next one, so under load one read
    drains many commits. The 1 s safety-net timer and every reconnect read too.
    Because seq order is commit order (docs/adr/0001-commit-ordered-seq.md),
    reading after the last dispatched seq never misses an event, and dispatching
    in seq order means every client sees one order, the same in every hub process.

    Ownership and failure: the app's lifespan starts `run()` as a task and cancels
    it on shutdown. The connection is not from the pool (a pooled connection runs
    UNLISTEN on release). A dead connection is noticed by asyncpg's termination
    callback or by a periodic `SELECT 1` with a timeout; the listener then reports
    DOWN, reconnects with capped exponential backoff and jitter, LISTENs first and
    catches up second, so nothing committed in between is lost.
    """

    def __init__(self, dsn: str, store: EventStore, settings: Settings, *,
                 dispatch: Callable[[Frame], None], on_state: Callable[[bool], None],
                 on_reset: Callable[[int, int, str], None]) -> None:
        self._dsn = dsn
        self._store = store
        self._settings = settings
        self._dispatch = dispatch
        self._on_state = on_state
        self._on_reset = on_reset
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._needs_read = False
        self._rng = random.Random()
        self._heard = False  # a notification arrived since the last safety-net tick
        self.last_seq = 0
        #: The epoch of the log last_seq belongs to (None until the start position is read). Updated with
        #: last_seq, never alone, so a welcome's head and epoch always name one log.
        self.epoch: str | None = None
        self._last_frame: str | None = None  # the frame of last_seq as dispatched (None: not known yet)
        self.up = False
        self.first_up = asyncio.Event()  # set once the first LISTEN and catch-up succeeded

    async def start_position(self) -> None:
        """Begin at the current head: older events reach clients through resume, not live."""
        pos = await self._store.position()
        self.last_seq, self.epoch = pos.head, pos.epoch

    # -- asyncpg callbacks: plain functions, so asyncpg calls them in order; they only record --------
    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._needs_read = True
        self._heard = True
        self._wake.set()

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()
        self._wake.set()

    # -- the consumer --------------------------------------------------------------------------------
    async def run(self) -> None:
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn, role="listener", timeout=5)
                self._lost.clear()
                conn.add_termination_listener(self._on_terminate)
                await conn.add_listener(CHANNEL, self._on_notify)
                await self._catch_up(conn)  # after LISTEN: whatever committed meanwhile is read or notified
                self._set_up(True)
                failures = 0
                await self._pump(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost or failed: %s: %s", type(exc).__name__, exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            self._set_up(False)
            await asyncio.sleep(backoff_delay(failures, RECONNECT_MIN_S, self._settings.reconnect_max_s, self._rng))
            failures += 1

    def _set_up(self, up: bool) -> None:
        if up:
            self.first_up.set()
        if up != self.up:
            self.up = up
            self._on_state(up)

    async def _pump(self, conn: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        poll = self._settings.listener_poll_s
        health_every = self._settings.listener_health_s
        next_poll = loop.time() + poll
        next_health = loop.time() + health_every
        while True:
            timeout = max(0.0, min(next_poll, next_health) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionError("listener connection terminated")
            now = loop.time()
            # The safety net reads when notifications stopped coming (a lost one is then the only way an
            # event could wait); while they come, each one already causes a read.
            if self._needs_read or (now >= next_poll and not self._heard):
                await self._catch_up(conn)
            if now >= next_poll:
                self._heard = False
                next_poll = loop.time() + poll
            if now >= next_health:
                # A silently dead TCP connection delivers nothing and raises nothing; ask it.
                await conn.fetchval("SELECT 1", timeout=min(5.0, health_every))
                next_health = loop.time() + health_every

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Dispatch every committed event after last_seq, in order, page by page.

        Each read starts at last_seq itself, so every read also checks that the event this hub dispatched
        last is still the log's event of that seq (see _rewound): one row more per read, no extra query.
        The same statement reads the log's epoch: rows of another epoch (a restore fence, a rebuilt
        database) are never dispatched, whatever their seqs.
        """
        self._needs_read = False  # a notification arriving during the read sets it again: read once more
        page = self._settings.replay_page
        while True:
            epoch, rows = await self._store.read_live(conn, self.last_seq, page + 1)
            if self.epoch is None:
                self.epoch = epoch
            elif epoch is not None and epoch != self.epoch:
                await self._reset(conn, f"the log's epoch changed from {self.epoch} to {epoch}")
                continue
            if self.last_seq and not self._still_ours(rows) and await self._rewound(conn, rows):
                continue  # the position moved to the head: read from there
            for ev in rows:
                if ev.seq > self.last_seq:
                    self._emit(Frame(ev.topic, ev.seq, ev.frame, appended=ev.appended))
            if len(rows) <= page:
                break

    def _still_ours(self, rows: list[StoredEvent]) -> bool:
        """Is the first row the event at last_seq that this hub dispatched?"""
        if not rows or rows[0].seq != self.last_seq:
            return False
        first = rows[0].frame
        if self._last_frame is None:
            self._last_frame = first  # the start position: known from here on
        # The same event renders to the same text, but a migration may render it anew (key order): then
        # compare what makes it that event, its topic and commit-time timestamp.
        if first == self._last_frame:
            return True
        if _identity(first) != _identity(self._last_frame):
            return False
        self._last_frame = first
        return True

    async def _rewound(self, conn: asyncpg.Connection, rows: list[StoredEvent]) -> bool:
        """The event at last_seq is gone or different. Pruned exactly through it is normal (the floor is
        then last_seq). Otherwise the log was replaced under us: a restore or a failover to a lagging
        replica, with or without the fence in docs/dba.md (which raises the floor past it). The seqs the
        clients hold name other events now, or will: start again from the head, as at start-up, and let
        the hub tell its clients to reload. Returns whether it reset."""
        pos = await self._store.position_on(conn)
        if not (rows and rows[0].seq == self.last_seq) and pos.floor == self.last_seq:
            return False
        self._restart_at(pos, f"event {self.last_seq}, the last this hub dispatched, is gone from the log or "
                              "different, or the retention floor passed it")
        return True

    async def _reset(self, conn: asyncpg.Connection, why: str) -> None:
        self._restart_at(await self._store.position_on(conn), why)

    def _restart_at(self, pos: Position, why: str) -> None:
        """Go on from the head of the log as it is now, with its epoch (head and epoch from one read)."""
        rewound_from, self.last_seq, self.epoch, self._last_frame = self.last_seq, pos.head, pos.epoch, None
        self._on_reset(rewound_from, pos.head, why)

    def _emit(self, frame: Frame) -> None:
        assert frame.seq is not None
        self.last_seq, self._last_frame = frame.seq, frame.text
        self._dispatch(frame)


def _identity(frame: str) -> tuple[object, object]:
    """(topic, ts) of a frame: an event's identity, whatever the rendering."""
    try:
        parsed = json.loads(frame)
    except ValueError:
        return (None, frame)
    return (parsed.get("topic"), parsed.get("ts")) if isinstance(parsed, dict) else (None, frame)
