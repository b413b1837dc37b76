"""The dashboard's connect/resume state machine (service/static/connection.js) in Chromium against real hubs.

Each test opens the dashboard without a token (so the page's own connection stops at "no token" and stays
out of the way), imports connection.js through the page's import map, and drives a Connection of its own
whose hooks record every transition, snapshot and event. The assertions are on those records, the sockets
Chromium opened, and the database: the moves the machine makes (its transition table), and that what it
hands on is every event exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from service.api.assets import STATIC_DIR
from service.api.auth import mint
from tests.hubs import SECRET, HubProcess, RunningHub, hub_settings, listener_cut_off, running_hub
from tests.pg import PgServer

# Without Playwright or Chromium this import skips the module as it skips test_browser (under CI=true: fails),
# and its autouse fixture, imported, is this module's too: under CI=true a missing browser fails every test.
from tests.test_browser import (
    HANG_MS,
    REBUILD_LOG,
    Dashboard,
    _browser_installed,  # noqa: F401
    _restart,
    launched_chromium,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.browser


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with launched_chromium() as launched:
        yield launched

# A Connection of the test's own, with hooks that record; `window.machine` holds it and its records.
INSTALL = """async ({ token }) => {
  const { Connection, backoffDelay, isNew } = await import(new URL('static/connection.js', document.baseURI).href);
  const rec = { transitions: [], snapshots: [], seqs: [], nullFrames: 0, welcomes: 0, invalid: [] };
  const c = new Connection({ base: document.baseURI, token, hooks: {
    onTransition: (t) => rec.transitions.push({
      from: t.from, to: t.to, on: t.on, why: t.why ?? null, code: t.code ?? null, delay: t.delay ?? null,
      attempt: t.attempt, resumed: Boolean(t.resumed), reloaded: Boolean(t.reloaded), count: t.count ?? null,
      http: Boolean(t.http) }),
    onSnapshot: (snap, info) => rec.snapshots.push({ head: snap.head, epoch: snap.epoch, first: info.first,
                                                     replaced: info.replaced }),
    onEvent: (f) => { if (f.seq === null || f.seq === undefined) rec.nullFrames += 1; else rec.seqs.push(f.seq); },
    onWelcome: () => { rec.welcomes += 1; },
    onInvalid: (from, to, on) => rec.invalid.push({ from, to, on }),
  } });
  window.machine = { c, rec, backoffDelay, isNew };
}"""


class Machine(Dashboard):
    """The page, with the test's Connection in `window.machine`; errors() leaves out Chromium's own network noise
    (hubs go down on purpose here)."""

    async def records(self) -> dict[str, Any]:
        value = await self.page.evaluate(
            "JSON.parse(JSON.stringify({...window.machine.rec, state: window.machine.c.state,"
            " position: window.machine.c.position, stats: window.machine.c.stats,"
            " timer: window.machine.c.timer !== null}))")
        assert isinstance(value, dict)
        return value

    async def wait(self, expression: str) -> None:
        """Wait for a JS expression over `m` (the machine: m.c, m.rec) to hold."""
        await self.page.wait_for_function(f"(() => {{ const m = window.machine; return {expression}; }})()",
                                          timeout=HANG_MS)

    async def run(self, statement: str) -> None:
        await self.page.evaluate(f"(() => {{ const m = window.machine; {statement}; }})()")

    async def moves(self) -> list[tuple[str, str, str]]:
        return [(t["from"], t["to"], t["on"]) for t in (await self.records())["transitions"]]

    def errors(self, *, allow_network: bool = True) -> list[str]:
        return super().errors(allow_network=allow_network)


async def machine_page(chromium: Browser, base: str, token: str, *, start: bool = True) -> Machine:
    ctx = await chromium.new_context()
    page = await ctx.new_page()
    m = Machine(page)
    page.on("console", lambda msg: m.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: m.console_errors.append(f"uncaught: {exc}"))
    page.on("websocket", lambda ws: m.ws_urls.append(ws.url))
    await page.goto(f"{base}/")
    await page.wait_for_selector('#conn[data-status="no-token"]', timeout=HANG_MS)
    assert m.ws_urls == []  # the page's own connection stays out of the way
    await page.evaluate(INSTALL, {"token": token})
    if start:
        await m.run("m.c.start()")
        await m.wait("m.c.state === 'live'")
    return m


async def db_head(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT head FROM event_log_status"))


async def seqs_after(db: asyncpg.Connection, since: int) -> list[int]:
    return [r["seq"] for r in await db.fetch("SELECT seq FROM events WHERE seq > $1 ORDER BY seq", since)]


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


FIRST_LOAD = [("idle", "loading", "start"), ("loading", "connecting", "connect"), ("connecting", "live", "replayed")]
RESUME = [("live", "backoff", "retry"), ("backoff", "connecting", "connect"), ("connecting", "live", "replayed")]


async def test_pure_rules_backoff_and_dedup(chromium: Browser, hub: RunningHub) -> None:
    """The delay doubles from 0.5 s up to 8 s, jittered within [cap/2, cap]; an event applies only above the
    last applied seq, a seq-null frame always."""
    m = await machine_page(chromium, hub.http, hub.token(), start=False)
    delays = await m.page.evaluate(
        "[1, 2, 3, 4, 5, 6, 50].map((a) => [window.machine.backoffDelay(a, () => 0),"
        " window.machine.backoffDelay(a, () => 1)])")
    assert delays == [[250, 500], [500, 1000], [1000, 2000], [2000, 4000], [4000, 8000], [4000, 8000],
                      [4000, 8000]]
    fresh = await m.page.evaluate(
        "[[null, {seq: 1}], [5, {seq: 5}], [5, {seq: 4}], [5, {seq: 6}], [5, {seq: null}], [5, {}]]"
        ".map(([last, f]) => window.machine.isNew(last, f))")
    assert fresh == [True, False, False, True, True, True]
    assert (await m.records())["state"] == "idle" and m.ws_urls == []


async def test_first_load_then_resume_hands_on_every_event_once_in_order(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'PRE' || g, 'BUY', 1 "
                     "FROM generate_series(1, 3) g")
    start = await db_head(db)
    epoch = await db.fetchval("SELECT epoch::text FROM event_log_epoch")
    token = hub.token(sub="machine")
    m = await machine_page(chromium, hub.http, token)
    rec = await m.records()
    assert await m.moves() == FIRST_LOAD
    assert rec["snapshots"] == [{"head": start, "epoch": epoch, "first": True, "replaced": False}]
    assert len(m.ws_urls) == 1 and query(m.ws_urls[0]) == {"since": [str(start)], "epoch": [epoch]}
    assert token not in m.ws_urls[0]

    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'LIVE' || g, 'SELL', 2 "
                     "FROM generate_series(1, 5) g")
    head = await db_head(db)
    await m.wait(f"m.c.position.seq === {head}")
    before = (await m.records())["seqs"]
    assert before == await seqs_after(db, start)

    # Dropped (4008, too slow): back off, resume from the last applied seq with the epoch, and get what was
    # committed meanwhile exactly once.
    await hub.hub.manager.close_all(4008, "too slow; resume with since=0")
    for i in range(3):
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ($1, 'BUY', 1)", f"AWAY{i}")
    await m.wait("m.c.stats.resumes === 1 && m.c.state === 'live'")
    end = await db_head(db)
    await m.wait(f"m.c.position.seq === {end}")
    rec = await m.records()
    assert await m.moves() == FIRST_LOAD + RESUME
    backoff = rec["transitions"][3]
    assert backoff["code"] == 4008 and 250 <= backoff["delay"] <= 500 and backoff["attempt"] == 1
    assert rec["transitions"][5]["resumed"] and rec["transitions"][5]["count"] >= 1
    assert len(m.ws_urls) == 2 and query(m.ws_urls[1]) == {"since": [str(head)], "epoch": [epoch]}
    assert rec["seqs"] == await seqs_after(db, start)  # once each, in order, nothing missing
    assert rec["stats"]["lastCloseCode"] == 4008 and rec["stats"]["reloads"] == 0
    assert rec["stats"]["ignored"] == 0 and len(rec["snapshots"]) == 1
    assert rec["invalid"] == [] and m.errors() == []


async def test_expired_token_stops_for_good_until_started_with_a_new_one(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    m = await machine_page(chromium, hub.http, hub.token(ttl=6))
    await m.wait("m.c.state === 'stopped'")
    rec = await m.records()
    assert await m.moves() == [*FIRST_LOAD, ("live", "stopped", "unauthorized")]
    assert rec["transitions"][-1]["code"] == 4001 and rec["transitions"][-1]["why"] == "unauthorized"
    sockets = len(m.ws_urls)
    await asyncio.sleep(1.0)  # twice the longest first backoff step: a retry would have happened by now
    rec = await m.records()
    assert len(m.ws_urls) == sockets and rec["state"] == "stopped" and not rec["timer"]
    assert len(hub.hub.manager) == 0

    # A token that is already expired is refused by the snapshot, before any socket.
    await m.run(f"m.c.start({hub.token(ttl=-60)!r}, {{ fresh: true }})")
    await m.wait("m.c.state === 'stopped' && m.rec.transitions.length === 6")
    assert (await m.moves())[-2:] == [("stopped", "loading", "start"), ("loading", "stopped", "unauthorized")]
    assert (await m.records())["transitions"][-1]["http"] and len(m.ws_urls) == sockets

    await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('AFTER', 'BUY', 1)")
    await m.run(f"m.c.start({hub.token(ttl=600)!r}, {{ fresh: true }})")
    await m.wait("m.c.state === 'live'")
    head = await db_head(db)
    rec = await m.records()
    assert (await m.moves())[-3:] == [("stopped", "loading", "start"), ("loading", "connecting", "connect"),
                                      ("connecting", "live", "replayed")]
    assert rec["position"]["seq"] == head and rec["stats"]["reloads"] == 0  # a fresh start is not a reload
    # Chromium reports the refused snapshot itself; anything else would be the page's code failing
    assert rec["invalid"] == [] and [e for e in m.errors() if "status of 401" not in e] == []


@pytest.fixture
async def capped_hub(dsn: str) -> AsyncIterator[RunningHub]:
    """A hub that replays nothing (HUB_RESUME_CAP=0): any resume with a missed event is recovered=false."""
    async with running_hub(dsn, resume_cap=0) as running:
        yield running


async def test_unrecoverable_gap_reloads_a_snapshot_and_keeps_the_live_frames_above_it(
        chromium: Browser, capped_hub: RunningHub, db: asyncpg.Connection) -> None:
    m = await machine_page(chromium, capped_hub.http, capped_hub.token())
    start = await db_head(db)
    await capped_hub.hub.manager.close_all(4008, "too slow")
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'GAP' || g, 'BUY', 1 "
                     "FROM generate_series(1, 2) g")
    await m.wait("m.c.stats.reloads === 1 && m.c.state === 'live'")
    rec = await m.records()
    assert await m.moves() == [*FIRST_LOAD, ("live", "backoff", "retry"), ("backoff", "connecting", "connect"),
                               ("connecting", "reloading", "gap"), ("reloading", "live", "reloaded")]
    assert rec["transitions"][-1]["reloaded"]
    gap_head = await db_head(db)
    assert [s["head"] for s in rec["snapshots"]] == [start, gap_head]
    assert rec["snapshots"][1]["replaced"] is False  # the same log, further on: the caller updates in place
    assert rec["seqs"] == []  # the gap came in the snapshot, not as events

    await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('AFTER', 'SELL', 1)")
    head = await db_head(db)
    await m.wait(f"m.c.position.seq === {head}")
    rec = await m.records()
    assert rec["seqs"] == await seqs_after(db, gap_head)
    assert rec["invalid"] == [] and m.errors() == []


async def test_log_replaced_under_the_hub_4410_starts_over_from_a_snapshot(
        chromium: Browser, hub: RunningHub, pg: PgServer, db: asyncpg.Connection) -> None:
    """Close 4410 (the hub's listener came back to another event log, here a rebuilt one): the held seq may
    name another event now, so the machine reloads (start) instead of resuming (connect), and tells the
    caller that what it shows belongs to another log (replaced)."""
    m = await machine_page(chromium, hub.http, hub.token())
    old = await db.fetchval("SELECT epoch::text FROM event_log_epoch")
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'OLD' || g, 'BUY', 1 "
                     "FROM generate_series(1, 6) g")
    await m.wait("m.c.position.seq === 6")
    async with listener_cut_off(pg.admin_dsn, db):
        await db.execute(REBUILD_LOG)
        await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'NEW' || g, 'SELL', 2 "
                         "FROM generate_series(1, 4) g")
        new = await db.fetchval("SELECT epoch::text FROM event_log_epoch")
    await m.wait(f"m.c.stats.closeCodes.includes(4410) && m.c.state === 'live' && m.c.position.epoch === '{new}'")
    rec = await m.records()
    assert await m.moves() == [*FIRST_LOAD, ("live", "backoff", "retry"), ("backoff", "loading", "start"),
                               ("loading", "connecting", "connect"), ("connecting", "live", "replayed")]
    assert rec["transitions"][3]["code"] == 4410
    assert rec["snapshots"] == [{"head": 0, "epoch": old, "first": True, "replaced": False},
                                {"head": 4, "epoch": new, "first": False, "replaced": True}]
    assert rec["position"] == {"seq": 4, "epoch": new} and rec["stats"]["reloads"] == 1
    assert query(m.ws_urls[-1]) == {"since": ["4"], "epoch": [new]}
    assert rec["seqs"] == [1, 2, 3, 4, 5, 6]  # the old log's, live; the new one's came in the snapshot
    assert rec["invalid"] == [] and m.errors() == []


async def test_backoff_grows_while_the_hub_is_down_and_hurry_starts_it_over(
        chromium: Browser, dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    proc = HubProcess(dsn, tmp_path / "hub.log")
    await _restart(proc)
    try:
        token = mint(hub_settings(dsn), SECRET, subject="machine", ttl_s=600)
        m = await machine_page(chromium, proc.http, token)
        await asyncio.to_thread(proc.kill)
        await m.wait("m.rec.transitions.filter((t) => t.to === 'backoff').length >= 4")
        rec = await m.records()
        backoffs = [t for t in rec["transitions"] if t["to"] == "backoff"]
        for t in backoffs[:4]:
            cap = min(8000, 500 * 2 ** (t["attempt"] - 1))
            assert cap / 2 <= t["delay"] <= cap, t
        assert [t["attempt"] for t in backoffs[:4]] == [1, 2, 3, 4]
        # every retry against the dead hub is a resume attempt (connect), never a snapshot
        assert {(t["from"], t["to"]) for t in rec["transitions"][3:]} <= {
            ("live", "backoff"), ("backoff", "connecting"), ("connecting", "backoff")}

        # Back online or back in view: hurry() retries at once, and the backoff starts over from its first step.
        hurried = await m.page.evaluate(
            "(() => { const c = window.machine.c; const before = [c.state, c.attempt]; c.hurry();"
            " return [...before, c.state]; })()")
        assert hurried == ["backoff", 4, "connecting"]
        await m.wait("m.rec.transitions.filter((t) => t.to === 'backoff').length >= 5")
        assert [t for t in (await m.records())["transitions"] if t["to"] == "backoff"][4]["attempt"] == 1

        await _restart(proc)
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BACK', 'BUY', 1)")
        await m.wait("m.c.state === 'live'")
        head = await db_head(db)
        await m.wait(f"m.c.position.seq === {head}")
        rec = await m.records()
        assert rec["transitions"][-1]["resumed"] and rec["stats"]["resumes"] == 1
        assert rec["seqs"] == await seqs_after(db, 0)
        assert rec["invalid"] == [] and m.errors() == []
    finally:
        await asyncio.to_thread(proc.kill)


async def test_silent_hub_is_probed_then_given_up_on(chromium: Browser, dsn: str, db: asyncpg.Connection,
                                                     tmp_path: Path) -> None:
    """Half-open TCP (a frozen hub, a laptop that slept): after silence the machine pings, and without a pong
    it drops the socket and resumes elsewhere, here the same hub once it thaws."""
    proc = HubProcess(dsn, tmp_path / "hub.log")
    await _restart(proc)
    assert proc.proc is not None
    try:
        token = mint(hub_settings(dsn), SECRET, subject="machine", ttl_s=600)
        m = await machine_page(chromium, proc.http, token)
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            await m.page.wait_for_function("window.machine.c.state === 'backoff'", timeout=HANG_MS + 5000)
            rec = await m.records()
            assert await m.moves() == [*FIRST_LOAD, ("live", "backoff", "retry")]
            assert rec["transitions"][-1]["code"] is None  # the machine gave up, the hub never closed
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('THAW', 'BUY', 1)")
        await m.wait("m.c.state === 'live' && m.c.stats.resumes >= 1")
        head = await db_head(db)
        await m.wait(f"m.c.position.seq === {head}")
        assert (await m.records())["seqs"] == await seqs_after(db, 0)
        assert (await m.records())["invalid"] == [] and m.errors() == []
    finally:
        await asyncio.to_thread(proc.kill)


async def test_every_module_loads_at_its_versioned_url(chromium: Browser, hub: RunningHub) -> None:
    """Modules imported by other modules (relative URLs without `?v`) are fetched at their current versioned
    URL through the page's import map: cacheable for good, and a new release's module has a new URL."""
    ctx = await chromium.new_context()
    page = await ctx.new_page()
    scripts: list[str] = []
    page.on("request", lambda r: scripts.append(r.url) if r.resource_type == "script" else None)
    await page.goto(f"{hub.http}/?token={hub.token()}")
    await page.wait_for_selector('#conn[data-status="live"]', timeout=HANG_MS)
    modules = {p.name for p in STATIC_DIR.glob("*.js")}
    assert len(modules) > 3
    requested = {urlsplit(u).path.removeprefix("/static/"): urlsplit(u).query for u in scripts}
    assert set(requested) == modules, requested  # every module is used, each fetched once
    assert len(scripts) == len(modules)
    async with httpx.AsyncClient(base_url=hub.http) as http:
        for name, q in requested.items():
            served = await http.get(f"/static/{name}?{q}")
            assert q == "v=" + hashlib.sha256(served.content).hexdigest()[:12], name
            assert served.headers["cache-control"] == "public, max-age=31536000, immutable", name
