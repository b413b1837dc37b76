"""A fleet of WebSocket clients in one process, driven over stdin/stdout by the coordinator.

Commands (one JSON object a line; see common.serve_commands):
- connect: open `n` reading clients (and `stall` clients that stop reading right after the handshake)
- expect: wait until every reading client has `count` events (or `grace` s), write latencies to
  `lat_path` and answer with the counts
- stalled: wait for the server to drop each stalled client, drain it, resume it (`_stalled_report`)
- resume / resume_finish: the S5 WebSocket resume from far behind
- http_replay: the S5 HTTP replay, page by page
- close: close every connection with 1000
Run as `python -m bench.fleet`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import time
from array import array
from typing import Any

from .common import Command, raise_nofile, run_async, serve_commands
from .sockdiag import SockDiag
from .wsclient import TCP_ESTABLISHED, WSClient, handshake_request, open_client


class Fleet:
    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.want_welcome = False
        self.clients: list[WSClient] = []
        self.stalled: list[WSClient] = []
        self.samples: dict[int, list[tuple[float, int, int]]] = {}
        self.lat: array[float] = array("d")
        self.lat_t: array[float] = array("d")  # receipt time of each latency sample
        self.monitor: asyncio.Task[None] | None = None
        self.resumer: WSClient | None = None
        self.resume_t0 = 0.0

    async def handle(self, cmd: Command) -> dict[str, Any]:
        kind = cmd["cmd"]
        if kind == "connect":
            return await self.connect(cmd)
        if kind == "expect":
            return await self.expect(cmd)
        if kind == "stalled":
            return await self.stalled_reports(cmd)
        if kind == "resume":
            return await self.resume(cmd)
        if kind == "resume_finish":
            return await self.resume_finish(cmd)
        if kind == "http_replay":
            return await asyncio.to_thread(http_replay, cmd)
        if kind == "close":
            return await self.close()
        raise ValueError(f"unknown command {kind!r}")

    async def connect(self, cmd: Command) -> dict[str, Any]:
        self.host, self.port, self.want_welcome = cmd["host"], int(cmd["port"]), bool(cmd["want_welcome"])
        request = handshake_request(self.host, self.port, cmd["path"], bool(cmd.get("deflate")))
        sem = asyncio.Semaphore(int(cmd.get("concurrency", 50)))
        failures: collections.Counter[str] = collections.Counter()
        t0 = time.monotonic()

        async def one(stall: bool) -> None:
            async with sem:
                try:
                    client = await open_client(
                        self.host, self.port, request, within=float(cmd.get("timeout", 30)),
                        lat=None if stall else self.lat, lat_t=None if stall else self.lat_t,
                        want_welcome=self.want_welcome, keep_seqs=stall,
                        stall=stall)
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return
                if client.opened.result():
                    (self.stalled if stall else self.clients).append(client)
                else:
                    failures[f"http {client.status}" if client.status else "closed during handshake"] += 1

        await asyncio.gather(*(one(False) for _ in range(int(cmd["n"]))),
                             *(one(True) for _ in range(int(cmd.get("stall", 0)))))
        if self.stalled and self.monitor is None:
            self.monitor = asyncio.create_task(self._watch_stalled())
        return {"connected": len(self.clients), "stalled": len(self.stalled), "failed": dict(failures),
                "compressed": sum(1 for c in self.clients if c._inflate is not None),
                "seconds": time.monotonic() - t0}

    async def _watch_stalled(self) -> None:
        """Sample each stalled connection: its TCP state (shows a reset while we do not read) and the bytes
        parked in the kernel, in our receive queue plus the server's send queue (both ends are local).
        The stalled client runs in a fleet of its own, so this sampling never delays reading clients."""
        diag: SockDiag | None = None
        with contextlib.suppress(OSError):
            diag = SockDiag()
        server_side: dict[int, tuple[int, int]] = {}
        tick = 0
        while True:
            now = time.time()
            watched = [c for c in self.stalled if c.paused_at is not None]
            if diag is None and watched and tick % 4 == 0:  # /proc/net/tcp: ~10 ms a read, so 5 a second
                server_side = server_sockets(self.port)
            tick += 1
            for c in watched:
                state, queued = c.tcp_state()
                # The hub closing its end shows here first: its orphaned socket leaves ESTABLISHED at once,
                # while ours stays ESTABLISHED until we read the data queued ahead of the FIN.
                if diag is not None:
                    found = diag.lookup(self.port, c.local_port)
                    theirs, sendq = found if found is not None else (0, 0)
                else:
                    theirs, sendq = server_side.get(c.local_port, (0, 0))
                if state == TCP_ESTABLISHED and theirs != TCP_ESTABLISHED:
                    state = 100 + theirs
                self.samples.setdefault(id(c), []).append((now, state, queued + sendq))
            await asyncio.sleep(0.05)

    async def expect(self, cmd: Command) -> dict[str, Any]:
        count, grace = int(cmd["count"]), float(cmd["grace"])
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if all(c.count >= count or c.done.done() for c in self.clients):
                break
            await asyncio.sleep(0.02)
        await asyncio.to_thread(_save, self.lat, cmd["lat_path"])
        await asyncio.to_thread(_save, self.lat_t, cmd["lat_path"] + ".t")
        codes: collections.Counter[int] = collections.Counter(
            c.close_code for c in self.clients if c.close_code is not None)
        last = [c.last_event_at for c in self.clients if c.last_event_at is not None]
        result: dict[str, Any] = {
            "clients": len(self.clients),
            "complete": sum(1 for c in self.clients if c.count >= count),
            "delivered": sum(min(c.count, count) for c in self.clients),
            "dups": sum(c.dups for c in self.clients),
            "close_codes": {str(k): v for k, v in codes.items()},
            "latencies": len(self.lat),
            "last_event_at": max(last) if last else None,
        }
        return result

    async def stalled_reports(self, cmd: Command) -> dict[str, Any]:
        return {"stalled": [await self._stalled_report(c, cmd) for c in self.stalled]}

    async def _stalled_report(self, c: WSClient, cmd: Command) -> dict[str, Any]:
        """Wait (bounded) for the server to drop the stalled client, drain its buffers, resume with since."""
        lo, hi = int(cmd["lo"]), int(cmd["hi"])
        deadline = time.monotonic() + float(cmd["stall_wait"])
        key = id(c)
        while time.monotonic() < deadline:
            samples = self.samples.get(key, [])
            if c.done.done() or (samples and samples[-1][1] != TCP_ESTABLISHED):
                break
            await asyncio.sleep(0.05)
        samples = list(self.samples.get(key, []))
        ended = next((s for s in samples if s[1] != TCP_ESTABLISHED), None)
        alive = [s for s in samples if s[1] == TCP_ESTABLISHED]
        peak = max((s[2] for s in alive), default=0)
        filled = next((s[0] for s in alive if peak and s[2] >= 0.98 * peak), None)
        report: dict[str, Any] = {
            "paused_at": c.paused_at, "filled_at": filled, "buffered_bytes": peak,
            "ended_at": ended[0] if ended else None, "tcp_state": ended[1] if ended else TCP_ESTABLISHED,
        }
        # Read what the kernel kept for us (and the close frame, if the hub managed to send one).
        c.resume()
        with_close = asyncio.shield(c.done)
        try:
            await asyncio.wait_for(with_close, 5 if ended else 0.5)
        except TimeoutError:
            pass
        report.update(close_code=c.close_code if c.done.done() else None, close_reason=c.close_reason,
                      seen_before=c.last_seq, drained_events=c.count)
        seen = set(c.seqs or [])
        since = c.last_seq or lo
        resume_path = cmd.get("resume_path")
        if resume_path and ended:
            c.close()
            path = resume_path.replace("{since}", str(since))
            t0 = time.time()
            try:
                again = await open_client(self.host, self.port, handshake_request(self.host, self.port, path),
                                          within=10, lat=None, want_welcome=True, keep_seqs=True)
                await asyncio.wait_for(again.wait_for_seq(hi), float(cmd.get("resume_timeout", 15)))
                seen.update(again.seqs or [])
                report.update(resumed=True, resume_since=since, resume_events=again.count,
                              resume_s=(again.last_event_at or time.time()) - t0, resume_dups=again.dups)
                again.close()
            except Exception as exc:
                report.update(resumed=False, resume_error=f"{type(exc).__name__}: {exc}")
        wanted = set(range(lo + 1, hi + 1))
        report["missing"] = len(wanted - seen)
        return report

    async def resume(self, cmd: Command) -> dict[str, Any]:
        """S5: connect far behind; time the replay, the `replayed` frame and the first live event."""
        self.host, self.port = cmd["host"], int(cmd["port"])
        self.resume_t0 = time.time()
        self.resumer = await open_client(self.host, self.port,
                                         handshake_request(self.host, self.port, cmd["path"]), within=30,
                                         lat=self.lat, want_welcome=True, keep_seqs=True)
        return {"connected_s": time.time() - self.resume_t0}

    async def resume_finish(self, cmd: Command) -> dict[str, Any]:
        c = self.resumer
        assert c is not None
        since, hi = int(cmd["since"]), int(cmd["hi"])
        try:
            await asyncio.wait_for(c.wait_for_seq(hi), float(cmd.get("timeout", 60)))
        except TimeoutError:
            pass
        replayed = next((m for m in c.controls if m.get("type") == "replayed"), None)
        seqs = c.seqs or []
        result = {
            "events": c.count, "dups": c.dups, "expected": hi - since,
            "missing": len(set(range(since + 1, hi + 1)) - set(seqs)),
            "replayed": {k: v for k, v in (replayed or {}).items() if k != "_at"},
            "replayed_s": (replayed["_at"] - self.resume_t0) if replayed else None,
            "first_event_s": (c.first_event_at - self.resume_t0) if c.first_event_at else None,
            "last_event_s": (c.last_event_at - self.resume_t0) if c.last_event_at else None,
            "live_s": (c.first_live_at - self.resume_t0) if c.first_live_at else None,
        }
        c.close()
        return result

    async def close(self) -> dict[str, Any]:
        if self.monitor is not None:
            self.monitor.cancel()
        for c in [*self.clients, *self.stalled]:
            c.close()
        await asyncio.sleep(0.2)
        return {"ok": True}


def server_sockets(server_port: int) -> dict[int, tuple[int, int]]:
    """{client port: (TCP state, bytes in the send queue)} of the server's sockets, from /proc/net/tcp."""
    found: dict[int, tuple[int, int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == server_port:
                        found[int(parts[2].rsplit(":", 1)[1], 16)] = (int(parts[3], 16),
                                                                      int(parts[4].split(":")[0], 16))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _save(lat: array[float], path: str) -> None:
    with open(path, "wb") as f:
        lat.tofile(f)


def http_replay(cmd: Command) -> dict[str, Any]:
    """GET /api/events page by page from `since` to the head, on one keep-alive connection."""
    conn = http.client.HTTPConnection(cmd["host"], int(cmd["port"]), timeout=30)
    headers = {"Authorization": f"Bearer {cmd['token']}"}
    since, limit = int(cmd["since"]), int(cmd["limit"])
    first = since
    events = pages = gaps = 0
    parse = 0.0  # our own JSON parsing: client CPU, not the hub's time
    t0 = time.perf_counter()
    while True:
        conn.request("GET", f"/api/events?since={since}&limit={limit}&topics=log_stream", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/api/events answered {resp.status}: {body[:200]!r}")
        p0 = time.perf_counter()
        page = json.loads(body)
        pages += 1
        for ev in page["events"]:
            if ev["seq"] != since + 1 and events:
                gaps += 1
            since = ev["seq"]
            events += 1
        parse += time.perf_counter() - p0
        if len(page["events"]) < limit:
            break
        since = int(page["next_since"])
    seconds = time.perf_counter() - t0
    conn.close()
    return {"events": events, "pages": pages, "seconds": seconds, "parse_s": parse, "gaps": gaps, "from": first,
            "to": since}


def main() -> None:
    raise_nofile()
    fleet = Fleet()
    run_async(serve_commands(fleet.handle))


if __name__ == "__main__":
    main()
