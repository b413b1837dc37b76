"""The front door: what a stranger (or one token) can cost the hub.

Per-subject connection caps, bounded metric labels for client-chosen close codes, the HTTP limits
(header size and time, total connections) and an OpenAPI document that says exactly what the API takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from websockets.exceptions import ConnectionClosed

from service import frames
from tests.hubs import RunningHub, connect, recv_json, running_hub


async def _close_of(ws: Any, timeout: float = 10) -> tuple[int, list[dict[str, Any]]]:
    """Read until the hub closes; return its close code and the frames it sent before."""
    seen: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            seen.append(await recv_json(ws, timeout))
    assert info.value.rcvd is not None, "connection dropped without a close frame"
    return info.value.rcvd.code, seen


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _eventually_async(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _sample(hub: RunningHub, name: str, **labels: str) -> float:
    return hub.hub.metrics.registry.get_sample_value(name, labels) or 0.0


# -- item 6: close codes as metric labels ---------------------------------------------------------------------


async def test_client_chosen_close_codes_are_counted_as_other(hub: RunningHub) -> None:
    """A client picks its close code freely (1000-4999): only the codes the protocol defines become labels."""
    url = f"{hub.ws}?token={hub.token()}&topics=log_stream"
    for code in (3999, 4999, 4321, 1000):
        ws = await connect(url)
        await recv_json(ws)  # welcome
        await ws.close(code, "bye")
    async with await connect(f"{hub.ws}?token=not-a-jwt") as ws:
        assert (await _close_of(ws))[0] == frames.CLOSE_UNAUTHORIZED
    await _eventually(lambda: len(hub.hub.manager) == 0 and hub.hub.metrics.closes(1000) == 1,
                      "the hub to see every close")
    metrics = hub.hub.metrics
    assert metrics.closes("other") == 3
    assert (metrics.closes(1000), metrics.closes(frames.CLOSE_UNAUTHORIZED)) == (1, 1)
    labels = {s.labels["code"] for m in metrics.registry.collect() if m.name == "zepix_hub_disconnects"
              for s in m.samples if s.name == "zepix_hub_disconnects_total"}
    assert labels == {"other", "1000", "4001"}
    assert labels <= {str(c) for c in frames.LABELLED_CLOSE_CODES} | {"other"}


# -- item 5: connections per token subject --------------------------------------------------------------------


async def test_a_burst_of_connections_for_one_subject_gets_exactly_the_cap(dsn: str) -> None:
    async with running_hub(dsn, max_connections_per_subject=3) as hub:
        url = f"{hub.ws}?token={hub.token(sub='burst')}&topics=log_stream"
        sockets = await asyncio.gather(*(connect(url) for _ in range(12)))
        try:
            firsts = await asyncio.gather(*(recv_json(ws) for ws in sockets), return_exceptions=True)
            welcomed = [f for f in firsts if isinstance(f, dict) and f.get("type") == "welcome"]
            assert len(welcomed) == 3
            assert _sample(hub, "zepix_hub_refused_total", reason="subject_limit") == 9
        finally:
            for ws in sockets:
                await ws.close()
        await _eventually(lambda: hub.hub.subject_slots.count("burst") == 0, "every slot back")


async def _raw_handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket handshake on a plain socket; returns it once the 101 is read (the caller owns it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.to_thread(sock.recv, 1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
    except BaseException:
        sock.close()
        raise
    return sock


async def _write_logs(dsn: str, n: int, size: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(n):
            await conn.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", f"{i} " + "x" * size)
    finally:
        await conn.close()


async def test_connections_per_subject_are_capped_and_every_slot_comes_back(dsn: str) -> None:
    async with running_hub(dsn, max_connections_per_subject=2, queue_max_frames=20, send_timeout_s=0.5) as hub:
        alice = f"{hub.ws}?token={hub.token(sub='alice')}&topics=log_stream"
        a1, a2 = await connect(alice), await connect(alice)
        for ws in (a1, a2):
            assert (await recv_json(ws))["type"] == "welcome"

        # Over the cap: an error frame that says why, then 1013 "try again later".
        async with await connect(alice) as refused:
            code, seen = await _close_of(refused)
        assert code == frames.CLOSE_TRY_AGAIN
        assert [f.get("code") for f in seen] == ["too_many_connections"]
        assert _sample(hub, "zepix_hub_refused_total", reason="subject_limit") == 1
        assert hub.hub.metrics.closes(frames.CLOSE_TRY_AGAIN) == 1

        # Other subjects are not affected.
        async with await connect(f"{hub.ws}?token={hub.token(sub='bob')}&topics=log_stream") as bob:
            assert (await recv_json(bob))["type"] == "welcome"

        # Refusals that end the handshake before the cap (bad topics, forbidden topics) hold no slot.
        for bad in ("&topics=weather", "&topics=log_stream&since=x"):
            async with await connect(f"{hub.ws}?token={hub.token(sub='alice')}{bad}") as ws:
                assert (await _close_of(ws))[0] == frames.CLOSE_BAD_REQUEST
        narrow = hub.token(sub="alice", topics=["sys_status"])
        async with await connect(f"{hub.ws}?token={narrow}&topics=log_stream") as ws:
            assert (await _close_of(ws))[0] == frames.CLOSE_FORBIDDEN

        # A normal close gives the slot back.
        await a1.close()
        await _eventually(lambda: hub.hub.subject_slots.count("alice") == 1, "the slot of a closed client")
        a3 = await connect(alice)
        assert (await recv_json(a3))["type"] == "welcome"

        # An abrupt disconnect (no close handshake) gives it back.
        a2.transport.abort()
        await _eventually(lambda: hub.hub.subject_slots.count("alice") == 1, "the slot of a dropped client")

        # Handshakes dropped right after the 101 (before the welcome is read) give theirs back.
        for _ in range(5):
            _raw = await _raw_handshake(hub.port, alice.split(str(hub.port), 1)[1])
            _raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _raw.close()
        await _eventually(lambda: hub.hub.subject_slots.count("alice") == 1, "the slots of dropped handshakes")

        # A client cut with 4008 (it stopped reading) gives it back.
        path = alice.split(str(hub.port), 1)[1]
        stalled = await _raw_handshake(hub.port, path, rcvbuf=4096)
        try:
            assert hub.hub.subject_slots.count("alice") == 2
            writing = asyncio.create_task(_write_logs(dsn, 300, size=16000))
            try:
                await _eventually(lambda: hub.hub.metrics.closes(frames.CLOSE_TOO_SLOW) == 1, "a 4008", timeout=60)
            finally:
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writing
            await _eventually(lambda: hub.hub.subject_slots.count("alice") == 1, "the slot of a 4008")
        finally:
            stalled.close()

        # The count is exact, not merely low: two connections again, and the third is refused.
        a4 = await connect(alice)
        assert (await recv_json(a4))["type"] == "welcome"
        async with await connect(alice) as refused:
            assert (await _close_of(refused))[0] == frames.CLOSE_TRY_AGAIN
        assert _sample(hub, "zepix_hub_refused_total", reason="subject_limit") == 2
        for ws in (a3, a4):
            await ws.close()
        await _eventually(lambda: hub.hub.subject_slots.count("alice") == 0, "every slot back")
