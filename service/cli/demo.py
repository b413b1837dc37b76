"""The demo feed: a simulated trading bot that writes trades and log lines with plain SQL.

It writes exactly as the real bot would (INSERT/UPDATE on trades, INSERT on
logs) so the triggers do the rest. Used by `zepix-hub demo` and `serve --demo`;
stops cleanly when cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from ..backoff import backoff_delay
from ..store.database import DATABASE_UNAVAILABLE, connect

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 10.0

SYMBOLS = {"BTCUSDT": 67000.0, "ETHUSDT": 3400.0, "SOLUSDT": 150.0, "EURUSD": 1.085, "XAUUSD": 2350.0,
           "BNBUSDT": 590.0, "GBPUSD": 1.27, "ADAUSDT": 0.45}
STRATEGIES = ("momentum", "mean_revert", "breakout", "grid")
LOG_LINES = (
    ("DEBUG", "scanner", "tick processed for {sym}"),
    ("INFO", "strategy", "{strategy}: signal on {sym}"),
    ("INFO", "broker", "order ack for {sym}"),
    ("WARNING", "broker", "slippage {slip} bps on {sym}"),
    ("WARNING", "risk", "exposure on {sym} near limit"),
    ("ERROR", "broker", "order rejected for {sym}: insufficient margin"),
    ("CRITICAL", "risk", "daily loss limit reached on {sym}: trading paused for 60 s"),
)
LEVEL_WEIGHTS = (30, 40, 25, 10, 6, 2, 0.3)


@dataclass
class _Trade:
    id: int
    symbol: str
    side: str
    qty: Decimal
    entry: float
    stage: int = 0


def _price(sym: str) -> float:
    SYMBOLS[sym] *= 1 + random.gauss(0, 0.0015)
    return SYMBOLS[sym]


def _round(sym: str, x: float) -> Decimal:
    """Prices as exact decimals: a float would reach numeric with all its binary digits."""
    return Decimal(str(round(x, 5 if x < 10 else 2)))


async def _open(conn: asyncpg.Connection) -> _Trade:
    sym = random.choice(list(SYMBOLS))
    side = random.choice(("BUY", "SELL"))
    price = _price(sym)
    qty = Decimal(str(round(random.uniform(0.1, 5.0) * (1000 / price if price > 100 else 1000), 4)))
    sl = price * (0.985 if side == "BUY" else 1.015)
    tp = price * (1.02 if side == "BUY" else 0.98)
    tid = await conn.fetchval(
        """INSERT INTO trades (symbol, side, order_type, quantity, entry_price, stop_loss, take_profit, strategy,
                               broker_order_ref, extra)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, jsonb_build_object('demo', true))
           RETURNING id""",
        sym, side, random.choice(("MARKET", "LIMIT")), qty, _round(sym, price), _round(sym, sl), _round(sym, tp),
        random.choice(STRATEGIES), f"BRK-{random.randrange(10**8):08d}")
    return _Trade(int(tid), sym, side, qty, price)


async def _advance(conn: asyncpg.Connection, t: _Trade) -> bool:
    """Move a trade one step along its life; return True when it reached a final status."""
    t.stage += 1
    if t.stage == 1:
        if random.random() < 0.05:
            await conn.execute("UPDATE trades SET status='REJECTED', close_reason='REJECTED', closed_at=now(), "
                               "updated_at=now() WHERE id=$1", t.id)
            return True
        await conn.execute("UPDATE trades SET status='OPEN', updated_at=now() WHERE id=$1", t.id)
    elif t.stage == 2:
        await conn.execute("UPDATE trades SET status='PARTIALLY_FILLED', filled_quantity=quantity/2, "
                           "fill_price=$2, updated_at=now() WHERE id=$1", t.id, _round(t.symbol, t.entry))
    elif t.stage == 3:
        if random.random() < 0.1:
            await conn.execute("UPDATE trades SET status='CANCELLED', close_reason='CANCELLED', closed_at=now(), "
                               "updated_at=now() WHERE id=$1", t.id)
            return True
        await conn.execute("UPDATE trades SET status='FILLED', filled_quantity=quantity, updated_at=now() "
                           "WHERE id=$1", t.id)
    else:
        win = random.random() < 0.55
        move = random.uniform(0.005, 0.02)
        exit_price = t.entry * (1 + move if (win == (t.side == "BUY")) else 1 - move)
        pnl = (exit_price - t.entry) * float(t.qty) * (1 if t.side == "BUY" else -1)
        reason = random.choice(("TP_HIT", "TP_HIT", "MANUAL")) if win else random.choice(("SL_HIT", "SL_HIT",
                                                                                          "MANUAL"))
        await conn.execute(
            "UPDATE trades SET status='CLOSED', close_reason=$2, exit_price=$3, realized_pnl=$4, closed_at=now(), "
            "updated_at=now() WHERE id=$1", t.id, reason, _round(t.symbol, exit_price), Decimal(str(round(pnl, 2))))
        return True
    return False


async def _log(conn: asyncpg.Connection) -> None:
    (level, source, template), = random.choices(LOG_LINES, weights=LEVEL_WEIGHTS)
    msg = template.format(sym=random.choice(list(SYMBOLS)), strategy=random.choice(STRATEGIES),
                          slip=random.randint(3, 40))
    await conn.execute("INSERT INTO logs (level, msg, source, context) VALUES ($1, $2, $3, "
                       "jsonb_build_object('demo', true))", level, msg, source)


async def run_demo(dsn: str, rate: float = 2.0, max_open: int = 8) -> None:
    """Write about `rate` operations a second until cancelled. Owns and closes its connection.

    A database that cannot be reached at the start is the caller's error (raised). Once the feed runs,
    a lost connection (PostgreSQL restarted, a DBA ended the backend) is logged and opened again with a
    growing delay, so the demo keeps moving after the database comes back.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    conn = await connect(dsn, role="demo")
    trades: list[_Trade] = []
    failures = 0
    while True:
        try:
            await _feed(conn, trades, rate, max_open)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("demo feed lost its database connection (%s); reconnecting", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        while True:
            await asyncio.sleep(backoff_delay(failures, RECONNECT_MIN_S, RECONNECT_MAX_S))
            failures += 1
            try:
                conn = await connect(dsn, role="demo")
                break
            except DATABASE_UNAVAILABLE as exc:
                log.warning("demo feed cannot reconnect yet (%s); retrying in %.0f s", type(exc).__name__,
                            backoff_delay(failures, RECONNECT_MIN_S, RECONNECT_MAX_S))
        failures = 0
        log.info("demo feed reconnected")


async def _feed(conn: asyncpg.Connection, trades: list[_Trade], rate: float, max_open: int) -> None:
    while True:
        roll = random.random()
        if roll < 0.45:
            await _log(conn)
        elif trades and (len(trades) >= max_open or roll < 0.8):
            t = random.choice(trades)
            if await _advance(conn, t):
                trades.remove(t)
        else:
            trades.append(await _open(conn))
        await asyncio.sleep(random.expovariate(rate))
