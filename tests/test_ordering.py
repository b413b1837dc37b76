"""The correctness core: a reader polling "after seq N" sees every committed event exactly once, in order.

Writers hold their transactions open for random times and sometimes roll
back; readers poll the replay API in a tight loop. A checker compares what
each reader saw with the final table. A deterministic pair shows the harness
can fail: one writer is held between drawing its seq and committing while
another commits; with the installed capture path the reader misses nothing,
with the same path minus its ordering lock it skips an event on every run.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest

from tests.hubs import RunningHub

Poll = Callable[[int], Awaitable[list[int]]]

WRITERS, TXNS, MAX_DELAY = 8, 25, 0.02


async def _write(dsn: str, insert: str, seed: int) -> int:
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    committed = 0
    try:
        for _ in range(TXNS):
            tx = conn.transaction()
            await tx.start()
            rows = rng.randint(1, 3)
            for _ in range(rows):
                await conn.execute(insert)
                await asyncio.sleep(rng.random() * MAX_DELAY)
            if rng.random() < 0.15:
                await tx.rollback()
            else:
                await tx.commit()
                committed += rows
    finally:
        await conn.close()
    return committed


async def _read(poll: Poll, done: asyncio.Event) -> list[int]:
    seen: list[int] = []
    since = 0
    while True:
        finished = done.is_set()  # read once more after the writers finished
        batch = await poll(since)
        seen.extend(batch)
        if batch:
            since = batch[-1]
        if finished and not batch:
            return seen


async def _run(dsn: str, insert: str, poll: Poll, readers: int = 3) -> list[list[int]]:
    done = asyncio.Event()
    reading = [asyncio.create_task(_read(poll, done)) for _ in range(readers)]
    await asyncio.gather(*(_write(dsn, insert, seed) for seed in range(WRITERS)))
    done.set()
    return await asyncio.gather(*reading)


def _check(seen: list[int], truth: list[int]) -> None:
    assert seen == sorted(set(seen)), "a reader saw a seq twice or out of order"
    missing = sorted(set(truth) - set(seen))
    assert not missing, f"a reader never saw {len(missing)} committed events, e.g. {missing[:5]}"
    assert seen == truth


@pytest.mark.parametrize("round_", range(3))
async def test_replay_readers_never_miss_or_repeat(hub: RunningHub, dsn: str, db: asyncpg.Connection,
                                                   round_: int) -> None:
    async with httpx.AsyncClient(base_url=hub.http, headers={"Authorization": f"Bearer {hub.token()}"}) as http:
        async def poll(since: int) -> list[int]:
            r = await http.get("/api/events", params={"since": since, "limit": 1000})
            assert r.status_code == 200, r.text
            return [e["seq"] for e in r.json()["events"]]

        views = await _run(dsn, "INSERT INTO logs (level, msg) VALUES ('INFO', 'ordering')", poll)
    truth = [r["seq"] for r in await db.fetch("SELECT seq FROM events ORDER BY seq")]
    logs = await db.fetchval("SELECT count(*) FROM logs")
    assert len(truth) == logs > 0  # rolled-back rows left no event, committed ones exactly one
    for seen in views:
        _check(seen, truth)


#: The statement of the capture path that serialises commits (docs/adr/0001-commit-ordered-seq.md). The
#: negative control deletes it from every function the logs trigger reaches; it must match at most once in
#: each, and somewhere. When the lock changes (another key, a lock on a private object), change this pattern,
#: nothing else.
ORDERING_LOCK = re.compile(
    r"LOCK\s+TABLE\s+zepix_hub\.commit_order\s+IN\s+SHARE\s+UPDATE\s+EXCLUSIVE\s+MODE\s*;", re.IGNORECASE)

#: Advisory key of the test's gate (not the hub's); a writer that sets zepix_test.gate waits on it at COMMIT.
GATE_KEY = 7_201_431


async def _reached_functions(db: asyncpg.Connection, table: str) -> dict[int, tuple[str, str]]:
    """Every user function the table's triggers call, directly or through the functions they call:
    {oid: (signature, CREATE OR REPLACE text)}. Calls are found by name in the bodies, so the walk follows
    whatever the installed capture path is (another schema, another _vN), not the names of today's files."""
    candidates = await db.fetch(
        "SELECT p.oid, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind = 'f'")
    todo = [r["tgfoid"] for r in await db.fetch(
        "SELECT tgfoid FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgenabled <> 'D'",
        table)]
    assert todo, f"no enabled trigger on {table}"
    reached: dict[int, tuple[str, str]] = {}
    while todo:
        oid = todo.pop()
        if oid in reached:
            continue
        row = await db.fetchrow("SELECT $1::oid::regprocedure::text AS sig, pg_get_functiondef($1) AS def", oid)
        assert row is not None
        reached[oid] = (row["sig"], row["def"])
        body = row["def"].split("AS $", 1)[-1]  # the body, not the header that names the function itself
        todo += [c["oid"] for c in candidates
                 if re.search(rf"\b{re.escape(c['proname'])}\s*\(", body, re.IGNORECASE)]
    return reached


async def _remove_ordering_lock(db: asyncpg.Connection) -> list[str]:
    """Install, in this test's database only, the capture path as it is minus its ordering lock; returns the
    signatures of the functions changed (the lock may be taken inline in the trigger function and in the
    append function it also calls, as capture v3 does)."""
    reached = (await _reached_functions(db, "logs")).values()
    counts = {sig: len(ORDERING_LOCK.findall(text)) for sig, text in reached}
    changed = [sig for sig, n in counts.items() if n]
    assert changed and all(n <= 1 for n in counts.values()), (
        f"ORDERING_LOCK should match once in each function of the logs trigger's path that takes the lock, "
        f"matched {counts}: update the pattern")
    for sig, text in reached:
        if sig in changed:
            await db.execute(ORDERING_LOCK.sub("-- ordering lock removed by the negative control", text))
    return changed


async def _install_gate(db: asyncpg.Connection) -> None:
    # Constraint triggers on one row fire in name order: zz_ after the capture trigger, so a gated writer has
    # drawn its seq (and taken the ordering lock, if any) when it stops here, still before COMMIT.
    await db.execute(f"""
        CREATE FUNCTION test_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('zepix_test.gate', true) = 'on' THEN
                PERFORM pg_advisory_xact_lock({GATE_KEY});
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER zz_test_commit_gate AFTER INSERT ON logs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_commit_gate();
    """)


async def _until(what: str, check: Callable[[], Awaitable[bool]], deadline: float = 10) -> None:
    try:
        async with asyncio.timeout(deadline):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {deadline} s: {what}") from None


async def _gated_commits(hub: RunningHub, dsn: str, db: asyncpg.Connection) -> tuple[list[int], list[int]]:
    """Writer A draws its seq and is held before COMMIT; writer B commits (or waits on the ordering lock);
    a reader reads; A is let go; the reader reads on from where it was. Returns (what the reader saw, the log).
    No sleeps decide anything: every step waits for the state it needs."""
    await _install_gate(db)
    gate, a, b = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        await gate.execute("SELECT pg_advisory_lock($1)", GATE_KEY)
        pid_a, pid_b = a.get_server_pid(), b.get_server_pid()

        async def commit(conn: asyncpg.Connection, msg: str, gated: bool) -> None:
            async with conn.transaction():
                if gated:
                    await conn.execute("SELECT set_config('zepix_test.gate', 'on', true)")
                await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", msg)

        async def waiting_on_a_lock(pid: int) -> bool:
            return bool(await db.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                                          pid))

        writing_a = asyncio.create_task(commit(a, "A", True))
        await _until("writer A waits at the test's gate, at COMMIT", lambda: waiting_on_a_lock(pid_a))
        writing_b = asyncio.create_task(commit(b, "B", False))

        async def b_committed_or_blocked() -> bool:
            return writing_b.done() or await waiting_on_a_lock(pid_b)

        await _until("writer B commits or waits on a lock", b_committed_or_blocked)

        async with httpx.AsyncClient(base_url=hub.http, headers={"Authorization": f"Bearer {hub.token()}"}) as http:
            async def read(since: int) -> list[int]:
                r = await http.get("/api/events", params={"since": since})
                assert r.status_code == 200, r.text
                return [e["seq"] for e in r.json()["events"]]

            seen = await read(0)
            await gate.execute("SELECT pg_advisory_unlock($1)", GATE_KEY)
            await asyncio.wait_for(asyncio.gather(writing_a, writing_b), 10)
            seen += await read(seen[-1] if seen else 0)
        rows = await db.fetch("SELECT e.seq, l.msg FROM events e JOIN logs l ON l.id::text = e.source_id "
                              "WHERE e.topic = 'log_stream' ORDER BY e.seq")
        assert [r["msg"] for r in rows] == ["A", "B"], "the gate did not hold A after it drew its seq"
        return seen, [r["seq"] for r in rows]
    finally:
        for conn in (gate, a, b):
            await conn.close()


async def test_commit_order_lock_holds_a_later_commit_back(hub: RunningHub, dsn: str, db: asyncpg.Connection) -> None:
    """With the capture path as installed: B waits for A, so the reader sees both, in order."""
    seen, truth = await _gated_commits(hub, dsn, db)
    assert seen == truth, (f"the reader saw {seen} of {truth}: a commit with a higher seq became visible while a "
                           "lower seq was still uncommitted (the commit-order lock does not hold)")


async def test_negative_control_capture_path_without_its_lock_skips(hub: RunningHub, dsn: str,
                                                                   db: asyncpg.Connection) -> None:
    """The same steps with the installed capture path minus its ordering lock: B commits seq 2 while A holds
    seq 1, the reader moves past 2 and never sees 1. On every run, which shows the harness above can fail."""
    await _remove_ordering_lock(db)
    seen, truth = await _gated_commits(hub, dsn, db)
    assert len(truth) == 2 and seen == truth[1:], (
        f"without its ordering lock the capture path should make the reader skip seq {truth[0]}; it saw {seen} "
        f"of {truth}, so this control no longer shows what the lock prevents")
