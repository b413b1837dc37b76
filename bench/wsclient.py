"""A lean WebSocket client (RFC 6455, client side) for the load fleets.

Why not the `websockets` client: at 50,000 frames/s a client process built on
it needs about a core of its own, and on a 2-core machine that core is taken
from the hub under test. This protocol parses server frames straight out of
the receive buffer, timestamps a whole read at once, and finds the two numbers
it needs (the event's seq and the writer's timestamp) with a regex instead of
a JSON parse. Frames the hub renders in PostgreSQL are jsonb text, so their
keys come in a fixed order (`{"ts": ..., "seq": N, "data": ...}`).

By default it offers no extension, like most non-browser clients; with
`deflate` it offers permessage-deflate the way browsers do, and inflates what
the server compresses. It masks with a zero key (valid; servers do not check
the key's randomness).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import zlib
from array import array
from typing import Any, cast

SEQ_RE = re.compile(rb'"seq": (\d+)')
T_RE = re.compile(rb'"bench_t": ([0-9.]+)')
_ZERO_MASK = b"\x00\x00\x00\x00"
TCP_ESTABLISHED = 1


def handshake_request(host: str, port: int, path: str, deflate: bool = False) -> bytes:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: emVwaXgtaHViLWJlbmNoIQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n").encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (zero mask key: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    return head + _ZERO_MASK + payload


class WSClient(asyncio.Protocol):
    """One connection. Counts event frames, records latencies into a shared array, notes how it ended."""

    def __init__(self, request: bytes, *, lat: array[float] | None, want_welcome: bool,
                 lat_t: array[float] | None = None, keep_seqs: bool = False, stall: bool = False) -> None:
        self.request = request
        self.lat = lat
        self.lat_t = lat_t
        self.want_welcome = want_welcome
        self.stall = stall
        self.transport: asyncio.Transport | None = None
        self.local_port = 0
        self.buf = bytearray()
        self.open = False
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.count = 0  # distinct event frames carrying a seq, in order
        self.dups = 0  # event frames at or below the last seq seen (duplicates or out of order)
        self.last_seq = 0
        self.seqs: list[int] | None = [] if keep_seqs else None
        self.controls: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_at: float | None = None
        self.paused_at: float | None = None
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None
        self.replayed_head: int | None = None
        self.first_live_at: float | None = None  # first event after the `replayed` marker
        self._frag: bytearray | None = None
        self._inflate: Any = None  # a zlib decompressobj once the server accepted permessage-deflate
        self._fresh_inflater = False  # server_no_context_takeover: a new inflater per message
        self.compressed = False
        self._stop_after: int | None = None
        self.reached: asyncio.Future[None] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sockname = self.transport.get_extra_info("sockname")
        self.local_port = int(sockname[1]) if sockname else 0
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_at is None:
            self.closed_at = time.time()
        if self.close_code is None:
            self.close_code = 1006  # no close frame: the connection just ended (reset or EOF)
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.done.done():
            self.done.set_result(None)
        if self.reached is not None and not self.reached.done():
            self.reached.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            parts = head[: head.find(b"\r\n")].split()
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            del buf[: end + 4]
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"sec-websocket-extensions:") and b"permessage-deflate" in line:
                    self._inflate = zlib.decompressobj(-15)
                    self._fresh_inflater = b"server_no_context_takeover" in line
            if self.status != 101:
                self.opened.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            if not self.want_welcome:
                self._opened()
        self._parse(now)

    # -- frames --------------------------------------------------------------------------------------
    def _parse(self, now: float) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hdr = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2: pos + 10], "big")
                hdr = 10
            end = pos + hdr + ln
            if end > n:
                break
            op = b0 & 0x0F
            if b0 & 0x40 and self._inflate is not None:  # RSV1: a compressed message (never fragmented here)
                self.compressed = True
                if self._fresh_inflater:
                    self._inflate = zlib.decompressobj(-15)
                data = self._inflate.decompress(bytes(buf[pos + hdr: end]) + b"\x00\x00\xff\xff")
                self._text(bytearray(data), now)
            elif op == 1 and b0 & 0x80:
                self._text(buf[pos + hdr: end], now)
            elif op in (0, 1):
                self._frag = (self._frag or bytearray()) + buf[pos + hdr: end]
                if b0 & 0x80:
                    self._text(self._frag, now)
                    self._frag = None
            elif op == 8:
                self._on_close(bytes(buf[pos + hdr: end]), now)
            elif op == 9:
                self._write(client_frame(0xA, bytes(buf[pos + hdr: end])))
            pos = end
        if pos:
            del buf[:pos]

    def _text(self, payload: bytearray, now: float) -> None:
        m = SEQ_RE.search(payload, 0, 96)
        if m is None:
            self._control(payload)
            return
        seq = int(m.group(1))
        if seq <= self.last_seq:
            self.dups += 1
            return
        self.last_seq = seq
        self.count += 1
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        if self.replayed_head is not None and self.first_live_at is None and seq > self.replayed_head:
            self.first_live_at = now
        if self.seqs is not None:
            self.seqs.append(seq)
        if self.lat is not None:
            t = T_RE.search(payload)
            if t is not None:
                self.lat.append(now - float(t.group(1)))
                if self.lat_t is not None:
                    self.lat_t.append(now)
        if self._stop_after is not None and seq >= self._stop_after and self.reached is not None \
                and not self.reached.done():
            self.reached.set_result(None)

    def _control(self, payload: bytearray) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "welcome" and not self.opened.done():
            self._opened()
            return
        if msg.get("type") != "event":
            msg["_at"] = time.time()
            self.controls.append(msg)
            if msg.get("type") == "replayed" and isinstance(msg.get("head"), int):
                self.replayed_head = msg["head"]

    def _opened(self) -> None:
        if self.stall and self.transport is not None:
            self.transport.pause_reading()
            self.paused_at = time.time()
        if not self.opened.done():
            self.opened.set_result(True)

    def _on_close(self, payload: bytes, now: float) -> None:
        if self.close_code is None:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            self.closed_at = now
        self._write(client_frame(0x8, payload[:2]))
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- used by the fleet ---------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        self._write(client_frame(0x1, text.encode()))

    def close(self, code: int = 1000) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._write(client_frame(0x8, struct.pack("!H", code)))
        self.transport.close()

    def resume(self) -> None:
        """Start reading again (the stalled client, once the hub has given up on it)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def wait_for_seq(self, seq: int) -> asyncio.Future[None]:
        """A future done once an event with seq >= `seq` arrived (or the connection ended)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.last_seq >= seq or self.done.done():
            fut.set_result(None)
        else:
            self._stop_after, self.reached = seq, fut
        return fut

    def tcp_state(self) -> tuple[int, int]:
        """(TCP state, bytes waiting in the receive queue): sees a reset while reading is paused."""
        import fcntl
        import termios

        if self.transport is None:
            return 0, 0
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return 0, 0
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            queued = array("i", [0])
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
        except OSError:
            return 0, 0
        return info[0], queued[0]


async def open_client(host: str, port: int, request: bytes, *, within: float, **kwargs: Any) -> WSClient:
    """Connect, then wait for the handshake (and the welcome, with want_welcome), `within` s at most."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        _, proto = await loop.create_connection(lambda: WSClient(request, **kwargs), host, port)
        await asyncio.shield(proto.opened)
    return proto
