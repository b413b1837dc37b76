"""Client and ConnectionManager without a database or a server: the real classes on a real socket pair.

The direct path writes to a real asyncio transport (one end of a socketpair); the other end is parsed by
websockets' own frame reader. The few attributes DirectSocket reads from uvicorn's protocol object (conn,
transport, writable, close_sent) are given by `UvicornSide`, with a real websockets protocol as `conn`.
The ASGI path gets `send`/`close` functions that write to a real socket too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from service.api.uvicorn_internals import DIRECT_ATTRIBUTES, DirectSocket
from service.hub.connections import Client, ConnectionManager
from service.hub.frames import Frame, live_event
from service.protocol import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW
from service.settings import Settings, load_settings
from service.topics import LOG_STREAM, SYS_STATUS, TRADE_UPDATE

GUARD_S = 5.0  # hang guard only


def settings(**overrides: Any) -> Settings:
    return load_settings(jwt_secret="x" * 40, **overrides)


def event(seq: int, topic: str = LOG_STREAM, size: int = 0) -> Frame:
    return Frame(topic, seq, f'{{"type":"event","topic":"{topic}","seq":{seq},"pad":"{"x" * size}"}}')


@dataclass
class UvicornSide:
    """What DirectSocket reads from uvicorn's websockets-sansio protocol object."""

    conn: Protocol
    transport: asyncio.WriteTransport
    writable: asyncio.Event = field(default_factory=asyncio.Event)
    close_sent: bool = False


@dataclass
class Peer:
    """The far end of a socketpair: decodes the WebSocket frames the hub side wrote."""

    sock: socket.socket
    parser: Protocol = field(default_factory=lambda: Protocol(Side.CLIENT, max_size=None))
    texts: list[str] = field(default_factory=list)

    async def receive(self, n: int) -> list[str]:
        """Until `n` text frames in all have arrived; returns them all."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(GUARD_S):
            while len(self.texts) < n:
                data = await loop.sock_recv(self.sock, 65536)
                assert data, "the hub side closed the socket"
                self.parser.receive_data(data)
                for frame in self.parser.events_received():
                    assert frame.opcode is Opcode.TEXT  # type: ignore[union-attr]
                    self.texts.append(frame.data.decode())  # type: ignore[union-attr]
        return self.texts


@dataclass
class Wire:
    """A real socket pair: the hub's end as an asyncio transport, the peer's end as a Peer."""

    side: UvicornSide
    writer: asyncio.StreamWriter
    peer: Peer
    closes: list[tuple[int, str]] = field(default_factory=list)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)

    def direct(self) -> DirectSocket:
        # DirectSocket.of also checks that the protocol object is uvicorn's own class (tests/test_fast_path.py
        # and tests/test_uvicorn_fence.py cover that); here the writer itself is under test.
        assert all(hasattr(self.side, a) for a in DIRECT_ATTRIBUTES), "UvicornSide lacks what DirectSocket reads"
        return DirectSocket(self.side)

    async def send(self, text: str) -> None:
        """The ASGI path's send_text, on the same socket."""
        self.writer.write(Frame(None, None, text).wire)
        await self.writer.drain()

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def abort(self) -> None:
        self.aborted.set()

    def client(self, s: Settings, *, direct: bool, delivered: int = 0,
               topics: frozenset[str] = frozenset({LOG_STREAM}),
               send: Callable[[str], Awaitable[None]] | None = None) -> Client:
        return Client(s, send=send or self.send, close=self.close, abort=self.abort, topics=topics,
                      delivered=delivered, direct=self.direct() if direct else None)


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    hub_end, peer_end = socket.socketpair()
    peer_end.setblocking(False)
    _, writer = await asyncio.open_connection(sock=hub_end)
    side = UvicornSide(Protocol(Side.SERVER), writer.transport)  # type: ignore[arg-type]
    side.writable.set()
    try:
        yield Wire(side, writer, Peer(peer_end))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        peer_end.close()


async def parked(client: Client) -> None:
    """Until the client's sender task waits with an empty queue (the state in which broadcast writes directly)."""
    deadline = asyncio.get_running_loop().time() + GUARD_S
    while not client.idle:
        assert asyncio.get_running_loop().time() < deadline, "the sender task never parked"
        await asyncio.sleep(0)


async def finished(client: Client) -> None:
    """Until the client's sender task has ended (it closes the socket and returns)."""
    assert client._sender is not None
    async with asyncio.timeout(GUARD_S):
        await asyncio.shield(client._sender)


def seqs(texts: list[str]) -> list[int | None]:
    import json

    return [json.loads(t).get("seq") for t in texts]


async def test_direct_path_writes_in_broadcast_order_and_skips_what_the_client_has(wire: Wire) -> None:
    manager = ConnectionManager(settings())
    client = wire.client(settings(), direct=True, delivered=2)
    manager.register(client)
    await parked(client)
    for seq in (1, 2, 3, 3, 4):
        manager.broadcast(event(seq))
    manager.broadcast(live_event(LOG_STREAM, {"live": True}))  # no seq: never filtered
    manager.broadcast(event(5))
    assert not client.queue, "an idle client with a ready socket is written to directly, not queued"
    assert seqs(await wire.peer.receive(4)) == [3, 4, None, 5]
    assert client.delivered == 5
    await manager.stop()


async def test_a_paused_socket_queues_then_drains_in_order_without_doubles(wire: Wire) -> None:
    manager = ConnectionManager(settings())
    client = wire.client(settings(), direct=True, delivered=0)
    manager.register(client)
    await parked(client)
    manager.broadcast(event(1))
    wire.side.writable.clear()  # what uvicorn's pause_writing does above the transport's high-water mark
    for seq in (2, 3, 2, 4, 3, 5):
        manager.broadcast(event(seq))
    assert [f.seq for f in client.queue] == [2, 3, 2, 4, 3, 5]
    wire.side.writable.set()
    assert seqs(await wire.peer.receive(5)) == [1, 2, 3, 4, 5]
    await parked(client)
    assert client.queued_bytes == 0
    manager.broadcast(event(6))  # idle again: direct again
    assert seqs(await wire.peer.receive(6))[-1] == 6
    await manager.stop()


async def test_asgi_path_sends_in_order_and_skips_what_the_client_has(wire: Wire) -> None:
    manager = ConnectionManager(settings())
    client = wire.client(settings(), direct=False, delivered=2)
    for seq in (1, 2, 3, 3, 4, 2, 5):
        client.offer(event(seq))  # queued before the sender starts: every frame goes through the queue
    manager.register(client)
    assert seqs(await wire.peer.receive(3)) == [3, 4, 5]
    assert client.delivered == 5
    await manager.stop()


@pytest.mark.parametrize("limit", ["frames", "bytes"])
async def test_a_queue_over_either_limit_is_closed_4008_naming_what_was_delivered(wire: Wire, limit: str) -> None:
    # Each limit alone: the other is far away.
    s = settings(queue_max_frames=3) if limit == "frames" else settings(queue_max_bytes=1024)
    client = wire.client(s, direct=False, delivered=7)
    size = 10 if limit == "frames" else 250  # ~300 bytes a frame: the 4th passes 1024
    for seq in (8, 9, 10):
        client.offer(event(seq, size=size))
    assert client.close_request is None, "closed before the queue passed its limit"
    client.offer(event(11, size=size))
    assert client.close_request == (CLOSE_TOO_SLOW, "too slow; resume with since=7")
    depth = len(client.queue)
    client.offer(event(12))
    assert len(client.queue) == depth, "a client being closed still queued frames"
    manager = ConnectionManager(s)
    manager.register(client)
    await finished(client)
    assert wire.closes == [(CLOSE_TOO_SLOW, "too slow; resume with since=7")]
    assert client.close_code == CLOSE_TOO_SLOW
    await manager.stop()


async def test_close_requests_first_wins_override_replaces_reason_fits(wire: Wire) -> None:
    client = wire.client(settings(), direct=True)
    client.request_close(4001, "token expired")
    client.request_close(1008, "rate limit exceeded")
    assert client.close_request == (4001, "token expired")
    client.request_close(4410, "x" * 300, override=True)
    assert client.close_request == (4410, "x" * 120)
    manager = ConnectionManager(settings())
    manager.register(client)
    await finished(client)
    assert wire.closes == [(4410, "x" * 120)]
    assert wire.peer.texts == []
    await manager.stop()


async def test_a_write_stalled_past_send_timeout_is_aborted_4008(wire: Wire) -> None:
    gate = asyncio.Event()  # a send that never completes: the peer stopped reading

    async def stuck(_text: str) -> None:
        await gate.wait()

    s = settings(send_timeout_s=0.1)
    manager = ConnectionManager(s)
    await manager.start()
    client = wire.client(s, direct=False, send=stuck)
    manager.register(client)
    await parked(client)
    manager.broadcast(event(1))
    async with asyncio.timeout(GUARD_S):
        await wire.aborted.wait()
    assert client.close_code == CLOSE_TOO_SLOW
    assert client.close_request == (CLOSE_TOO_SLOW, "too slow; resume with since=0")
    await manager.stop()


async def test_manager_fans_out_by_topic_and_close_all_closes_everyone(wire: Wire) -> None:
    manager = ConnectionManager(settings())
    logs = wire.client(settings(), direct=False, topics=frozenset({LOG_STREAM}))
    trades = wire.client(settings(), direct=False, topics=frozenset({TRADE_UPDATE}))
    manager.register(logs)
    manager.register(trades)
    await parked(logs)
    await parked(trades)
    assert manager.broadcast(event(1, LOG_STREAM)) == 1
    assert manager.broadcast(live_event(SYS_STATUS, {})) == 0
    assert manager.broadcast(Frame("topic_from_a_newer_schema", 2, "{}")) == 0
    manager.set_topics(trades, frozenset({TRADE_UPDATE, LOG_STREAM}))
    assert manager.broadcast(event(3, LOG_STREAM)) == 2
    manager.set_topics(logs, frozenset())
    assert manager.broadcast(event(4, LOG_STREAM)) == 1
    assert seqs(await wire.peer.receive(4)) == [1, 3, 3, 4]
    assert len(manager) == 2
    await manager.close_all(CLOSE_GOING_AWAY, "hub shutting down")
    assert sorted(wire.closes) == [(CLOSE_GOING_AWAY, "hub shutting down")] * 2
    assert len(manager) == 0
    assert all(c._sender is not None and c._sender.done() for c in (logs, trades))
    await manager.unregister(logs)  # twice is fine
    await manager.stop()
