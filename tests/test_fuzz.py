"""Fuzzing /ws/live: whatever a client sends, the answer is documented and nobody else notices.

Hypothesis draws lists of frames (random text, random JSON, protocol-shaped
objects with junk fields, binary frames, oversize frames, WebSocket pings) and
sends them over a real WebSocket to a real in-process hub. The hub runs on its
own thread with its own event loop, so each example is a plain synchronous
round trip and hypothesis can shrink a failure to the smallest frame list.

For every frame a small model of docs/protocol.md predicts the one reply (an
error code, pong, topics, refreshed) or the close code (1009). Meanwhile an
observer client must receive every event a writer commits, in order, and no
ERROR or exception may reach any log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from service.topics import ALL_TOPICS
from tests.hubs import RunningHub, connect, recv_json, running_hub

MAX_EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "300"))
MAX_FRAME_BYTES = 64 * 1024  # the hub's default max_frame_bytes
ALLOWED = frozenset({"log_stream", "notification", "sys_status"})  # the fuzz client's token: no trade_update
NARROW = frozenset({"log_stream", "sys_status"})  # a refresh token that narrows it further
HUB_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "service", "asyncio", "websockets")


# -- the hub on its own thread -----------------------------------------------------------------------------

class HubThread:
    """An in-process hub whose event loop runs on a thread, so synchronous hypothesis examples can talk to it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop: asyncio.AbstractEventLoop | None = None
        self._running: RunningHub | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="fuzz-hub", daemon=True)

    @property
    def running(self) -> RunningHub:
        assert self._running is not None
        return self._running

    async def _main(self) -> None:
        try:
            # The rate limiter would cut the fuzz short: it has its own test in test_live.
            async with running_hub(self.dsn, client_rate=100_000, client_burst=100_000) as hub:
                self._running, self.loop, self._stop = hub, asyncio.get_running_loop(), asyncio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> HubThread:
        self._thread.start()
        assert self._ready.wait(60), "hub thread did not start"
        if self._error is not None:
            raise self._error
        return self

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "hub thread did not stop"
        if self._error is not None:
            raise self._error


class Records(logging.Handler):
    """Every record at WARNING or above from the hub's loggers, once each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: dict[int, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records[id(record)] = record

    def bad(self) -> list[str]:
        return [f"{r.name} {r.levelname}: {r.getMessage()}" + (" (with exception)" if r.exc_info else "")
                for r in self.records.values() if r.levelno >= logging.ERROR or r.exc_info]


# -- the observer and the writer (run on the hub's loop) -----------------------------------------------------

@dataclass
class Observed:
    seqs: list[int] = field(default_factory=list)
    heartbeats: int = 0
    target: int | None = None  # set from the test thread once the writer has stopped
    stop_writing: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)


async def _observe(url: str, box: Observed) -> None:
    async with await connect(url) as ws:
        await recv_json(ws)
        box.connected.set()
        # sys_status beats every 0.5 s keep this loop waking up to see the target once it is set.
        while box.target is None or not box.seqs or box.seqs[-1] < box.target:
            frame = await recv_json(ws, 30)
            if frame.get("type") != "event":
                raise AssertionError(f"observer got a non-event frame: {frame}")
            if frame["seq"] is not None:
                box.seqs.append(frame["seq"])
            elif frame["topic"] == "sys_status":
                box.heartbeats += 1


async def _write(dsn: str, box: Observed) -> int:
    conn = await asyncpg.connect(dsn)
    n = 0
    try:
        while not box.stop_writing.is_set():
            n += 1
            if n % 5 == 0:
                await conn.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
            else:
                await conn.execute("INSERT INTO logs (level, msg) VALUES ($1, $2)",
                                   "ERROR" if n % 7 == 0 else "INFO", f"fuzz-time line {n}")
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return n


async def _truth(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT seq FROM events WHERE topic IN ('log_stream', 'trade_update') ORDER BY seq")]
    finally:
        await conn.close()


# -- what the protocol promises for one client message -----------------------------------------------------

@dataclass
class Model:
    """The fuzz client's state as the hub should see it: subscribed and allowed topics."""

    topics: frozenset[str]
    allowed: frozenset[str]
    tokens: dict[str, frozenset[str]]  # refresh tokens that must be accepted -> their topics


def expected(kind: str, payload: str | bytes, model: Model) -> tuple[str, Any]:
    """("error", code) | ("pong", None) | ("topics", [...]) | ("refreshed", [...]) | ("close", code)."""
    if kind == "binary":
        return "error", "binary_not_supported"
    assert isinstance(payload, str)
    if len(payload) > MAX_FRAME_BYTES or len(payload.encode()) > MAX_FRAME_BYTES:
        return "close", 1009
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError):
        return "error", "invalid_json"
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return "error", "invalid_message"
    if msg["type"] == "ping":
        return "pong", None
    if msg["type"] in ("subscribe", "unsubscribe"):
        raw = msg.get("topics")
        if not isinstance(raw, list):
            return "error", "invalid_message"
        if not all(isinstance(n, str) for n in raw):
            return "error", "unknown_topic"
        names = {n.strip() for n in raw if n.strip()}
        if not names or not names <= ALL_TOPICS:
            return "error", "unknown_topic"
        if msg["type"] == "subscribe":
            if not names <= model.allowed:
                return "error", "forbidden_topic"
            model.topics |= names
        else:
            model.topics -= names
        return "topics", sorted(model.topics)
    if msg["type"] == "refresh":
        token = msg.get("token")
        if not isinstance(token, str):
            return "error", "invalid_message"
        if token not in model.tokens:
            return "error", "refresh_rejected"
        model.allowed = model.tokens[token]
        model.topics &= model.allowed
        return "refreshed", sorted(model.topics)
    return "error", "unknown_type"


# -- strategies ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
topic_names = st.sampled_from([*sorted(ALL_TOPICS), "weather", "", " log_stream ", "LOG_STREAM",
                               "log_stream,notification", "\u2003notification\n"]) | st.text(max_size=12)


def frames(tokens: list[str]) -> st.SearchStrategy[tuple[str, str | bytes]]:
    token_values = st.sampled_from(tokens) | st.text(max_size=60) | json_values
    messages = st.fixed_dictionaries(
        {"type": st.sampled_from(["ping", "subscribe", "unsubscribe", "refresh"]) | st.text(max_size=40)
         | json_values},
        optional={"topics": st.lists(topic_names, max_size=4) | json_values, "token": token_values,
                  "junk": json_values},
    )
    # Well-formed messages too, so the fuzz also walks the paths that change the session's state.
    valid = st.one_of(
        st.just({"type": "ping"}),
        st.builds(lambda kind, names: {"type": kind, "topics": names}, st.sampled_from(["subscribe", "unsubscribe"]),
                  st.lists(st.sampled_from(sorted(ALL_TOPICS)), min_size=1, max_size=3)),
        st.sampled_from(tokens).map(lambda t: {"type": "refresh", "token": t}),
    )
    return st.one_of(
        valid.map(lambda m: ("text", json.dumps(m))),
        messages.map(lambda m: ("text", json.dumps(m))),
        messages.map(lambda m: ("text", json.dumps(m, ensure_ascii=False, indent=1))),
        json_values.map(lambda v: ("text", json.dumps(v))),
        st.text(max_size=80).map(lambda t: ("text", t)),
        # Nesting far from the recursion limit on either side: near it, the outcome depends on stack depth.
        (st.integers(1, 300) | st.integers(5000, 30000)).map(lambda d: ("text", "[" * d + "]" * (d % 2))),
        st.binary(max_size=64).map(lambda b: ("binary", b)),
        st.just(("text", '{"type": "ping"}')),
        st.just(("wsping", b"")),
    )


oversize = st.integers(MAX_FRAME_BYTES - 40, MAX_FRAME_BYTES + 4000).map(
    lambda n: ("text", json.dumps({"type": "ping", "pad": "é" * (n // 2)}, ensure_ascii=False)))


# -- the test -----------------------------------------------------------------------------------------------

def _next_reply(ws: ClientConnection, topics: frozenset[str], seen: Counter[str]) -> dict[str, Any]:
    """The next frame that is not an event. Events interleave freely, but each must be of `topics`, the
    set the hub last confirmed: it changes topics and queues its answer in one step, so every event
    queued before the answer matches the old set and every event after it the new one."""
    deadline = time.monotonic() + 15
    while True:
        raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        assert isinstance(raw, str), f"binary frame from the hub: {raw!r}"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), raw
        if frame["type"] != "event":
            return frame
        assert frame["topic"] in topics and ("seq" in frame) and isinstance(frame.get("data"), dict), (topics, raw)
        seen[frame["topic"]] += 1


def test_fuzzed_frames_get_documented_answers_and_disturb_nobody(dsn: str) -> None:
    handler = Records()
    loggers = [logging.getLogger(name) for name in HUB_LOGGERS]
    sent: dict[str, int] = {"frames": 0, "connections": 0, "closes_1009": 0}
    replies: Counter[str] = Counter()
    seen: Counter[str] = Counter()  # events the fuzz client received, by topic
    try:
        with HubThread(dsn) as thread:
            # Attach only now: starting the hub applies its logging config, which drops earlier handlers.
            for logger in loggers:
                logger.addHandler(handler)
            logging.getLogger("service.fuzzprobe").error("probe")
            assert handler.bad() == ["service.fuzzprobe ERROR: probe"], "the capture does not see the hub's logs"
            handler.records.clear()
            hub = thread.running
            box = Observed()
            observing = thread.submit(_observe(f"{hub.ws}?token={hub.token()}&topics=log_stream,trade_update,"
                                               "sys_status", box))
            assert box.connected.wait(30), "observer did not connect"
            writing = thread.submit(_write(dsn, box))

            token = hub.token(sub="fuzzer", topics=sorted(ALLOWED))
            refresh_ok = {hub.token(sub="fuzzer", topics=sorted(ALLOWED)): ALLOWED,
                          hub.token(sub="fuzzer", topics=sorted(NARROW)): NARROW}
            refresh_bad = [hub.token(sub="someone-else", topics=sorted(ALLOWED)),
                           hub.token(sub="fuzzer", ttl=-60, topics=sorted(ALLOWED)),
                           token[:-4] + "AAAA", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJmdXp6ZXIifQ."]
            url = f"{hub.ws}?token={token}&topics=log_stream"

            def welcome(ws: ClientConnection) -> Model:
                first = json.loads(ws.recv(timeout=10))
                assert first["type"] == "welcome" and first["topics"] == ["log_stream"], first
                sent["connections"] += 1
                return Model(topics=frozenset({"log_stream"}), allowed=ALLOWED, tokens=dict(refresh_ok))

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.large_base_example])
            @given(batch=st.lists(frames([*refresh_ok, *refresh_bad]), min_size=8, max_size=50),
                   tail=st.none() | st.none() | st.none() | oversize)
            def one_client(batch: list[tuple[str, str | bytes]], tail: tuple[str, str] | None) -> None:
                with sync_connect(url, open_timeout=10, close_timeout=2, max_size=None) as ws:
                    model = welcome(ws)
                    confirmed = model.topics
                    for kind, payload in [*batch, *([tail] if tail else [])]:
                        if kind == "wsping":
                            assert ws.ping().wait(10), "no pong to a WebSocket ping"
                            continue
                        want = expected(kind, payload, model)
                        ws.send(payload)
                        sent["frames"] += 1
                        if want[0] == "close":
                            try:
                                reply = _next_reply(ws, confirmed, seen)
                                raise AssertionError(f"expected close {want[1]}, got {reply}")
                            except ConnectionClosed as exc:
                                assert exc.rcvd is not None and exc.rcvd.code == want[1], exc
                            sent["closes_1009"] += 1
                            return
                        reply = _next_reply(ws, confirmed, seen)
                        replies[reply.get("code") or reply["type"]] += 1
                        if want[0] == "error":
                            assert (reply["type"], reply.get("code")) == want, (payload[:200], reply)
                            assert isinstance(reply.get("message"), str), reply
                        elif want[0] == "pong":
                            assert reply == {"type": "pong"}, (payload[:200], reply)
                        else:
                            assert (reply["type"], reply["topics"]) == want, (payload[:200], reply)
                            confirmed = frozenset(reply["topics"])
                    ws.send('{"type": "ping"}')  # still attached after the whole batch
                    assert _next_reply(ws, confirmed, seen) == {"type": "pong"}

            started = time.monotonic()
            one_client()
            fuzz_seconds = time.monotonic() - started

            box.stop_writing.set()
            writes = writing.result(30)
            truth = thread.submit(_truth(dsn)).result(30)
            box.target = truth[-1]
            observing.result(60)
            assert box.seqs == truth, "the observer lost, doubled or reordered events during the fuzz"
            assert writes > 50 and box.heartbeats > 2
            for _ in range(100):  # every client left, and the hub forgot every one of them
                if len(hub.hub.manager) == 0:
                    break
                time.sleep(0.05)
            assert len(hub.hub.manager) == 0
        print(f"fuzz: {sent} in {fuzz_seconds:.1f}s; replies {dict(replies)}; observer saw {len(truth)} events; "
              f"fuzz client saw {dict(seen)}")
        assert sent["frames"] >= 2000 and sent["closes_1009"] > 0, sent
        # Every documented answer came up, so every branch of the message handling ran.
        assert set(replies) >= {"pong", "topics", "refreshed", "invalid_json", "invalid_message", "unknown_type",
                                "unknown_topic", "forbidden_topic", "refresh_rejected", "binary_not_supported"}, replies
        # The topic check above ran on a real stream, not an empty one.
        assert seen["log_stream"] > 20 and set(seen) <= ALLOWED, seen
        assert handler.bad() == [], handler.bad()[:10]
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
