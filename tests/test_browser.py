"""The dashboard (service/static/) in a real browser: Debian's Chromium driven by Playwright.

Everything is real: the hub (in-process uvicorn, or `zepix-hub serve` as a
subprocess for the SIGKILL test), PostgreSQL, the page's own fetch and
WebSocket. The page exposes a read-only `window.zepix` hook and data
attributes (`tr[data-trade-id]`, `#conn[data-status]`) so the assertions do not
depend on wording.

Needs `pip install playwright` and `apt-get install chromium` (never
`playwright install`: the tests drive /usr/bin/chromium, or HUB_TEST_CHROMIUM).
Without them the module is skipped with a reason that says so; with CI=true
each test fails instead, so that CI cannot go green without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.api.auth import mint
from tests.certs import make_pki
from tests.hubs import SECRET, HubProcess, RunningHub, hub_settings, listener_cut_off
from tests.nginx import NGINX, nginx
from tests.pg import PgServer
from tests.required import require

CHROMIUM = Path(os.environ.get("HUB_TEST_CHROMIUM", "/usr/bin/chromium"))
MISSING: str | None = None
try:
    from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    MISSING = ("playwright is not installed; run `pip install playwright` "
               "(and `apt-get install -y chromium`, not `playwright install`)")
if MISSING is None and not CHROMIUM.exists():  # pragma: no cover - depends on the machine
    MISSING = f"{CHROMIUM} is missing; run `apt-get install -y chromium` as root"
_browser_installed = require("browser", MISSING)


pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HANG_MS = 15_000  # hang guard for every wait in the page; never a pacing device
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
OPEN_STATUSES = ("PENDING", "OPEN", "PARTIALLY_FILLED", "FILLED")
# What Chromium itself prints when a hub is down on purpose (not the page's code failing).
NETWORK_NOISE = re.compile(r"WebSocket connection to .* failed|net::ERR_CONNECTION_(REFUSED|RESET|CLOSED)"
                           r"|Failed to load resource: net::ERR_")


@contextlib.asynccontextmanager
async def launched_chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium for one test (the browser fixture here and in the other test_browser_* modules)."""
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launched_chromium() as chromium:
        yield chromium


@dataclass
class Dashboard:
    page: Page
    console_errors: list[str] = field(default_factory=list)
    ws_urls: list[str] = field(default_factory=list)

    async def state(self) -> dict[str, Any]:
        value = await self.page.evaluate("window.zepix.state")
        assert isinstance(value, dict)
        return value

    async def wait_js(self, expression: str) -> None:
        await self.page.wait_for_function(expression, timeout=HANG_MS)

    def errors(self, *, allow_network: bool = False) -> list[str]:
        return [e for e in self.console_errors if not (allow_network and NETWORK_NOISE.search(e))]


async def open_dashboard(browser: Browser, base: str, token: str, **context: Any) -> Dashboard:
    ctx = await browser.new_context(viewport=context.pop("viewport", {"width": 1280, "height": 800}),
                                    color_scheme=context.pop("color_scheme", "dark"), **context)
    page = await ctx.new_page()
    dash = Dashboard(page)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            dash.console_errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: dash.console_errors.append(f"uncaught: {exc}"))
    page.on("websocket", lambda ws: dash.ws_urls.append(ws.url))
    await page.goto(f"{base}/?token={token}")
    await page.wait_for_selector('#conn[data-status="live"]', timeout=HANG_MS)
    return dash


async def db_head(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT head FROM event_log_status"))


async def caught_up(dash: Dashboard, db: asyncpg.Connection) -> int:
    """Wait until the page has applied every committed event; return that head."""
    head = await db_head(db)
    await dash.wait_js(f"window.zepix.lastSeq >= {head}")
    return head


async def test_trade_inserted_with_sql_appears_within_a_second(browser: Browser, hub: RunningHub,
                                                              db: asyncpg.Connection) -> None:
    token = hub.token(sub="operator")
    dash = await open_dashboard(browser, hub.http, token)
    page = dash.page
    assert "token" not in page.url, "the token must leave the address bar"
    assert await page.evaluate("sessionStorage.getItem('zepix.token')") == token
    assert dash.ws_urls and all("token" not in u for u in dash.ws_urls), dash.ws_urls
    assert all("since=" in u for u in dash.ws_urls)

    started = time.monotonic()
    tid = await db.fetchval(
        "INSERT INTO trades (symbol, side, quantity, entry_price, stop_loss) "
        "VALUES ('BTCUSDT', 'BUY', 0.0149253731343283582, 67012.123456789, 0.000012345678) RETURNING id")
    row = await page.wait_for_selector(f'#trades-body tr[data-trade-id="{tid}"]', timeout=HANG_MS)
    latency = time.monotonic() - started
    assert latency < 1.0, f"trade took {latency:.3f} s to reach the table"

    assert row is not None
    text = await row.inner_text()
    assert "BTCUSDT" in text and "BUY" in text
    # numeric columns arrive as JSON numbers with every digit numeric kept: shown rounded for a human
    assert "0 / 0.014925" in text, text
    assert "67,012.12" in text, text
    assert await row.get_attribute("data-status") == "PENDING"
    head = await caught_up(dash, db)
    assert await page.evaluate("window.zepix.lastSeq") == head
    assert await page.evaluate("window.zepix.openTradeIds()") == [tid]
    assert dash.errors() == []


async def test_trade_lifecycle_updates_rows_in_place(browser: Browser, hub: RunningHub,
                                                     db: asyncpg.Connection) -> None:
    open_id = await db.fetchval("INSERT INTO trades (symbol, side, quantity, entry_price, status) "
                                "VALUES ('ETHUSDT', 'SELL', 2, 3400.5, 'OPEN') RETURNING id")
    closed_id = await db.fetchval(
        "INSERT INTO trades (symbol, side, quantity, status, close_reason, realized_pnl, closed_at) "
        "VALUES ('XAUUSD', 'BUY', 1, 'CLOSED', 'TP_HIT', 184.2, now()) RETURNING id")
    doomed_id = await db.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('EURUSD', 'BUY', 1000) "
                                  "RETURNING id")
    dash = await open_dashboard(browser, hub.http, hub.token())
    page = dash.page
    # the snapshot rendered both sides
    assert sorted(await page.evaluate("window.zepix.openTradeIds()")) == sorted([open_id, doomed_id])
    assert await page.locator(f'#closed-list li[data-trade-id="{closed_id}"] .pnl').get_attribute(
        "data-sign") == "pos"

    row = page.locator(f'#trades-body tr[data-trade-id="{open_id}"]')
    before = await row.element_handle()
    await db.execute("UPDATE trades SET status = 'PARTIALLY_FILLED', filled_quantity = 1, fill_price = 3399.75 "
                     "WHERE id = $1", open_id)
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{open_id}"][data-status="PARTIALLY_FILLED"]',
                                 timeout=HANG_MS)
    # updated in place: the same <tr>, with exactly the changed cells flashing
    assert await page.evaluate("(el) => el === document.querySelector("
                               f"'#trades-body tr[data-trade-id=\"{open_id}\"]')", before)
    flashed = await row.evaluate("(tr) => [...tr.querySelectorAll('.flash')].map((c) => c.dataset.col).sort()")
    assert flashed == ["entry", "fill", "status"], flashed
    assert "1 / 2" in await row.locator('[data-col="fill"]').inner_text()
    assert "3,399.75" in await row.locator('[data-col="entry"]').inner_text()

    await db.execute("UPDATE trades SET status = 'CLOSED', close_reason = 'SL_HIT', realized_pnl = -12.5, "
                     "closed_at = now() WHERE id = $1", open_id)
    loss = page.locator(f'#closed-list li[data-trade-id="{open_id}"] .pnl')
    await loss.wait_for(timeout=HANG_MS)
    assert await loss.get_attribute("data-sign") == "neg"
    assert (await loss.inner_text()).strip() == "\u221212.50"
    gain = page.locator(f'#closed-list li[data-trade-id="{closed_id}"] .pnl')
    loss_rgb = await loss.evaluate("(el) => getComputedStyle(el).color")
    gain_rgb = await gain.evaluate("(el) => getComputedStyle(el).color")
    red, green = (tuple(int(x) for x in re.findall(r"\d+", c)[:3]) for c in (loss_rgb, gain_rgb))
    assert red[0] > red[1] and green[1] > green[0], (loss_rgb, gain_rgb)
    assert await page.locator(f'#trades-body tr[data-trade-id="{open_id}"]').count() == 0

    await db.execute("DELETE FROM trades WHERE id = $1", doomed_id)
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{doomed_id}"]', state="detached",
                                 timeout=HANG_MS)
    await caught_up(dash, db)
    assert await page.evaluate("window.zepix.openTradeIds()") == []
    assert await page.locator("#trades-empty").is_visible()

    # the hub drops the page as too slow (4008): it reconnects and resumes from its last seq
    await hub.hub.manager.close_all(4008, "too slow; resume with since=0")
    missed = await db.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('ADAUSDT', 'BUY', 5) RETURNING id")
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{missed}"]', timeout=HANG_MS)
    await dash.wait_js("window.zepix.state.connection.resumes >= 1")
    assert (await dash.state())["connection"]["lastCloseCode"] == 4008
    assert await page.evaluate("window.zepix.lastSeq") == await db_head(db)
    assert dash.errors() == []


async def test_error_log_line_raises_a_toast(browser: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    dash = await open_dashboard(browser, hub.http, hub.token())
    page = dash.page
    await db.execute("INSERT INTO logs (level, msg, source) "
                     "VALUES ('ERROR', 'order rejected for BTCUSDT: insufficient margin', 'broker')")
    error = page.locator('#toasts .toast[data-type="error"]')
    await error.wait_for(timeout=HANG_MS)
    assert "insufficient margin" in await error.inner_text()
    assert await error.get_attribute("role") == "alert"
    assert await error.get_attribute("data-sticky") == "true"
    await page.locator('#log-list .log[data-level="ERROR"]').wait_for(timeout=HANG_MS)

    # an info notification fades by itself; the error one stays until dismissed
    await db.execute("SELECT hub_notify('info', 'Heads up', 'rebalancing at the top of the hour')")
    info = page.locator('#toasts .toast[data-type="info"]')
    await info.wait_for(timeout=HANG_MS)
    assert await info.get_attribute("data-sticky") == "false"
    await info.wait_for(state="detached", timeout=HANG_MS)
    assert await error.is_visible()

    await page.keyboard.press("Escape")  # dismissable from the keyboard
    await error.wait_for(state="detached", timeout=HANG_MS)
    assert dash.errors() == []


async def test_log_stream_filters_pauses_and_stays_bounded(browser: Browser, hub: RunningHub,
                                                           db: asyncpg.Connection) -> None:
    dash = await open_dashboard(browser, hub.http, hub.token())
    page = dash.page
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('WARNING', 'slippage 23 bps', 'broker')")
    warning = page.locator('#log-list .log[data-level="WARNING"]')
    await warning.wait_for(timeout=HANG_MS)
    await page.locator('#level-filter .chip[data-level="WARNING"]').click()
    await warning.wait_for(state="hidden", timeout=HANG_MS)
    await page.locator('#level-filter .chip[data-level="WARNING"]').click()
    await warning.wait_for(state="visible", timeout=HANG_MS)

    await page.locator("#log-pause").click()
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'held while paused', 'strategy')")
    await page.wait_for_selector("#log-pending:not([hidden])", timeout=HANG_MS)
    assert "1 new line" in await page.locator("#log-pending").inner_text()
    assert await page.locator("#log-list .log", has_text="held while paused").count() == 0
    await page.locator("#log-pause").click()
    await page.locator("#log-list .log", has_text="held while paused").wait_for(timeout=HANG_MS)

    # a storm of 1500 lines in one commit: the DOM keeps the newest 500 and the page stays responsive
    await db.execute("INSERT INTO logs (level, msg, source) "
                     "SELECT 'INFO', 'storm line ' || g, 'storm' FROM generate_series(1, 1500) AS g")
    await caught_up(dash, db)
    await page.locator("#log-list .log", has_text="storm line 1500").wait_for(timeout=HANG_MS)
    assert await page.locator("#log-list .log").count() == 500
    assert await page.locator("#log-list .log").first.inner_text() != ""
    assert "storm line 1500" in await page.locator("#log-list .log").first.inner_text()
    assert dash.errors() == []


async def test_expired_token_stops_reconnecting_until_a_new_one_is_pasted(
        browser: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    dash = await open_dashboard(browser, hub.http, hub.token(ttl=8))  # room to reach "live" first on a busy machine
    page = dash.page
    await page.wait_for_selector('#conn[data-status="unauthorized"]', timeout=HANG_MS)
    state = await dash.state()
    assert state["connection"]["lastCloseCode"] == 4001
    assert await page.locator("#banner").is_visible()
    sockets = len(dash.ws_urls)
    await asyncio.sleep(1.0)  # twice the longest first backoff step: a reconnect would have happened by now
    assert len(dash.ws_urls) == sockets
    # A scheduled reconnect shows as "reconnecting" at once, before its timer fires: a slow machine cannot
    # hide one.
    assert (await dash.state())["connection"]["status"] == "unauthorized"
    assert len(hub.hub.manager) == 0

    await page.locator("#token-input").fill(hub.token(ttl=600))
    await page.locator("#token-input").press("Enter")
    await page.wait_for_selector('#conn[data-status="live"]', timeout=HANG_MS)
    tid = await db.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('SOLUSDT', 'SELL', 3) RETURNING id")
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{tid}"]', timeout=HANG_MS)
    assert await page.locator("#banner").is_hidden()
    assert dash.errors() == []


async def _trade_writer(dsn: str, stop: asyncio.Event, seed: int) -> int:
    """A busy bot: opens, advances, cancels and deletes trades (and logs) until `stop`; returns commits."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    live: list[int] = []
    commits = 0
    try:
        while not stop.is_set():
            roll = rng.random()
            if not live or roll < 0.3:
                live.append(await conn.fetchval(
                    "INSERT INTO trades (symbol, side, quantity, entry_price) VALUES ($1, $2, $3, $4) RETURNING id",
                    rng.choice(["BTCUSDT", "ETHUSDT", "EURUSD"]), rng.choice(["BUY", "SELL"]),
                    round(rng.uniform(0.1, 5), 4), round(rng.uniform(1, 70000), 2)))
            elif roll < 0.8:
                tid = rng.choice(live)
                async with conn.transaction():  # two events in one commit
                    status = await conn.fetchval(
                        """UPDATE trades SET
                               status = CASE status WHEN 'PENDING' THEN 'OPEN' WHEN 'OPEN' THEN 'PARTIALLY_FILLED'
                                                    WHEN 'PARTIALLY_FILLED' THEN 'FILLED' ELSE 'CLOSED' END,
                               filled_quantity = CASE status WHEN 'OPEN' THEN quantity / 3
                                                             WHEN 'PARTIALLY_FILLED' THEN quantity
                                                             ELSE filled_quantity END,
                               realized_pnl = CASE status WHEN 'FILLED' THEN $2::numeric END,
                               closed_at = CASE status WHEN 'FILLED' THEN now() END,
                               updated_at = now()
                           WHERE id = $1 RETURNING status""", tid, round(rng.uniform(-50, 50), 2))
                    await conn.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', $1, 'writer')",
                                       f"trade {tid} -> {status}")
                if status == "CLOSED":
                    live.remove(tid)
            elif roll < 0.9:
                tid = live.pop(rng.randrange(len(live)))
                await conn.execute("UPDATE trades SET status = 'CANCELLED', close_reason = 'CANCELLED', "
                                   "closed_at = now() WHERE id = $1", tid)
            else:
                await conn.execute("DELETE FROM trades WHERE id = $1", live.pop(rng.randrange(len(live))))
            commits += 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return commits


async def _restart(proc: HubProcess) -> None:
    """Start the (killed) hub again on its port and wait until it is ready."""
    await asyncio.to_thread(proc.start)
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=proc.http, timeout=2) as http:
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hub did not come back in 30 s"
            await asyncio.sleep(0.1)


async def test_dashboard_works_through_the_documented_nginx_proxy(browser: Browser, dsn: str,
                                                                 db: asyncpg.Connection, tmp_path: Path) -> None:
    """The dashboard at https://localhost:PORT, served by nginx with docs/nginx/zepix-hub.conf in front of two
    hubs: page, assets and wss:// all through the proxy, and a trade inserted by SQL shows up. The hubs keep
    HUB_ALLOWED_ORIGINS unset: the site passes the public Host on, so the page's Origin is the hub's own."""
    if not NGINX.exists():  # pragma: no cover - depends on the machine
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {NGINX} is missing; run `apt-get install -y nginx` as root", pytrace=False)
        pytest.skip(f"PROXY BROWSER TEST SKIPPED: {NGINX} is missing; run `apt-get install -y nginx` as root")
    pki = make_pki(tmp_path / "pki")
    hubs = [HubProcess(dsn, tmp_path / f"hub{i}.log") for i in (1, 2)]
    for hub in hubs:
        hub.start()
    try:
        with nginx(tmp_path / "nginx", pki, hubs) as port:
            public = f"https://localhost:{port}"
            token = mint(hub_settings(dsn), SECRET, subject="proxied", ttl_s=600)
            # Chromium has its own trust store; the CA's verification is tests/test_tls.py's and test_proxy's.
            dash = await open_dashboard(browser, public, token, ignore_https_errors=True)
            assert dash.ws_urls and all(u.startswith(f"wss://localhost:{port}/ws/live") for u in dash.ws_urls)
            tid = await db.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('SOLUSDT', 'BUY', 3) "
                                    "RETURNING id")
            row = await dash.page.wait_for_selector(f'#trades-body tr[data-trade-id="{tid}"]', timeout=HANG_MS)
            assert row is not None and "SOLUSDT" in await row.inner_text()
            await caught_up(dash, db)
            assert dash.errors() == []
    finally:
        for hub in hubs:
            hub.kill()


async def test_page_converges_after_hub_sigkill_and_restart(browser: Browser, dsn: str, db: asyncpg.Connection,
                                                            tmp_path: Path) -> None:
    proc = HubProcess(dsn, tmp_path / "hub.log")
    await _restart(proc)
    port = proc.port
    token = mint(hub_settings(dsn), SECRET, subject="operator", ttl_s=600)
    stop = asyncio.Event()
    writer: asyncio.Task[int] | None = None
    try:
        dash = await open_dashboard(browser, proc.http, token)
        writer = asyncio.create_task(_trade_writer(dsn, stop, seed=7))
        await dash.wait_js("window.zepix.state.applied >= 10")

        # outage 1: a short gap, replayed on resume
        await asyncio.to_thread(proc.kill)
        await dash.page.wait_for_selector('#conn[data-status="reconnecting"]', timeout=HANG_MS)
        await _restart(proc)  # the writer keeps committing while the hub is down and starting up
        assert proc.port == port
        await dash.wait_js("window.zepix.state.connection.resumes >= 1")

        # outage 2: the restarted hub refuses any replay (HUB_RESUME_CAP=0), so the page must reload its state
        await asyncio.to_thread(proc.kill)
        proc.env["HUB_RESUME_CAP"] = "0"
        await _restart(proc)
        await dash.wait_js("window.zepix.state.connection.reloads >= 1")
        await asyncio.sleep(0.5)  # keep writing into the live stream after the reload
        stop.set()
        commits = await writer
        assert commits > 50, "the writer should have been busy through both outages"

        head = await caught_up(dash, db)
        rows = await db.fetch("SELECT id, status FROM trades WHERE status = ANY($1::text[])", list(OPEN_STATUSES))
        expected = {r["id"]: r["status"] for r in rows}
        shown = {t["id"]: t["status"] for t in await dash.page.evaluate("window.zepix.openTrades()")}
        assert shown == expected
        dom_ids = await dash.page.eval_on_selector_all("#trades-body tr[data-trade-id]",
                                                       "(rows) => rows.map((r) => Number(r.dataset.tradeId))")
        assert sorted(dom_ids) == sorted(expected)
        assert await dash.page.evaluate("window.zepix.lastSeq") == head == await db_head(db)
        state = await dash.state()
        assert state["connection"]["resumes"] >= 1 and state["connection"]["reloads"] >= 1

        # a graceful stop says 1001 (going away): the page keeps trying to resume
        assert await asyncio.to_thread(proc.terminate) == 0
        await dash.page.wait_for_selector('#conn[data-status="reconnecting"]', timeout=HANG_MS)
        # the last code is 1001 unless a retry against the stopped hub already failed (1006) since
        codes = (await dash.state())["connection"]["closeCodes"]
        assert 1001 in codes and set(codes[codes.index(1001):]) <= {1001, 1006}, codes
        assert dash.errors(allow_network=True) == []
    finally:
        stop.set()
        if writer is not None and not writer.done():
            await writer
        await asyncio.to_thread(proc.kill)


async def test_page_reloads_when_the_hub_finds_its_log_restored(browser: Browser, hub: RunningHub, pg: PgServer,
                                                                db: asyncpg.Connection) -> None:
    """A restore without the fence under a running hub: trades 4-6 and their events vanish, and new trades
    take seqs 4-7 before the hub's listener is back. The hub closes the page 4410; the page must reload
    rather than resume (a resume from seq 6 would look successful and keep the vanished trades)."""
    dash = await open_dashboard(browser, hub.http, hub.token(sub="operator"))
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'OLD' || g, 'BUY', 1 "
                     "FROM generate_series(1, 6) g")
    await caught_up(dash, db)
    async with listener_cut_off(pg.admin_dsn, db):
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")  # a restore fires no triggers
            await db.execute("DELETE FROM trades WHERE id > 3")
            await db.execute("DELETE FROM events WHERE seq > 3")
            await db.execute("SELECT setval('events_seq', 3)")
        await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'NEW' || g, 'SELL', 2 "
                         "FROM generate_series(1, 4) g")
    await dash.wait_js("window.zepix.state.connection.closeCodes.includes(4410)")
    await dash.wait_js("window.zepix.state.connection.reloads >= 1")
    head = await caught_up(dash, db)
    rows = await db.fetch("SELECT id, symbol FROM trades WHERE status = ANY($1::text[])", list(OPEN_STATUSES))
    assert len(rows) == 7 and head == 7
    shown = {t["id"] for t in await dash.page.evaluate("window.zepix.openTrades()")}
    assert shown == {r["id"] for r in rows}
    dom = await dash.page.eval_on_selector_all("#trades-body tr[data-trade-id]", "(rows) => rows.length")
    assert dom == 7
    assert dash.errors(allow_network=True) == []


async def test_page_resumes_with_the_log_epoch_and_reloads_from_a_rebuilt_log(
        browser: Browser, hub: RunningHub, pg: PgServer, db: asyncpg.Connection) -> None:
    """The page keeps the snapshot's epoch and sends it on every resume. The database is rebuilt while the
    hub's listener is away (so no 4410 can help), and the page, cut off meanwhile, resumes from seq 6, which
    the new log also has: it must reload, and show the new database's trades before the listener is back."""
    dash = await open_dashboard(browser, hub.http, hub.token(sub="operator"))
    await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'OLD' || g, 'BUY', 1 "
                     "FROM generate_series(1, 6) g")
    await caught_up(dash, db)
    old = await db.fetchval("SELECT epoch::text FROM event_log_epoch")
    assert await dash.page.evaluate("window.zepix.epoch") == old
    async with listener_cut_off(pg.admin_dsn, db):
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")  # a restore fires no triggers
            await db.execute("DELETE FROM trades")
        await db.execute(REBUILD_LOG)
        await db.execute("INSERT INTO trades (symbol, side, quantity) SELECT 'NEW' || g, 'SELL', 2 "
                         "FROM generate_series(1, 8) g")
        new = await db.fetchval("SELECT epoch::text FROM event_log_epoch")
        await hub.hub.manager.close_all(4008, "too slow; resume with since=6")
        await dash.wait_js("window.zepix.state.connection.reloads >= 1")
        assert f"since=6&epoch={old}" in dash.ws_urls[-1]
        await dash.wait_js(f"window.zepix.epoch === '{new}' && window.zepix.lastSeq === 8")
        shown = {t["id"] for t in await dash.page.evaluate("window.zepix.openTrades()")}
        assert shown == {r["id"] for r in await db.fetch("SELECT id FROM trades")} and len(shown) == 8
    # The listener comes back to another log: 4410, and the page reloads once more into the same state.
    await dash.wait_js("window.zepix.state.connection.closeCodes.includes(4410)")
    await dash.wait_js("window.zepix.state.connection.reloads >= 2")
    await caught_up(dash, db)
    assert f"epoch={new}" in dash.ws_urls[-1]
    shown = {t["id"] for t in await dash.page.evaluate("window.zepix.openTrades()")}
    assert shown == {r["id"] for r in await db.fetch("SELECT id FROM trades")}
    assert dash.errors(allow_network=True) == []


#: A rebuilt database (dropped and migrated again): a new log, numbered from 1, with its own epoch.
REBUILD_LOG = """
DELETE FROM events;
SELECT setval('events_seq', 1, false);
UPDATE event_retention SET pruned_through = 0, pruned_at = NULL;
UPDATE event_log_epoch SET epoch = gen_random_uuid(), started_at = now();
"""


async def test_dashboard_screenshot(browser: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    await db.execute("""
        INSERT INTO trades (symbol, side, order_type, quantity, filled_quantity, entry_price, fill_price,
                            stop_loss, take_profit, status, strategy, opened_at) VALUES
          ('BTCUSDT', 'BUY', 'MARKET', 0.25, 0.25, 67012.5, 67010.25, 66000, 69000, 'FILLED', 'momentum',
           now() - interval '42 minutes'),
          ('ETHUSDT', 'SELL', 'LIMIT', 3.5, 1.75, 3401.2, 3401.2, 3460, 3320, 'PARTIALLY_FILLED', 'breakout',
           now() - interval '17 minutes'),
          ('EURUSD', 'BUY', 'LIMIT', 25000, 0, 1.08523, NULL, 1.0801, 1.0921, 'OPEN', 'mean_revert',
           now() - interval '6 minutes')""")
    await db.execute("""
        INSERT INTO trades (symbol, side, quantity, filled_quantity, entry_price, exit_price, status, close_reason,
                            realized_pnl, closed_at) VALUES
          ('XAUUSD', 'SELL', 2, 2, 2351.4, 2342.2, 'CLOSED', 'TP_HIT', 18.4, now() - interval '9 minutes'),
          ('BNBUSDT', 'BUY', 4, 4, 590.1, 574.4, 'CLOSED', 'SL_HIT', -62.75, now() - interval '7 minutes'),
          ('GBPUSD', 'SELL', 10000, 0, 1.2712, NULL, 'CANCELLED', 'CANCELLED', NULL, now() - interval '5 minutes'),
          ('ETHUSDT', 'BUY', 1.2, 1.2, 3390.0, 3401.7, 'CLOSED', 'MANUAL', 14.04, now() - interval '3 minutes')""")
    await db.execute("""
        INSERT INTO logs (level, msg, source, ts)
        SELECT (ARRAY['INFO','DEBUG','INFO','WARNING','INFO'])[1 + g % 5],
               (ARRAY['momentum: signal on BTCUSDT', 'tick processed for ETHUSDT', 'order ack for EURUSD',
                      'slippage 18 bps on ETHUSDT', 'breakout: signal on ETHUSDT'])[1 + g % 5],
               (ARRAY['strategy','scanner','broker','broker','strategy'])[1 + g % 5],
               now() - (30 - g) * interval '7 seconds'
          FROM generate_series(1, 30) AS g""")

    ARTIFACTS.mkdir(exist_ok=True)
    dash = await open_dashboard(browser, hub.http, hub.token())
    page = dash.page
    await db.execute("INSERT INTO trades (symbol, side, order_type, quantity, entry_price, stop_loss, take_profit, "
                     "strategy) VALUES ('SOLUSDT', 'BUY', 'LIMIT', 12.5, 148.35, 145.9, 152.8, 'grid')")
    await db.execute("UPDATE trades SET filled_quantity = 2.8, status = 'PARTIALLY_FILLED' WHERE symbol = 'ETHUSDT' "
                     "AND status = 'PARTIALLY_FILLED'")
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', "
                     "'order rejected for BNBUSDT: insufficient margin', 'broker')")
    await db.execute("SELECT hub_notify('success', 'Daily target reached', 'Realized PnL is above the daily goal')")
    await caught_up(dash, db)
    await dash.wait_js("window.zepix.state.samples >= 5")  # a few heartbeats for the sparklines
    # let the one-shot animations (row slide-in, cell flash) finish before the picture
    await dash.wait_js("document.getAnimations().every((a) => !(a instanceof CSSAnimation)"
                       " || a.effect.getTiming().iterations === Infinity)")
    desktop = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(desktop), full_page=True)
    assert desktop.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert await page.locator("#trades-body tr[data-trade-id]").count() == 4
    # every control has an accessible name
    unnamed = await page.eval_on_selector_all(
        "button, input", "(els) => els.filter((e) => !(e.textContent.trim() || e.getAttribute('aria-label')"
                         " || (e.id && document.querySelector(`label[for=\"${e.id}\"]`)))).length")
    assert unnamed == 0

    # a phone, with reduced motion: no horizontal scrolling, no animations on new rows
    phone = await open_dashboard(browser, hub.http, hub.token(), viewport={"width": 390, "height": 844},
                                 reduced_motion="reduce", is_mobile=True, has_touch=True)
    assert await phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    tid = await db.fetchval("INSERT INTO trades (symbol, side, quantity) VALUES ('ADAUSDT', 'SELL', 1500) "
                            "RETURNING id")
    row = await phone.page.wait_for_selector(f'#trades-body tr[data-trade-id="{tid}"]', timeout=HANG_MS)
    assert row is not None
    assert await row.evaluate("(tr) => tr.getAnimations().length") == 0
    await phone.wait_js("window.zepix.state.samples >= 3")
    await phone.page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert dash.errors() == [] and phone.errors() == []
