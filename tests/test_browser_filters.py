"""The dashboard's strategy/symbol selector and log-level chips use the hub's server-side filters (issue 16).

The page asks for a view in the URL form of docs/protocol.md's filters (`trade_update.strategy=grid`,
`log_stream.level=INFO`) on the snapshot and on every socket, resumes included. Rows of another strategy
must not reach the page at all: the page's own fallback check (for a hub that ignores filters) counts what
it had to drop in `window.zepix.state.filters.filteredOut`, which must stay 0, and the welcome frame's
`filters` must say what the hub applied.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from tests.hubs import RunningHub

# Skips (or under CI=true fails) this module as test_browser's own when the browser is missing: see there.
from tests.test_browser import (
    HANG_MS,
    Dashboard,
    _browser_installed,  # noqa: F401
    launched_chromium,
    open_dashboard,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.browser


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with launched_chromium() as launched:
        yield launched


TRADES = """
INSERT INTO trades (symbol, side, quantity, status, strategy, close_reason, realized_pnl, closed_at) VALUES
  ('BTCUSDT', 'BUY', 1, 'OPEN', 'grid', NULL, NULL, NULL),
  ('ETHUSDT', 'BUY', 2, 'OPEN', 'grid', NULL, NULL, NULL),
  ('BTCUSDT', 'SELL', 3, 'OPEN', 'momentum', NULL, NULL, NULL),
  ('SOLUSDT', 'BUY', 4, 'PENDING', 'momentum', NULL, NULL, NULL),
  ('BTCUSDT', 'BUY', 5, 'CLOSED', 'grid', 'TP_HIT', 12.5, now()),
  ('ETHUSDT', 'SELL', 6, 'CLOSED', 'momentum', 'SL_HIT', -3.25, now())
"""
OPEN = ("PENDING", "OPEN", "PARTIALLY_FILLED", "FILLED")


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def expected_rows(db: asyncpg.Connection, *, strategy: str | None = None,
                        symbol: str | None = None) -> tuple[set[int], set[int]]:
    """(open ids, closed ids) of the trades in that view."""
    rows = await db.fetch("SELECT id, status FROM trades WHERE ($1::text IS NULL OR strategy = $1) "
                          "AND ($2::text IS NULL OR symbol = $2)", strategy, symbol)
    return ({r["id"] for r in rows if r["status"] in OPEN}, {r["id"] for r in rows if r["status"] not in OPEN})


async def shown_rows(dash: Dashboard) -> dict[str, Any]:
    value = await dash.page.evaluate("""() => ({
      open: [...document.querySelectorAll('#trades-body tr[data-trade-id]')].map((r) => Number(r.dataset.tradeId)),
      closed: [...document.querySelectorAll('#closed-list li[data-trade-id]')].map((r) => Number(r.dataset.tradeId)),
      strategies: [...new Set([...document.querySelectorAll('#trades-body tr[data-trade-id], '
                                + '#closed-list li[data-trade-id]')].map((r) => r.dataset.strategy))],
      symbols: [...new Set([...document.querySelectorAll('#trades-body tr[data-trade-id], '
                             + '#closed-list li[data-trade-id]')].map((r) => r.dataset.symbol))],
    })""")
    assert isinstance(value, dict)
    return value


async def wait_rows(dash: Dashboard, open_ids: set[int], closed_ids: set[int]) -> None:
    want_open, want_closed = (json.dumps(sorted(ids), separators=(",", ":")) for ids in (open_ids, closed_ids))
    await dash.wait_js(
        "(() => { const ids = (sel) => JSON.stringify([...document.querySelectorAll(sel)]"
        ".map((r) => Number(r.dataset.tradeId)).sort((a, b) => a - b));"
        f" return ids('#trades-body tr[data-trade-id]') === '{want_open}'"
        f" && ids('#closed-list li[data-trade-id]') === '{want_closed}'; }})()")


async def choose(dash: Dashboard, select: str, value: str) -> None:
    """Pick a value in a selector and wait until the page is live on the new view (a new socket)."""
    sockets = len(dash.ws_urls)
    await dash.page.select_option(select, value)
    await dash.wait_js(f"window.zepix.state.connection.machine === 'live' && window.zepix.state.transitions"
                       f".filter((t) => t.on === 'connect').length >= {sockets + 1}")
    assert len(dash.ws_urls) == sockets + 1


async def test_strategy_selector_asks_the_hub_and_shows_only_that_strategy(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    await db.execute(TRADES)
    dash = await open_dashboard(chromium, hub.http, hub.token())
    page = dash.page
    # Unfiltered: every row, and the selector offers the strategies and symbols it has seen.
    all_open, all_closed = await expected_rows(db)
    await wait_rows(dash, all_open, all_closed)
    options = await page.eval_on_selector_all("#filter-strategy option", "(os) => os.map((o) => o.value)")
    assert options == ["", "grid", "momentum"]
    assert "trade_update.strategy" not in query(dash.ws_urls[-1])

    await choose(dash, "#filter-strategy", "grid")
    assert query(page.url)["strategy"] == ["grid"], "the screen is bookmarkable"
    ws = query(dash.ws_urls[-1])
    assert ws["trade_update.strategy"] == ["grid"] and ws["log_stream.level"] == ["INFO"]
    assert "token" not in dash.ws_urls[-1]
    grid_open, grid_closed = await expected_rows(db, strategy="grid")
    await wait_rows(dash, grid_open, grid_closed)
    assert (await shown_rows(dash))["strategies"] == ["grid"]

    # Live: a momentum trade never reaches the page; the grid one after it shows.
    other = await db.fetchval("INSERT INTO trades (symbol, side, quantity, strategy) "
                              "VALUES ('BTCUSDT', 'BUY', 7, 'momentum') RETURNING id")
    mine = await db.fetchval("INSERT INTO trades (symbol, side, quantity, strategy) "
                             "VALUES ('ADAUSDT', 'BUY', 8, 'grid') RETURNING id")
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{mine}"]', timeout=HANG_MS)
    assert await page.locator(f'#trades-body tr[data-trade-id="{other}"]').count() == 0
    state = await dash.state()
    assert state["filters"]["effective"] == {"trade_update.strategy": ["grid"], "log_stream.level": ["INFO"]}
    assert state["filters"]["filteredOut"] == 0, "rows of another strategy crossed the wire"
    assert await page.locator("#filter-note").is_hidden()

    # Back to every strategy: a fresh snapshot brings the others back.
    await choose(dash, "#filter-strategy", "")
    assert "trade_update.strategy" not in query(dash.ws_urls[-1]) and "strategy" not in query(page.url)
    await wait_rows(dash, *(await expected_rows(db)))
    assert dash.errors() == []


async def test_page_opened_for_a_strategy_and_symbol_keeps_its_filters_across_a_resume(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    await db.execute(TRADES)
    ctx = await chromium.new_context()
    page = await ctx.new_page()
    dash = Dashboard(page)
    snapshots: list[str] = []
    page.on("console", lambda msg: dash.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("websocket", lambda ws: dash.ws_urls.append(ws.url))
    page.on("request", lambda r: snapshots.append(r.url) if "/api/snapshot" in r.url else None)
    await page.goto(f"{hub.http}/?token={hub.token()}&strategy=grid&symbol=BTCUSDT")
    await page.wait_for_selector('#conn[data-status="live"]', timeout=HANG_MS)
    for url in (snapshots[0], dash.ws_urls[0]):
        q = query(url)
        assert q["trade_update.strategy"] == ["grid"] and q["trade_update.symbol"] == ["BTCUSDT"], url
    assert await page.locator("#filter-strategy").input_value() == "grid"
    assert await page.locator("#filter-symbol").input_value() == "BTCUSDT"
    await wait_rows(dash, *(await expected_rows(db, strategy="grid", symbol="BTCUSDT")))

    # Dropped and resumed: the resume asks for the same view, and what was missed is only that view's.
    await hub.hub.manager.close_all(4008, "too slow")
    away = await db.fetch("INSERT INTO trades (symbol, side, quantity, strategy) VALUES "
                          "('BTCUSDT', 'BUY', 1, 'grid'), ('BTCUSDT', 'BUY', 1, 'momentum'), "
                          "('ETHUSDT', 'BUY', 1, 'grid') RETURNING id")
    await dash.wait_js("window.zepix.state.connection.resumes >= 1")
    q = query(dash.ws_urls[-1])
    assert q["trade_update.strategy"] == ["grid"] and q["trade_update.symbol"] == ["BTCUSDT"]
    assert int(q["since"][0]) > 0
    await page.wait_for_selector(f'#trades-body tr[data-trade-id="{away[0]["id"]}"]', timeout=HANG_MS)
    await wait_rows(dash, *(await expected_rows(db, strategy="grid", symbol="BTCUSDT")))
    shown = await shown_rows(dash)
    assert shown["strategies"] == ["grid"] and shown["symbols"] == ["BTCUSDT"]
    state = await dash.state()
    assert state["filters"]["filteredOut"] == 0, "rows outside the view crossed the wire"
    assert state["filters"]["effective"]["trade_update.symbol"] == ["BTCUSDT"]
    assert dash.errors() == []


async def test_log_level_chips_set_the_server_side_minimum(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    dash = await open_dashboard(chromium, hub.http, hub.token())
    page = dash.page
    assert query(dash.ws_urls[-1])["log_stream.level"] == ["INFO"]  # DEBUG is off by default
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('DEBUG', 'tick noise', 'scanner'), "
                     "('INFO', 'marker one', 'strategy')")
    await page.locator("#log-list .log", has_text="marker one").wait_for(timeout=HANG_MS)
    # not merely hidden: the DEBUG line never reached the page
    assert await page.locator('#log-list .log[data-level="DEBUG"]').count() == 0

    # DEBUG on: every level, so no minimum at all, and the snapshot brings the DEBUG line.
    await page.locator('#level-filter .chip[data-level="DEBUG"]').click()
    await dash.wait_js("window.zepix.state.connection.machine === 'live'")
    assert "log_stream.level" not in query(dash.ws_urls[-1])
    await page.locator("#log-list .log", has_text="tick noise").wait_for(timeout=HANG_MS)

    # DEBUG and INFO off: WARNING is the minimum; an INFO line is not sent.
    sockets = len(dash.ws_urls)
    await page.locator('#level-filter .chip[data-level="DEBUG"]').click()
    await page.locator('#level-filter .chip[data-level="INFO"]').click()
    await dash.wait_js(f"window.zepix.state.connection.machine === 'live' && window.zepix.state.transitions"
                       f".filter((t) => t.on === 'connect').length >= {sockets + 2}")
    assert query(dash.ws_urls[-1])["log_stream.level"] == ["WARNING"]
    await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'not for this screen', 'strategy'), "
                     "('WARNING', 'marker two', 'broker')")
    await page.locator("#log-list .log", has_text="marker two").wait_for(timeout=HANG_MS)
    assert await page.locator("#log-list .log", has_text="not for this screen").count() == 0
    assert (await dash.state())["filters"]["effective"] == {"log_stream.level": ["WARNING"]}

    # A level switched off above the minimum is hidden in the page, as before filters: no new socket.
    sockets = len(dash.ws_urls)
    await page.locator('#level-filter .chip[data-level="ERROR"]').click()
    assert await page.locator("#log-list").evaluate("(l) => l.classList.contains('hide-ERROR')")
    assert len(dash.ws_urls) == sockets
    assert dash.errors() == []


async def test_token_without_log_stream_gets_no_level_filter_and_a_scoped_token_is_shown_its_limit(
        chromium: Browser, hub: RunningHub, db: asyncpg.Connection) -> None:
    """A filter on a topic the token lacks would be refused, so the page sends none; a token scoped to one
    strategy sees only it, and the page says why when it asked for more."""
    await db.execute(TRADES)
    narrow = await open_dashboard(chromium, hub.http, hub.token(topics=["trade_update", "sys_status"]))
    assert "log_stream.level" not in query(narrow.ws_urls[-1])
    await narrow.wait_js("window.zepix.state.lastSeq >= 6")

    scoped = await open_dashboard(chromium, hub.http, hub.token(scope={"strategy": ["grid"]}))
    await wait_rows(scoped, *(await expected_rows(db, strategy="grid")))
    state = await scoped.state()
    assert state["filters"]["effective"]["trade_update.strategy"] == ["grid"]
    assert state["filters"]["filteredOut"] == 0
    note = scoped.page.locator("#filter-note")
    assert await note.is_visible() and "grid" in await note.inner_text()
    assert narrow.errors() == [] and scoped.errors() == []
