"""A TCP proxy between a hub and PostgreSQL that can fail the way networks do.

`blackhole()` stops forwarding without closing anything: both sockets stay open, no FIN, no RST, the bytes
either side sends are held (or dropped) and nothing answers, which is what a dead NAT entry, a pulled cable or
a frozen firewall looks like to both ends. Only a timeout can notice it. `resume()` lets held bytes through
again, as TCP retransmission would; `cut()` resets the connections at once.

A fault can be aimed at some connections only: `match` is looked for in the first bytes a client sends (its
startup message, which names its application_name), so a test can blackhole the hub's listener and leave its
pool alone. For that the hub's DSN asks for `sslmode=disable` (see `dsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket and the upstream one, and the client's first bytes."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    hello: bytes = b""
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    drop: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None and sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            writer.transport.abort()


class FaultyProxy:
    """Listens on 127.0.0.1 (port 0) and forwards every connection to the PostgreSQL of `target_dsn`."""

    def __init__(self, target_dsn: str) -> None:
        parts = urlsplit(target_dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        port = parts.port or 5432
        # The embedded server listens on a unix socket only; a server URL names host:port.
        self._unix = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir.startswith("/") else None
        self._tcp = (parts.hostname or "127.0.0.1", port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._faults: list[tuple[bytes | None, bool]] = []  # (match, drop) for connections made from now on
        self.port = 0

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        tasks = [t for link in self._links for t in link.tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()

    def dsn(self, dsn: str) -> str:
        """`dsn` (same user and database) through this proxy, without TLS so that `match` can read the startup."""
        parts = urlsplit(dsn)
        query = {k: v for k, v in parse_qs(parts.query).items() if k not in ("host", "port", "sslmode")}
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode({**query, "sslmode": ["disable"]},
                                                                         doseq=True), ""))

    # -- faults ------------------------------------------------------------------------------------
    def blackhole(self, match: bytes | None = None, *, drop: bool = False) -> None:
        """Stop forwarding on the matching connections, now and for those opened later, without closing them.

        Bytes sent meanwhile are held for `resume()` (or thrown away with `drop`).
        """
        self._faults.append((match, drop))
        for link in self._links:
            if self._matches(link, match):
                link.flowing.clear()
                link.drop = drop

    def resume(self) -> None:
        """Forward again everything held; connections opened from now on flow."""
        self._faults.clear()
        for link in self._links:
            link.drop = False
            link.flowing.set()

    def cut(self, match: bytes | None = None) -> int:
        """Reset the matching connections now (the next ones are accepted as usual); returns how many."""
        hit = [link for link in self._links if self._matches(link, match)]
        for link in hit:
            link.abort()
        return len(hit)

    def connections(self, match: bytes | None = None) -> int:
        return sum(1 for link in self._links if self._matches(link, match))

    @staticmethod
    def _matches(link: _Link, match: bytes | None) -> bool:
        return match is None or match in link.hello

    # -- forwarding ----------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._tcp)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        link.flowing.set()
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
                      asyncio.create_task(self._pump(link, up_reader, writer, upstream=False))]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        first = upstream
        async for chunk in _chunks(reader):
            if first:
                first = False
                link.hello = chunk
                for match, drop in self._faults:
                    if self._matches(link, match):
                        link.flowing.clear()
                        link.drop = drop
            if not link.flowing.is_set():
                if link.drop:
                    continue
                await link.flowing.wait()
            writer.write(chunk)
            await writer.drain()
        # The sender closed its side: a blackholed path does not carry that either.
        await link.flowing.wait()
        link.abort()


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await reader.read(65536)
        except (ConnectionError, OSError):
            return
        if not chunk:
            return
        yield chunk


@contextlib.asynccontextmanager
async def faulty_proxy(target_dsn: str) -> AsyncIterator[FaultyProxy]:
    proxy = await FaultyProxy(target_dsn).start()
    try:
        yield proxy
    finally:
        await proxy.close()
