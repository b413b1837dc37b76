"""The event store as the hub reads it: position, replay pages, snapshots, prune.

A replay page and the floor it is checked against, or a snapshot and its head, are read in one REPEATABLE
READ snapshot, so a prune or commit cannot slip between them. The SQL lives in sql/queries.sql
(docs/adr/0001-commit-ordered-seq.md).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from ..errors import DatabaseSetupError, ResumeGone
from ..filters import RowFilter
from ..topics import PERSISTED_TOPICS
from . import bundle


def load_queries(path: Path | None = None) -> dict[str, str]:
    """Split sql/queries.sql (of the checkout, or of the installed wheel) into {name: sql} on its `-- name: x`
    lines."""
    queries: dict[str, str] = {}
    text = (path or bundle.sql_dir() / "queries.sql").read_text()
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


#: sql/queries.sql by name: the SQL a serving hub runs, besides the listener's LISTEN and health probe.
QUERIES = load_queries()


@dataclass(frozen=True, slots=True)
class Position:
    """Where the log stands: newest seq, oldest retained seq, the retention floor, and which log it is.

    `epoch` names the log (table event_log_epoch, migration 0005): a seq means something only within it.
    """

    head: int
    oldest: int
    floor: int
    epoch: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    topic: str
    frame: str  # the client frame, rendered once by hub_event_frame_v1
    appended: float | None = None  # its "ts" in seconds since 1970: only the listener's read has it


@dataclass(frozen=True, slots=True)
class Page:
    events: list[StoredEvent]
    position: Position
    next_since: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    head: int
    oldest: int
    epoch: str
    open_trades: list[str]  # JSON texts
    closed_trades: list[str]
    logs: list[str]


#: Run before the per-topic reads, in their transaction (why: sql/queries.sql, ordered_walk).
ORDERED_WALK = QUERIES["ordered_walk"]

#: The listener's reads run on its own connection, outside the pool's command_timeout: the same bound.
READ_TIMEOUT_S = 30.0


NO_EPOCH = ("the event log has no epoch (table event_log_epoch is empty): run sql/ops/fence_after_restore.sql "
            "as the owner, which gives it one")


def _position(row: asyncpg.Record | None) -> Position:
    if row is None:  # the CROSS JOIN with event_log_epoch found no row
        raise DatabaseSetupError(NO_EPOCH)
    return Position(head=int(row["head"]), oldest=int(row["oldest"]), floor=int(row["pruned_through"]),
                    epoch=str(row["epoch"]))


def _topic_filter(topics: Iterable[str] | None) -> list[str] | None:
    """None means every persisted topic; a set covering all of them is the same and uses the cheaper query."""
    if topics is None:
        return None
    wanted = sorted(set(topics) & PERSISTED_TOPICS)
    return None if len(wanted) == len(PERSISTED_TOPICS) else wanted


#: Rows one filtered /api/events request scans at most (its reads are pages of max(limit, SCAN_PAGE)).
SCAN_BUDGET = 20_000
SCAN_PAGE = 1000

class EventStore:
    """Reads the event log through a pool it does not own (the app's lifespan owns it)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def position(self) -> Position:
        async with self._pool.acquire() as conn:
            return _position(await conn.fetchrow(QUERIES["log_position"]))

    async def read_page(self, since: int, topics: Iterable[str] | None, limit: int,
                        epoch: str | None = None) -> Page:
        """Events with seq > since on `topics` (None = all), at most `limit`, checked against the floor
        and, when given, the epoch: all of it from one snapshot, so the events are the named log's.

        Raises ResumeGone when `since` is below the retention floor or above the
        head (a log that was reset), or `epoch` is not the log's (a restore fence,
        a rebuilt database): the caller must reload state, never replay a part.
        """
        wanted = _topic_filter(topics)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            pos = _position(await conn.fetchrow(QUERIES["log_position"]))
            check_resumable(since, pos, epoch)
            if wanted is None:
                rows = await conn.fetch(QUERIES["events_after"], since, limit)
            elif wanted:
                await conn.execute(ORDERED_WALK)
                rows = await conn.fetch(QUERIES["events_after_on_topics"], since, wanted, limit)
            else:
                rows = []
        events = [StoredEvent(r["seq"], r["topic"], r["frame"]) for r in rows]
        # A short page means nothing else on these topics up to head: the reader may skip to head.
        next_since = events[-1].seq if len(events) == limit else max(since, pos.head)
        return Page(events=events, position=pos, next_since=next_since)

    async def read_filtered_page(self, since: int, topics: frozenset[str], limit: int,
                                 epoch: str | None, flt: RowFilter) -> Page:
        """Up to `limit` events after `since` that pass `flt`, in seq order, for /api/events.

        Reads pages of the log and filters them here, so `next_since` is where the scan stopped: after the
        last returned event when the page is full, else past every scanned row (the head, at the end). A
        filter that excludes a long stretch yields a page with few or no events and `next_since < head`; the
        reader pages on until next_since reaches head. Every page is checked against the first page's epoch.
        """
        events = []
        cursor, scanned, size = since, 0, max(limit, SCAN_PAGE)
        while True:
            page = await self.read_page(cursor, topics, size, epoch)
            epoch = page.position.epoch
            for ev in page.events:
                if flt.matches_frame(ev.topic, ev.frame):
                    events.append(ev)
                    if len(events) == limit:
                        return Page(events=events, position=page.position, next_since=ev.seq)
            scanned += len(page.events)
            if len(page.events) < size or page.next_since <= cursor or scanned >= SCAN_BUDGET:
                return Page(events=events, position=page.position, next_since=page.next_since)
            cursor = page.next_since

    @staticmethod
    async def position_on(conn: asyncpg.Connection) -> Position:
        """The log's position, on the caller's connection (the listener's)."""
        return _position(await conn.fetchrow(QUERIES["log_position"], timeout=READ_TIMEOUT_S))

    @staticmethod
    async def read_live(conn: asyncpg.Connection, since: int,
                        limit: int) -> tuple[str | None, list[StoredEvent]]:
        """The listener's read, on its own connection (one round trip, no pool hand-over on the live path):
        the log's epoch and all topics from `since` on, `since` itself included (it proves the log was not
        replaced under the listener), from one snapshot. The epoch is None when no event came back (there
        is then nothing to dispatch from this read). No floor check: the listener is at the head."""
        rows = await conn.fetch(QUERIES["events_live"], since - 1, limit, timeout=READ_TIMEOUT_S)
        if not rows:
            return None, []
        if rows[0]["epoch"] is None:
            raise DatabaseSetupError(NO_EPOCH)
        return str(rows[0]["epoch"]), [StoredEvent(r["seq"], r["topic"], r["frame"], r["appended"]) for r in rows]

    async def iter_after(self, since: int, topics: Iterable[str] | None, page: int,
                         until: int | None = None, epoch: str | None = None) -> AsyncIterator[StoredEvent]:
        """Every event after `since` (up to `until` if given), page by page, each page checked against the
        floor and the epoch (`epoch`, else the first page's), so a fence in the middle ends the replay."""
        cursor = since
        while True:
            result = await self.read_page(cursor, topics, page, epoch)
            epoch = result.position.epoch
            for ev in result.events:
                if until is not None and ev.seq > until:
                    return
                yield ev
            if len(result.events) < page or result.next_since <= cursor:
                return
            cursor = result.next_since

    async def count_after(self, since: int, topics: Iterable[str] | None, cap: int) -> int:
        """How many events after `since` on `topics`, counting no further than `cap`."""
        wanted = _topic_filter(topics)
        async with self._pool.acquire() as conn:
            if wanted is None:
                return int(await conn.fetchval(QUERIES["count_after"], since, cap))
            if not wanted:
                return 0
            async with conn.transaction(readonly=True):
                await conn.execute(ORDERED_WALK)
                return int(await conn.fetchval(QUERIES["count_after_on_topics"], since, wanted, cap))

    async def snapshot(self, log_lines: int, closed_trades: int = 20, *,
                       trades_where: Mapping[str, list[str]] | None = None,
                       logs_where: Mapping[str, list[str]] | None = None) -> Snapshot:
        """Open trades, recent closed trades and log lines with the head seq, all from one database snapshot.

        `trades_where` / `logs_where`: a row filter's allowed values per column (filters.py), or None."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            pos = _position(await conn.fetchrow(QUERIES["log_position"]))
            if trades_where is None:
                open_rows = await conn.fetch(QUERIES["open_trades"])
                closed_rows = await conn.fetch(QUERIES["recent_closed_trades"], closed_trades)
            else:
                cols = [trades_where.get(c) for c in ("symbol", "strategy", "side", "status")]
                open_rows = await conn.fetch(QUERIES["open_trades_where"], *cols)
                closed_rows = await conn.fetch(QUERIES["recent_closed_trades_where"], *cols, closed_trades)
            if logs_where is None:
                log_rows = await conn.fetch(QUERIES["recent_logs"], log_lines)
            else:
                log_rows = await conn.fetch(QUERIES["recent_logs_where"], logs_where.get("level"),
                                            logs_where.get("source"), log_lines)
        return Snapshot(
            head=pos.head, oldest=pos.oldest, epoch=pos.epoch,
            open_trades=[r[0] for r in open_rows],
            closed_trades=[r[0] for r in closed_rows],
            logs=[r[0] for r in reversed(log_rows)],
        )


def check_resumable(since: int, pos: Position, epoch: str | None = None) -> None:
    if epoch is not None and epoch != pos.epoch:
        raise ResumeGone(
            f"epoch {epoch} is not this event log's (it was restored or replaced; its epoch is now {pos.epoch}): "
            "your seqs may name other events here; reload state from /api/snapshot",
            oldest=pos.oldest, head=pos.head, epoch=pos.epoch, replaced=True,
        )
    if since < pos.floor:
        raise ResumeGone(
            f"events after {since} were pruned; oldest retained is {pos.oldest}: reload state from /api/snapshot",
            oldest=pos.oldest, head=pos.head, epoch=pos.epoch,
        )
    if since > pos.head:
        raise ResumeGone(
            f"since={since} is ahead of the log's head {pos.head} (was the database reset?): reload state",
            oldest=pos.oldest, head=pos.head, epoch=pos.epoch,
        )


async def prune(conn: asyncpg.Connection, older_than: timedelta, batch: int = 5000) -> tuple[int, int]:
    """Delete events older than `older_than` in batches of `batch`, each its own short transaction.

    Returns (deleted, floor). Holds no lock a writer waits on: only the deleted
    rows are locked, a batch at a time, and the floor moves with each batch.
    """
    cutoff = datetime.now(UTC) - older_than
    upto = await conn.fetchval(QUERIES["prune_cutoff"], cutoff)
    total = 0
    floor = int(await conn.fetchval(QUERIES["retention_floor"]))
    if upto is None:
        return 0, floor
    while True:
        row = await conn.fetchrow(QUERIES["prune_batch"], upto, batch)
        assert row is not None
        deleted = int(row["deleted"])
        if row["floor"] is not None:
            floor = int(row["floor"])
        total += deleted
        if deleted < batch:
            return total, floor

