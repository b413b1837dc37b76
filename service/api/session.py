"""One WebSocket client's life on /ws/live: handshake, resume, client messages, token expiry.

The session reads the socket and owns the expiry timer; the ConnectionManager's sender task is the only
writer after the welcome. Whatever a client sends ends in an error frame or a documented close code
(docs/protocol.md, docs/adr/0003-close-codes.md), never an exception that reaches uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import __version__
from ..errors import AuthError, ResumeGone
from ..filters import FilterError, RowFilter, Scope, effective, filters_from_query, narrow_scope, parse_filters
from ..hub.connections import Client
from ..hub.frames import PONG, control, error
from ..protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    parse_epoch,
    parse_seq,
)
from ..store.database import DATABASE_UNAVAILABLE
from ..topics import PERSISTED_TOPICS, SYS_STATUS, parse_topics
from .asgi import abort_of, direct_of
from .auth import TOPIC_ERRORS, Principal, topic_refusal
from .runtime import Hub

log = logging.getLogger(__name__)



def token_from_handshake(ws: WebSocket) -> tuple[str | None, bool]:
    """The JWT, from ?token=, then Authorization: Bearer, then the ["bearer", JWT] subprotocol pair.

    Returns (token, offered_bearer_subprotocol).
    """
    offered = list(ws.scope.get("subprotocols") or [])
    bearer = "bearer" in offered
    token = ws.query_params.get("token")
    if token:
        return token, bearer
    header = ws.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip(), bearer
    if bearer:
        rest = [p for p in offered if p != "bearer"]
        return (rest[0] if rest else None), True
    return None, False


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """No Origin (scripts) is fine; a browser Origin must be listed, or be the hub's own when none are."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/") in {a.rstrip("/") for a in allowed}
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # e.g. "http://[": not a URL, so not the hub's own origin
        return False
    return bool(host) and netloc.lower() == (host or "").lower()


class _RateLimit:
    """Token bucket: `rate` messages a second, bursts up to `burst`. `clock` is for tests that step time."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self.tokens, self.stamp = float(burst), clock()

    def allow(self) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Session:
    def __init__(self, ws: WebSocket, hub: Hub) -> None:
        self.ws = ws
        self.hub = hub
        self.principal: Principal | None = None
        self.client: Client | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._limit = _RateLimit(hub.settings.client_rate, hub.settings.client_burst)
        self._peer_code: int | None = None  # the client's close code, when the client closed first
        self._slot: str | None = None  # the subject whose connection slot this session holds
        self.requested: RowFilter | None = None  # the client's own filters, before the scope
        self.scope: Scope | None = None  # the token's row scope; a refresh only ever narrows it

    async def run(self) -> None:
        try:
            if await self._handshake():
                await self._receive_loop()
        except WebSocketDisconnect as exc:
            self._peer_code = exc.code  # the client went away; nothing to answer
        except OSError:
            pass  # the client went away; nothing to answer
        except RuntimeError as exc:  # Starlette: a send or receive after the socket closed
            log.debug("session ended: %s", exc)
        finally:
            if self._slot is not None:  # first, before any await: a cancellation below must not leak it
                self.hub.subject_slots.give_back(self._slot)
                self._slot = None
            if self._expiry is not None:
                self._expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._expiry
            if self.client is not None:
                await self.hub.manager.unregister(self.client)
                # Refusals at connect are counted in _refuse; this counts every close after the welcome:
                # the hub's own (1001, 1008, 1009, 1013, 4001 on expiry, 4008), else the client's.
                code = self.client.close_code if self.client.close_code is not None else self._peer_code
                if code is not None:
                    self.hub.metrics.closed(code)
                log.info("client %s disconnected (close code %s)", self.client.id, code,
                         extra={"conn": self.client.id})

    async def _refuse(self, code: int, reason: str, frame: str | None = None) -> bool:
        if frame is not None:
            await self.ws.send_text(frame)
        self.hub.metrics.closed(code)
        await self.ws.close(code, reason)
        return False

    async def _handshake(self) -> bool:
        ws, hub, settings = self.ws, self.hub, self.hub.settings
        token, bearer = token_from_handshake(ws)
        await ws.accept(subprotocol="bearer" if bearer else None)
        if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins):
            return await self._refuse(CLOSE_FORBIDDEN, "origin not allowed")
        try:
            principal = hub.verifier.verify(token)
        except AuthError as exc:
            return await self._refuse(CLOSE_UNAUTHORIZED, str(exc))
        self.principal = principal
        try:
            raw_topics = ws.query_params.get("topics")
            topics = parse_topics(raw_topics) if raw_topics is not None else principal.topics
            principal.check_topics(topics)
            raw_since = ws.query_params.get("since")
            since = parse_seq(raw_since) if raw_since is not None else None
        except TOPIC_ERRORS as exc:
            refusal = topic_refusal(exc)
            return await self._refuse(refusal.close_code, refusal.reason, error(refusal.code, str(exc)).text)
        except ValueError as exc:
            return await self._refuse(CLOSE_BAD_REQUEST, "invalid since", error("invalid_since", str(exc)).text)
        try:
            self.requested = parse_filters(filters_from_query(ws.query_params.multi_items()), topics)
        except FilterError as exc:
            return await self._refuse(CLOSE_BAD_REQUEST, "invalid filter", error("invalid_filter", str(exc)).text)
        self.scope = principal.scope
        row_filter = effective(self.requested, self.scope, topics)
        raw_epoch = ws.query_params.get("epoch")
        epoch: str | None = None
        if raw_epoch is not None:
            try:
                if since is None:
                    raise ValueError("epoch goes with since (resume with since=<seq>&epoch=<epoch>); "
                                     "a connection without since starts live and needs none")
                epoch = parse_epoch(raw_epoch)
            except ValueError as exc:
                return await self._refuse(CLOSE_BAD_REQUEST, "invalid epoch", error("invalid_epoch", str(exc)).text)

        if not hub.subject_slots.take(principal.subject):
            hub.metrics.refusal("subject_limit")
            log.warning("refused a connection for sub=%s: it already holds %d (HUB_MAX_CONNECTIONS_PER_SUBJECT)",
                        principal.subject, hub.subject_slots.cap)
            return await self._refuse(CLOSE_TRY_AGAIN, "too many connections",
                                      error("too_many_connections",
                                            f"this token's subject already holds {hub.subject_slots.cap} "
                                            "connections; close one or retry later").text)
        # From here to register() there is no await: the slot and the registration cannot be torn apart,
        # and run()'s finally gives the slot back on every path after this line.
        self._slot = principal.subject
        head, log_epoch = hub.listener.last_seq, hub.listener.epoch
        client = Client(
            settings, send=ws.send_text, close=ws.close, abort=abort_of(ws.scope), direct=direct_of(ws.scope),
            topics=topics, delivered=head, row_filter=row_filter,
        )
        if client.direct is None:
            hub.direct_fallback()
        welcome = control(
            "welcome", session=client.id, sub=principal.subject, topics=sorted(topics), head=head,
            epoch=log_epoch, oldest=hub.oldest_hint, heartbeat_s=settings.heartbeat_s, resume=since is not None,
            expires_at=int(principal.expires_at), server=f"zepix-hub/{__version__}",
            filters=row_filter.as_json() if row_filter is not None else {},
        )
        client.prelude = lambda c: self._prelude(c, since, epoch, welcome.text)
        self.client = client
        # No await between reading head and registering: an event dispatched meanwhile would reach nobody.
        # From here on live frames queue up; the sender task writes the welcome (and replay) first.
        hub.manager.register(client)
        direct = client.direct is not None and client.direct.usable()
        hub.metrics.writers.labels(writer="direct" if direct else "asgi").inc()
        self._arm_expiry(principal)
        log.info("client %s connected sub=%s topics=%s resume=%s", client.id, principal.subject,
                 ",".join(sorted(topics)), since is not None, extra={"conn": client.id})
        return True

    async def _prelude(self, client: Client, since: int | None, epoch: str | None, welcome: str) -> None:
        """Runs in the sender task before live frames: welcome, latest sys_status, then the resume replay.

        The replay is checked against the client's epoch (or, for a client that sent none, the epoch of
        the log when the replay began) in every page's snapshot: it comes from one log, the one named in
        the `replayed` frame, however long the listener has been away or wherever it stands. If that is
        not the log the listener follows, the listener finds out on its next read and closes us 4410.
        """
        hub = self.hub
        await client.send_now(welcome)
        latest = hub.heartbeat.latest
        if latest is not None and SYS_STATUS in client.topics:
            await client.send_now(latest.text)
        if since is None:
            return
        live_from = client.delivered  # the listener's head at registration: live frames start after it
        # Until the replay hands over more, the client holds exactly up to `since`: a 4008 or 1013
        # cutting the replay short must name that, not the listener's head (which would skip events).
        client.delivered = since
        persisted = client.topics & PERSISTED_TOPICS
        count = 0
        try:
            pos = await hub.store.position()
            cap = hub.settings.resume_cap
            replaced = epoch is not None and epoch != pos.epoch
            gone = replaced or since < pos.floor or since > pos.head
            too_many = (not gone and bool(persisted)
                        and await hub.store.count_after(since, persisted, cap + 1) > cap)
            if gone or too_many:
                # The client reloads a snapshot (head >= pos.head) and applies live frames after it: frames
                # up to pos.head that the listener dispatches only now would be noise, so skip them.
                client.delivered = max(live_from, pos.head)
                hub.metrics.resumed(False, 0)
                reason = ("event log replaced" if replaced else
                          "too many missed events" if too_many else "since not retained")
                await client.send_now(control("replayed", since=since, head=pos.head, count=0, recovered=False,
                                              reason=reason, epoch=pos.epoch).text)
                return
            if persisted:
                page = hub.settings.replay_page
                batch: list[str] = []
                last = client.delivered
                async for ev in hub.store.iter_after(since, persisted, page, epoch=pos.epoch):
                    if client.close_request is not None:
                        return  # closing (4001, 1008, 4008, 1001...): the sender closes once we return
                    # Topics and filter read per event: an unsubscribe, subscribe or refresh may change them
                    # meanwhile, and the scope lives in the filter of the client's current topics only.
                    if ev.topic not in client.topics:
                        continue
                    flt = client.row_filter
                    if flt is not None and not flt.matches_frame(ev.topic, ev.frame):
                        continue  # seqs simply skip what the filter excludes
                    batch.append(ev.frame)
                    last = ev.seq
                    count += 1
                    if len(batch) >= page:  # a page per write, not an await per event
                        await client.send_many(batch)
                        client.delivered, batch = last, []
                if client.close_request is not None:
                    return
                if batch:
                    await client.send_many(batch)
                    client.delivered = last
            if count == 0:
                client.delivered = max(live_from, since)
        except ResumeGone as exc:  # pruned or fenced while we read
            client.delivered = max(client.delivered if count else live_from, exc.head)
            hub.metrics.resumed(False, count)
            reason = "event log replaced during replay" if exc.replaced else "pruned during replay"
            await client.send_now(control("replayed", since=since, head=exc.head, count=count,
                                          recovered=False, reason=reason, epoch=exc.epoch).text)
            return
        except DATABASE_UNAVAILABLE as exc:
            client.request_close(CLOSE_TRY_AGAIN, f"database unavailable; retry with since={client.delivered}")
            log.warning("client %s resume failed: %s", client.id, exc, extra={"conn": client.id})
            return
        hub.metrics.resumed(True, count)
        await client.send_now(control("replayed", since=since, head=max(client.delivered, since), count=count,
                                      recovered=True, epoch=pos.epoch).text)

    def _arm_expiry(self, principal: Principal) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.create_task(self._expire_at(principal.expires_at), name="hub-token-expiry")

    async def _expire_at(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        if self.client is not None:
            self.client.request_close(CLOSE_UNAUTHORIZED, "token expired")

    async def _receive_loop(self) -> None:
        ws, client = self.ws, self.client
        assert client is not None
        max_bytes = self.hub.settings.max_frame_bytes
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                self._peer_code = int(message.get("code", 1005))
                return
            if not self._limit.allow():
                client.request_close(CLOSE_POLICY, "rate limit exceeded")
                continue
            text = message.get("text")
            if text is None:
                client.offer(error("binary_not_supported", "send JSON text frames"))
                continue
            if len(text) > max_bytes or len(text.encode()) > max_bytes:
                client.request_close(CLOSE_TOO_BIG, "message too big")
                continue
            try:
                self._handle(text)
            except Exception:  # a bug meets one client's message: close that client (1011), serve the rest
                log.exception("client %s: handling a message failed", client.id, extra={"conn": client.id})
                client.request_close(CLOSE_INTERNAL_ERROR, f"hub error; resume with since={client.delivered}")

    def _handle(self, text: str) -> None:
        client = self.client
        assert client is not None and self.principal is not None
        try:
            msg: Any = json.loads(text)
        except (ValueError, RecursionError):
            client.offer(error("invalid_json", "message is not valid JSON"))
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            client.offer(error("invalid_message", 'a message is a JSON object with a string "type"'))
            return
        kind = msg["type"]
        if kind == "ping":
            client.offer(PONG)
        elif kind in ("subscribe", "unsubscribe"):
            self._change_topics(kind, msg.get("topics"), msg.get("filters"))
        elif kind == "refresh":
            self._refresh(msg.get("token"))
        else:
            shown = kind if len(kind) <= 32 else kind[:32] + "..."
            client.offer(error("unknown_type", f"unknown message type {shown!r}; "
                                               "expected ping, subscribe, unsubscribe or refresh"))

    def _change_topics(self, kind: str, raw: object, raw_filters: object = None) -> None:
        client, principal = self.client, self.principal
        assert client is not None and principal is not None
        if not isinstance(raw, list):
            client.offer(error("invalid_message", f'{kind} needs "topics": a list of topic names'))
            return
        try:
            wanted = parse_topics(raw)
            if kind == "subscribe":
                principal.check_topics(wanted)
        except TOPIC_ERRORS as exc:
            client.offer(error(topic_refusal(exc).code, str(exc)))
            return
        topics = client.topics | wanted if kind == "subscribe" else client.topics - wanted
        if kind == "subscribe":  # a subscribe replaces the filters as a whole
            if raw_filters is not None and not isinstance(raw_filters, dict):
                client.offer(error("invalid_filter", '"filters" is an object: {"<topic>.<field>": [values]}'))
                return
            try:
                requested = parse_filters(raw_filters or {}, topics)
            except FilterError as exc:
                client.offer(error("invalid_filter", str(exc)))
                return
        else:
            requested = self.requested.only(topics) if self.requested is not None else None
        self.requested = requested
        row_filter = effective(requested, self.scope, topics)
        self.hub.manager.set_topics(client, topics, row_filter)
        client.offer(control("topics", topics=sorted(topics),
                             filters=row_filter.as_json() if row_filter is not None else {}))

    def _refresh(self, token: object) -> None:
        client, principal = self.client, self.principal
        assert client is not None and principal is not None
        if not isinstance(token, str):
            client.offer(error("invalid_message", 'refresh needs "token": a string'))
            return
        try:
            fresh = self.hub.verifier.verify(token)
        except AuthError as exc:
            client.offer(error("refresh_rejected", str(exc)))
            return
        if fresh.subject != principal.subject:
            client.offer(error("refresh_rejected", "the new token is for another subject"))
            return
        self.principal = fresh
        narrowed = client.topics & fresh.topics
        # Like topics, the scope only narrows: a refreshed token never shows a row the session could not see.
        self.scope = narrow_scope(self.scope, fresh.scope)
        if self.requested is not None:
            self.requested = self.requested.only(narrowed)
        row_filter = effective(self.requested, self.scope, narrowed)
        self.hub.manager.set_topics(client, narrowed, row_filter)
        self._arm_expiry(fresh)
        client.offer(control("refreshed", expires_at=int(fresh.expires_at), topics=sorted(narrowed),
                             filters=row_filter.as_json() if row_filter is not None else {}))

