"""HubClient: follow a zepix-hub's live stream from Python, with reconnect and resume.

It yields Connected, the missed events and Resumed after every reconnect, then live Events; it retries
what can succeed (with backoff) and raises HubRejected for what cannot (docs/protocol.md,
docs/adr/0003-close-codes.md). Usage and failure rules: class HubClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..backoff import backoff_delay
from ..errors import HubError
from ..filters import FilterError, parse_filters
from ..protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_LOG_RESET,
    CLOSE_UNAUTHORIZED,
    MAX_SEQ,
    PEER_ABNORMAL,
    parse_epoch,
)
from ..topics import ALL_TOPICS, parse_topics

log = logging.getLogger(__name__)

LIVE_PATH: Final = "/ws/live"
#: Close codes that mean "this token or request is wrong": retrying cannot help.
FATAL_CLOSE_CODES: Final = frozenset({CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_BAD_REQUEST})
#: HTTP answers to the handshake worth retrying (a proxy in front of a restarting hub).
RETRYABLE_HTTP: Final = frozenset({408, 425, 429})

_FATAL_ADVICE: Final = {
    CLOSE_UNAUTHORIZED: "get a new token",
    CLOSE_FORBIDDEN: "use a token that allows these topics, or connect from an allowed origin",
    CLOSE_BAD_REQUEST: "check the topics, since and epoch parameters",
}


class HubClientError(HubError):
    """Base class of the errors HubClient raises."""


class HubRejected(HubClientError):
    """The hub (or a proxy in front of it) refused this token or request; the client does not retry.

    `code` is the WebSocket close code (4001, 4003, 4400) or the HTTP status of a refused handshake.
    """

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class HubUnavailable(HubClientError):
    """`max_attempts` consecutive connection attempts failed; `reason` describes the last failure."""

    def __init__(self, attempts: int, reason: str) -> None:
        super().__init__(f"hub unavailable after {attempts} attempt(s): {reason}")
        self.attempts = attempts
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """One event frame. `seq` is None for live-only events (sys_status, connection notifications)."""

    topic: str
    seq: int | None
    ts: str  # ISO-8601 UTC as the hub sent it, e.g. 2026-11-29T12:00:00.123456Z
    data: dict[str, Any]
    raw: str = field(repr=False)  # the frame text exactly as received

    @property
    def time(self) -> datetime:
        """`ts` as an aware datetime; ValueError if the hub sent something else."""
        return datetime.fromisoformat(self.ts)


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection was opened and the hub sent its welcome."""

    session: str
    head: int  # newest seq the hub had dispatched when it accepted us
    oldest: int
    topics: tuple[str, ...]
    resume: bool  # True when we asked to resume (a `Resumed` follows)
    since: int | None  # the since we asked for
    reconnect: bool  # False for the first connection of this client
    epoch: str | None = None  # the epoch of the log `head` belongs to (None from a hub before migration 0005)


@dataclass(frozen=True, slots=True)
class Resumed:
    """The hub finished replaying what we missed (its `replayed` frame).

    recovered=False: events after `since` are no longer available (pruned, too
    many, or the log was reset). Reload state from /api/snapshot and apply only
    events with seq > the snapshot's head.
    """

    since: int
    head: int
    count: int
    recovered: bool
    reason: str | None
    epoch: str | None = None  # the log's epoch as the hub read it for this resume


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection failed or closed; the client waits `delay` seconds and tries again."""

    code: int | None  # the close code, or None when no connection could be opened
    reason: str
    failures: int  # consecutive failed attempts so far; 0 when a connection that had worked a while ended
    delay: float


HubItem = Event | Connected | Resumed | Reconnecting


def live_url(url: str) -> str:
    """Normalise a hub URL (http, https, ws or wss; with or without /ws/live) to its ws(s)://.../ws/live.

    A path prefix (a hub behind a reverse proxy at /hub/) is kept; query and fragment are dropped.
    Raises ValueError for any other scheme, a missing host or a bad port.
    """
    shown = url.partition("?")[0].partition("#")[0]  # never the query: a dashboard link carries ?token=
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # parsed now, not when websockets connects
    except ValueError:
        raise ValueError(f"hub URL {shown!r} has a malformed host or port (port must be 1-65535)") from None
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"hub URL must look like http://HOST:PORT or ws://HOST:PORT/ws/live, not {shown!r}")
    if port == 0:
        raise ValueError(f"hub URL {shown!r}: port must be 1-65535, not 0")
    path = parts.path.rstrip("/")
    if not path.endswith(LIVE_PATH):
        path += LIVE_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _check_token(token: str) -> None:
    """A token goes into an HTTP header: whitespace or a control character there can never be accepted,
    and the error websockets raises for it would quote the whole header, token included."""
    if not token.strip():
        raise ValueError("token must not be empty")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("token must be printable ASCII without spaces, tabs or newlines (check how it was copied)")


class HubClient:
    """Async iterator over a hub's live stream that reconnects and resumes by seq.

        async with HubClient("http://127.0.0.1:8000", token, topics=["trade_update"]) as client:
            async for item in client:
                if isinstance(item, Event):
                    apply(item)
                elif isinstance(item, Resumed) and not item.recovered:
                    reload_state()  # GET /api/snapshot, then keep applying events with seq > its head

    What the iterator yields, in order, for every connection it makes:
    `Connected` (the welcome), then for a resume the missed events and one
    `Resumed` (the hub's `replayed` frame), then live `Event`s; when the
    connection drops, one `Reconnecting` before it waits and tries again.

    Failures:
    - closes 4001 (bad or expired token), 4003 (topic or origin not allowed) and
      4400 (bad query), and an HTTP 4xx answer to the handshake (wrong URL, a proxy
      refusing the token), raise `HubRejected`: retrying the same request cannot
      succeed, so the client does not retry;
    - a close 4410 (the hub found its event log restored to an earlier point)
      reconnects without `since` and then yields `Resumed(recovered=False)`: the
      seqs we hold may name other events now, so reload state from /api/snapshot;
    - every resume sends the log's `epoch` with `since` (the one the hub gave with
      the seqs we hold: welcome, replayed, or the constructor's `epoch`): after a
      restore fence or a rebuilt database the hub answers `Resumed(recovered=False,
      reason="event log replaced")` instead of replaying another log;
    - every other close (1001 hub restarting, 1006 connection lost, 1011, 1012,
      1013 database unavailable, 4008 too slow, ...), refused or timed-out
      connections and 5xx handshake answers are retried forever (or `max_attempts`
      consecutive times, then `HubUnavailable`), with capped exponential backoff
      and jitter, resuming with `since=<last seq>`: no event is lost or repeated;
    - the socket is closed on every path: normal end, exception, cancellation,
      `aclose()` / leaving `async with`, and a consumer that breaks out of the
      loop (the generator is finalised by the event loop right after the break;
      use `async with` for a deterministic close).

    `url`: the hub (http(s)://HOST:PORT or ws(s)://HOST:PORT/ws/live).
    `token`: a JWT, or a function returning one, called before every connection
    (so a long-running client can hand out fresh tokens). Sent as a Bearer header.
    `topics`: topic names (default: everything the token allows).
    `since`: resume after this seq on the first connection (default: start live).
    `epoch`: the log's epoch that goes with `since` (from the snapshot or the
    response `since` came from); a resume into another log then reloads instead
    of replaying. Without it the hub takes `since` at its word, as before.
    `filters`: row filters, `{"trade_update.strategy": ["grid"], "log_stream.level": ["WARNING"]}`
    (docs/protocol.md, "Row filters"), sent on every connection; resumes replay only matching events.

    Raises ValueError (bad url, since or filter) or UnknownTopicError (bad topic) at
    construction; while iterating, HubRejected or HubUnavailable (see the module docstring).
    """

    def __init__(self, url: str, token: str | Callable[[], str], *, topics: Iterable[str] | None = None,
                 since: int | None = None, epoch: str | None = None,
                 filters: Mapping[str, Iterable[str]] | None = None, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0,
                 max_attempts: int | None = None, stable_after: float = 5.0, open_timeout: float = 10.0,
                 ping_interval: float | None = 20.0, close_timeout: float = 2.0,
                 max_frame_bytes: int = 16 * 1024 * 1024) -> None:
        self.url = live_url(url)
        if isinstance(token, str):
            _check_token(token)
        if since is not None and (isinstance(since, bool) or not 0 <= since <= MAX_SEQ):
            raise ValueError(f"since must be a non-negative integer, not {since!r}")
        if epoch is not None:
            if since is None:
                raise ValueError("epoch goes with since: it names the log that seq belongs to")
            epoch = parse_epoch(epoch)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None to retry forever)")
        self.topics: frozenset[str] | None = parse_topics(topics) if topics is not None else None
        self.filters: dict[str, list[str]] = _check_filters(filters or {}, self.topics)
        self._token = token
        self._cursor: int | None = since
        self._epoch: str | None = epoch  # the log _cursor belongs to; None: unknown (sent without one)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_attempts = max_attempts
        self._stable_after = stable_after
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._max_frame_bytes = max_frame_bytes
        self._rng = random.Random()
        self._sockets: set[ClientConnection] = set()
        self._closing = asyncio.Event()
        self._connections = 0
        self._reset_since: int | None = None  # after a 4410: the cursor we gave up, reported once connected

    @property
    def last_seq(self) -> int | None:
        """The seq the next connection resumes from: the last event yielded, or the head the hub
        reported (nothing on our topics was missed up to there); None before the first welcome."""
        return self._cursor

    @property
    def epoch(self) -> str | None:
        """The epoch of the log `last_seq` belongs to, sent with it on the next resume; None if unknown."""
        return self._epoch

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the open socket (if any) and end every iteration; idempotent, callable from another task."""
        self._closing.set()
        for ws in list(self._sockets):
            await _close_quietly(ws)

    def __aiter__(self) -> AsyncIterator[HubItem]:
        # A fresh generator per `async for`, referenced only by the loop: when the
        # consumer breaks out, it is dropped at once and the event loop's
        # finaliser closes it, which runs the `finally` that closes the socket.
        return self._follow()

    def connect_url(self) -> str:
        """The URL of the next connection attempt (topics and since filled in; no token)."""
        query: dict[str, str] = {}
        if self.topics is not None:
            query["topics"] = ",".join(sorted(self.topics))
        for name, values in sorted(self.filters.items()):
            query[name] = ",".join(values)
        if self._cursor is not None:
            query["since"] = str(self._cursor)
            if self._epoch is not None:
                query["epoch"] = self._epoch
        return self.url + ("?" + urlencode(query, safe=",") if query else "")

    async def _open(self) -> ClientConnection:
        token = self._token() if callable(self._token) else self._token
        if callable(self._token):
            try:
                _check_token(token)
            except ValueError as exc:
                raise HubRejected(0, "token", f"the token function returned an unusable token: {exc}") from None
        return await connect(
            self.connect_url(), additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=self._open_timeout, ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval, close_timeout=self._close_timeout,
            max_size=self._max_frame_bytes, user_agent_header="zepix-hub-client",
        )

    async def _follow(self) -> AsyncIterator[HubItem]:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing.is_set():
            code: int | None = None
            reason = ""
            stable = False
            try:
                ws = await self._open()
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in RETRYABLE_HTTP:
                    raise HubRejected(status, f"HTTP {status}", (
                        f"{self.url} answered the WebSocket handshake with HTTP {status}: "
                        "is this the hub's URL, and does a proxy in front of it accept the token?")) from None
                reason = f"HTTP {status} from {self.url}"
            except ssl.SSLCertVerificationError as exc:
                raise HubRejected(0, "TLS", f"cannot verify the TLS certificate of {self.url}: {exc}"
                                  ) from None
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = _describe(exc)
            else:
                self._sockets.add(ws)
                if self._closing.is_set():  # aclose() ran while we connected: it could not see this socket
                    self._sockets.discard(ws)
                    await _close_quietly(ws)
                    return
                opened = loop.time()
                asked_since = self._cursor
                welcome_head: int | None = None
                welcome_epoch: str | None = None
                refusal: str | None = None  # the error frame a refusing hub sends before closing
                try:
                    while True:
                        try:
                            raw = await ws.recv()
                        except ConnectionClosed as exc:
                            code, reason = _close_of(exc)
                            break
                        if isinstance(raw, bytes):
                            log.warning("ignoring a binary frame from %s", self.url)
                            continue
                        frame = _parse(raw)
                        if frame is None:
                            log.warning("ignoring a frame that is not a JSON object: %.80r", raw)
                            continue
                        kind = frame.get("type")
                        item: HubItem | None = None
                        if kind == "event":
                            item = self._event(frame, raw)
                        elif kind == "welcome":
                            welcome_head = _as_int(frame.get("head"), 0)
                            welcome_epoch = _as_epoch(frame.get("epoch"))
                            if self._cursor is None:
                                # Live frames start after this head: nothing on our topics is missing below.
                                self._cursor, self._epoch = welcome_head, welcome_epoch
                            item = Connected(
                                session=str(frame.get("session", "")), head=welcome_head,
                                oldest=_as_int(frame.get("oldest"), 0),
                                topics=tuple(str(t) for t in frame.get("topics") or ()),
                                resume=bool(frame.get("resume")), since=asked_since,
                                reconnect=self._connections > 0, epoch=welcome_epoch)
                            self._connections += 1
                            if self._reset_since is not None and asked_since is None:
                                yield item
                                item = Resumed(since=self._reset_since, head=welcome_head, count=0,
                                               recovered=False, reason="event log reset", epoch=welcome_epoch)
                                self._reset_since = None
                        elif kind == "replayed":
                            item = self._replayed(frame, welcome_head, welcome_epoch)
                        elif kind == "error":
                            refusal = str(frame.get("message") or frame.get("code") or "")
                            log.warning("hub error frame: %s", refusal)
                        if item is not None:
                            yield item
                finally:
                    self._sockets.discard(ws)
                    await _close_quietly(ws)
                stable = loop.time() - opened >= self._stable_after
                if code in FATAL_CLOSE_CODES:
                    assert code is not None
                    detail = refusal or reason or "no reason given"
                    advice = _FATAL_ADVICE[code]
                    message = f"the hub refused the connection ({code} {detail}): {advice}"
                    raise HubRejected(code, detail, message)
            if self._closing.is_set():
                return
            if code == CLOSE_LOG_RESET and self._cursor is not None:
                # Resuming could look successful and skip events that reuse seqs we saw: start live instead.
                self._reset_since, self._cursor, self._epoch = self._cursor, None, None
            failures = 0 if stable else failures + 1
            if self._max_attempts is not None and failures >= self._max_attempts:
                raise HubUnavailable(failures, _reason_text(code, reason))
            delay = backoff_delay(failures, self._backoff_base, self._backoff_cap, self._rng)
            log.debug("hub connection ended (%s); reconnecting in %.1f s", _reason_text(code, reason), delay)
            yield Reconnecting(code=code, reason=reason, failures=failures, delay=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)

    def _event(self, frame: dict[str, Any], raw: str) -> Event | None:
        seq = frame.get("seq")
        if seq is not None:
            if not isinstance(seq, int) or isinstance(seq, bool):
                log.warning("ignoring an event with a malformed seq: %.80r", raw)
                return None
            if self._cursor is not None and seq <= self._cursor:
                log.debug("dropping duplicate event seq %d (last %d)", seq, self._cursor)
                return None
            self._cursor = seq
        data = frame.get("data")
        return Event(topic=str(frame.get("topic", "")), seq=seq, ts=str(frame.get("ts", "")),
                     data=data if isinstance(data, dict) else {}, raw=raw)

    def _replayed(self, frame: dict[str, Any], welcome_head: int | None, welcome_epoch: str | None) -> Resumed:
        since = _as_int(frame.get("since"), 0)
        head = _as_int(frame.get("head"), 0)
        recovered = frame.get("recovered") is True
        epoch = _as_epoch(frame.get("epoch"))
        if recovered:
            # The hub delivered everything on our topics up to `head`, from the log `epoch` names.
            self._cursor = max(self._cursor or 0, head)
            self._epoch = epoch or self._epoch
        elif welcome_head is not None:
            # Nothing was replayed; live frames continue after the welcome's head, which may be
            # below our old position (a reset log), so the duplicate filter restarts from there.
            self._cursor, self._epoch = welcome_head, welcome_epoch
        reason = frame.get("reason")
        return Resumed(since=since, head=head, count=_as_int(frame.get("count"), 0), recovered=recovered,
                       reason=str(reason) if reason is not None else None, epoch=epoch)


def _check_filters(filters: Mapping[str, Iterable[str]], topics: frozenset[str] | None) -> dict[str, list[str]]:
    """The hub's own rules, checked up front (a bad filter would be refused 4400 on every connection)."""
    listed = {name: [values] if isinstance(values, str) else list(values) for name, values in filters.items()}
    if any("," in v for values in listed.values() for v in values):
        raise ValueError("a filter value cannot contain a comma (the URL form separates values with commas)")
    try:
        parse_filters(listed, topics if topics is not None else ALL_TOPICS)
    except FilterError as exc:
        raise ValueError(str(exc)) from None
    return listed


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _as_int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _as_epoch(value: object) -> str | None:
    """An epoch from a frame; None from a hub that sends none (before migration 0005) or a malformed one."""
    if not isinstance(value, str):
        return None
    try:
        return parse_epoch(value)
    except ValueError:
        return None


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return PEER_ABNORMAL, "connection lost without a close frame"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out opening the connection"
    return text


def _reason_text(code: int | None, reason: str) -> str:
    if code is None:
        return reason or "could not connect"
    return f"{code} {reason}".strip()


async def _close_quietly(ws: ClientConnection) -> None:
    # Closing a socket whose peer is gone can fail in assorted ways; the socket is released regardless.
    with contextlib.suppress(Exception):
        await ws.close()


__all__ = [
    "Connected", "Event", "HubClient", "HubClientError", "HubItem", "HubRejected", "HubUnavailable",
    "Reconnecting", "Resumed", "backoff_delay", "live_url",
]
