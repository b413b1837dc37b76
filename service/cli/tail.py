"""`zepix-hub tail`: follow the live stream in the terminal, through HubClient.

Events go to stdout, one line each (or the raw frame with --json), so the output pipes into grep or jq;
connection news goes to stderr. Colours only on a terminal without NO_COLOR.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from ..api.auth import DEV_SECRET_FILE, DEV_TOKEN_TTL_S, mint, signing_key
from ..client.hub_client import Connected, Event, HubClient, HubRejected, Reconnecting, Resumed, live_url
from ..errors import ConfigError, UnknownTopicError
from ..settings import Settings, display_host, load_settings
from ..topics import LOG_STREAM, NOTIFICATION, SYS_STATUS, TRADE_UPDATE, parse_topics

RESET, BOLD, DIM = "\x1b[0m", "\x1b[1m", "\x1b[2m"
RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN = (f"\x1b[{n}m" for n in (31, 32, 33, 34, 35, 36))

TOPIC_COLOURS = {TRADE_UPDATE: CYAN, LOG_STREAM: BLUE, NOTIFICATION: MAGENTA, SYS_STATUS: DIM}
LEVEL_COLOURS = {"DEBUG": DIM, "INFO": GREEN, "WARNING": YELLOW, "ERROR": RED, "CRITICAL": BOLD + RED}
NOTIFY_COLOURS = {"info": BLUE, "success": GREEN, "warning": YELLOW, "error": RED, "critical": BOLD + RED}
# Everything below 0x20 and the C1 range could move the cursor or recolour the
# terminal: event text comes from the bot's data and must not drive the terminal.
_CONTROL = {c: "\ufffd" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\n"): "\u21b5 ", ord("\t"): " "})


def use_colour(stream: TextIO) -> bool:
    """ANSI colours only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str | None) -> str:
        return f"{colour}{text}{RESET}" if self.enabled and colour else text


def clean(value: object, limit: int = 500) -> str:
    """One line of printable text: newlines shown as ↵, control characters replaced, long text cut."""
    text = str(value).translate(_CONTROL)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return clean(value, 40)


def _clock(ts: str) -> str:
    try:
        return datetime.fromisoformat(ts).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return clean(ts, 12).ljust(12)


def summarise(topic: str, data: dict[str, Any], style: Style) -> str:
    """The one-line summary of an event's data."""
    if topic == TRADE_UPDATE:
        return _trade(data, style)
    if topic == LOG_STREAM:
        level = clean(data.get("level", "?"), 10)
        source = data.get("source")
        where = f" {style(clean(source, 60), BOLD)}:" if source else ""
        return f"{style(level.ljust(8), LEVEL_COLOURS.get(level))}{where} {clean(data.get('msg', ''))}"
    if topic == NOTIFICATION:
        kind = clean(data.get("type", "?"), 10)
        body = data.get("body")
        text = f"{style(kind.upper().ljust(8), NOTIFY_COLOURS.get(kind))} {clean(data.get('title', ''), 120)}"
        return text + (style(f" — {clean(body, 200)}", DIM) if body else "")
    if topic == SYS_STATUS:
        status = clean(data.get("status", "?"), 12)
        colour = GREEN if status == "RUNNING" else YELLOW
        extra = [f"cpu {_num(data.get('cpu', '?'))}%", f"ram {_num(data.get('ram', '?'))}%"]
        if data.get("lag"):
            extra.append(f"lag {_num(data['lag'])}")
        if "connections" in data:
            extra.append(f"{_num(data['connections'])} client(s)")
        return f"{style(status, colour)} " + " ".join(extra)
    return clean(data)


def _trade(data: dict[str, Any], style: Style) -> str:
    raw_trade = data.get("trade")
    trade: dict[str, Any] = raw_trade if isinstance(raw_trade, dict) else {}
    op = clean(data.get("op", ""), 10)
    side = clean(trade.get("side", "?"), 6)
    price = next((trade[k] for k in ("fill_price", "entry_price") if trade.get(k) is not None), None)
    qty = _num(trade.get("quantity", "?")) + (f"@{_num(price)}" if price is not None else "")
    parts = [f"#{_num(trade.get('id', '?'))}", style(clean(trade.get("symbol", "?"), 20), BOLD),
             style(side, GREEN if side == "BUY" else RED if side == "SELL" else None),
             clean(trade.get("status", "?"), 20), qty]
    if trade.get("exit_price") is not None:
        parts.append(f"exit {_num(trade['exit_price'])}")
    pnl = trade.get("realized_pnl")
    if isinstance(pnl, int | float) and not isinstance(pnl, bool):
        colour = GREEN if pnl > 0 else RED if pnl < 0 else None
        parts.append(style(f"pnl {'+' if pnl > 0 else ''}{_num(pnl)}", colour))
    line = " ".join(parts)
    if op == "DELETE":
        return style("deleted ", YELLOW) + line
    changed = [c for c in data.get("changed") or () if c != "updated_at"]
    if op == "UPDATE" and changed:
        line += style(" (" + ", ".join(clean(c, 30) for c in changed) + ")", DIM)
    return line


def format_event(event: Event, style: Style) -> str:
    """time  topic  seq  summary."""
    seq = "-" if event.seq is None else str(event.seq)
    topic = style(clean(event.topic, 20).ljust(12), TOPIC_COLOURS.get(event.topic))
    return (f"{style(_clock(event.ts), DIM)} {topic} {style(seq.rjust(7), DIM)}  "
            f"{summarise(event.topic, event.data, style)}")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe(item: Connected | Resumed | Reconnecting, url: str) -> str:
    """The stderr line for a connection event."""
    if isinstance(item, Connected):
        verb = "reconnected to" if item.reconnect else "connected to"
        epoch = f", epoch {item.epoch}" if item.epoch else ""
        return f"{verb} {url} (head seq {item.head}{epoch}; topics {', '.join(item.topics)})"
    if isinstance(item, Resumed):
        if item.recovered:
            return f"resumed from seq {item.since}: {_plural(item.count, 'missed event')}"
        return (f"could not recover: {item.reason or 'events after seq ' + str(item.since) + ' are gone'}; "
                f"events after seq {item.since} were missed: reload state (GET /api/snapshot) - "
                "following live events from here")
    what = "connection closed" if item.code is not None else "cannot reach the hub"
    detail = f"{item.code} {item.reason}".strip() if item.code is not None else item.reason
    return f"{what} ({detail}); reconnecting in {item.delay:.1f} s"


def _default_url(settings: Settings) -> str:
    return f"{'https' if settings.tls else 'http'}://{display_host(settings.host)}:{settings.port or 8000}"


def resolve_token(explicit: str | None, url: str, settings: Settings) -> str | Callable[[], str]:
    """--token, else HUB_TOKEN, else a ?token= in the URL (the dashboard link), else a dev token.

    Raises ConfigError when none applies: outside dev mode tail does not mint tokens.
    """
    for candidate in (explicit, os.environ.get("HUB_TOKEN")):
        if candidate and candidate.strip():
            return candidate.strip()
    from_url = parse_qs(urlsplit(url).query).get("token")
    if from_url and from_url[0].strip():
        return from_url[0].strip()
    # Outside dev mode tail mints only with the dev secret of a data dir where `serve --demo`/`--dev` ran.
    dev_file = os.path.lexists(settings.data_dir / DEV_SECRET_FILE)
    dev_data_dir = settings.symmetric and not settings.jwt_secret and dev_file
    if not settings.dev_mode and not dev_data_dir:
        raise ConfigError("no token: pass --token or set HUB_TOKEN "
                          "(mint one with: zepix-hub token --sub NAME)")

    if settings.symmetric and not settings.jwt_secret and not dev_file:
        # Minting would create a new dev secret the running hub does not know.
        raise ConfigError(f"no dev secret in {settings.data_dir}: run tail from the directory where "
                          "`zepix-hub serve` runs (or set HUB_DATA_DIR), or pass --token")
    key = signing_key(settings)
    # Minted per connection, so a tail running for weeks never holds an expired token.
    return lambda: mint(settings, key, subject="dev-tail", ttl_s=DEV_TOKEN_TTL_S)


def filter_args(items: list[str]) -> dict[str, list[str]]:
    """`--filter trade_update.strategy=grid,momentum` (repeatable) -> HubClient's filters."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        if not eq:
            raise ConfigError(f"--filter {item!r}: write <topic>.<field>=value[,value...], "
                              "e.g. trade_update.strategy=grid")
        if name in out:
            raise ConfigError(f"--filter {name} given twice: put its values in one, comma-separated")
        out[name] = values.split(",")
    return out


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow the stream until Ctrl-C (exit 0). Exit 2 for a bad configuration, URL, token or topic."""
    settings = load_settings()
    url = args.url or _default_url(settings)
    try:
        live_url(url)  # a malformed URL is reported as such, before a token is looked for in it
        token = resolve_token(args.token, url, settings)
        topics = parse_topics(args.topics) if args.topics is not None else None
        client = HubClient(url, token, topics=topics, since=args.since, epoch=args.epoch,
                           filters=filter_args(getattr(args, "filter", None) or []))
    except UnknownTopicError as exc:
        raise ConfigError(f"--topics: {exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None  # a filter's message names the filter
    try:
        return asyncio.run(_follow(client, json_mode=bool(args.json)))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _follow)
        return 0
    except BrokenPipeError:
        # The reader went away (tail | head): stop quietly, and keep Python's
        # exit-time flush from failing on the same closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


async def _follow(client: HubClient, *, json_mode: bool) -> int:
    out_style, err_style = Style(use_colour(sys.stdout)), Style(use_colour(sys.stderr))

    def news(text: str, colour: str | None = None) -> None:
        print(err_style(f"-- {text}", colour), file=sys.stderr, flush=True)

    main = asyncio.current_task()
    if main is not None:
        # SIGTERM (systemd, `timeout`) ends tail like Ctrl-C: the socket is closed with a close frame.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with client:
        try:
            async for item in client:
                if isinstance(item, Event):
                    print(item.raw if json_mode else format_event(item, out_style), flush=True)
                elif isinstance(item, Resumed) and not item.recovered:
                    news(describe(item, client.url), YELLOW)
                elif isinstance(item, Reconnecting):
                    news(describe(item, client.url), YELLOW)
                else:
                    news(describe(item, client.url), DIM)
        except HubRejected as exc:
            news(str(exc), RED)
            return 2
    return 0
