"""The scenarios S1-S6, run against the hub and, where it means something, the naive baseline and the ceiling.

A live run: start the server under test, connect the fleets, let the writer
INSERT for `duration` s, wait (bounded) until every client has every event,
measure CPU and memory of every process over exactly that window, stop it all.
The three servers run one after another against the same database, so they
see the same load on the same machine within a minute of each other.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .capture import BARE_CHANNEL
from .common import CHANNEL, percentile
from .procs import HarnessError, Processes, Profiler, Server, Usage, Worker, busy_cpu, usage

HUB, NAIVE, CEILING = "hub", "naive", "ceiling"
TARGETS = (HUB, NAIVE, CEILING)


@dataclass
class Plan:
    """Sizes of every scenario; `quick` shrinks durations and counts, never the shape."""

    quick: bool
    s1_clients: int = 100
    s1_rate: float = 200
    s2_clients: int = 500
    s2_rate: float = 100
    s3_pad: int = 4000
    duration: float = 10
    s4_clients: int = 2000
    s5_behind: int = 100_000
    s6_single: int = 1000  # trades inserted by the lone writer
    s6_each: int = 125  # trades inserted by each of the 16 writers
    s6_rounds: int = 3

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls(quick=False)
        return cls(quick=True, duration=3, s4_clients=500, s5_behind=20_000, s6_single=400, s6_each=50,
                   s6_rounds=1)


@dataclass
class Run:
    """One scenario against one server."""

    scenario: str
    target: str
    clients: int = 0
    connected: int = 0
    events: int = 0  # events the writer committed
    expected: int = 0  # frames: events x reading clients
    delivered: int = 0
    dups: int = 0
    lat: list[float] = field(default_factory=list)  # seconds, sorted
    server_cpu: float = 0.0
    server_hwm: int = 0
    gen_cpu: float = 0.0
    gen_rate: float = 0.0
    gen_late_ms: float = 0.0
    fleet_cpu: float = 0.0
    fleet_util: float = 0.0  # busiest fleet process: CPU s per wall s (1.0 = saturated)
    other_cpu: float = 0.0  # busy CPU s of the machine outside our processes (PostgreSQL, other tenants)
    wall: float = 0.0
    close_codes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, float] | None = None  # medians over repetitions: {"50", "95", "99", "100"} -> seconds

    def p(self, q: float) -> float:
        if self.fixed is not None:
            return self.fixed[str(int(q))]
        return percentile(self.lat, q)

    @property
    def worst(self) -> float:
        if self.fixed is not None:
            return self.fixed["100"]
        return self.lat[-1] if self.lat else float("nan")

    @property
    def delivered_ratio(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0


class Bench:
    def __init__(self, plan: Plan, procs: Processes, dsn: str, secret: str, token: str,
                 workdir: Path) -> None:
        self.plan, self.procs, self.dsn, self.secret, self.token = plan, procs, dsn, secret, token
        self.workdir = workdir
        self.writer: Worker | None = None
        self.db: asyncpg.Connection | None = None
        self.profiler = Profiler(os.environ.get("HUB_BENCH_PROFILE"))
        self.log: list[str] = []

    async def start(self) -> None:
        self.db = await asyncpg.connect(self.dsn)
        self.writer = await self.procs.worker("writer", "writer")

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def head(self) -> int:
        assert self.db is not None
        return int(await self.db.fetchval("SELECT head FROM event_log_status"))

    def say(self, text: str) -> None:
        print(f"  .. {text}", flush=True)

    def path(self, target: str, since: str | None = None) -> str:
        if target != HUB:
            return "/ws/live"
        query = f"/ws/live?token={self.token}&topics=log_stream"
        return query + (f"&since={since}" if since is not None else "")

    async def server(self, target: str) -> Server:
        if target == HUB:
            return await self.procs.hub(self.dsn, self.secret)
        return await self.procs.reference(target, self.dsn)

    async def fleets(self, n: int) -> list[Worker]:
        return list(await asyncio.gather(*(self.procs.worker("fleet", f"fleet{i}") for i in range(n))))

    async def connect(self, fleets: list[Worker], server: Server, target: str, clients: int,
                      stall: int = 0, deflate: bool = False, query: str = "") -> tuple[int, dict[str, int], int]:
        k = len(fleets)
        shares = [clients // k + (1 if i < clients % k else 0) for i in range(k)]
        answers = await asyncio.gather(*(
            f.call({"cmd": "connect", "host": "127.0.0.1", "port": server.port, "path": self.path(target) + query,
                    "n": n, "want_welcome": target == HUB, "stall": stall if i == 0 else 0,
                    "concurrency": 50, "deflate": deflate}, 180)
            for i, (f, n) in enumerate(zip(fleets, shares, strict=True))))
        failed: dict[str, int] = {}
        for a in answers:
            for k, v in a["failed"].items():
                failed[k] = failed.get(k, 0) + v
        compressed = sum(int(a["compressed"]) for a in answers)  # connections that negotiated permessage-deflate
        return sum(int(a["connected"]) for a in answers), failed, compressed

    async def stop(self, *children: Server | Worker) -> None:
        for child in children:
            if isinstance(child, Worker) and child.name.startswith("fleet"):
                try:
                    await child.call({"cmd": "close"}, 30)
                except HarnessError:
                    pass
        for child in children:
            await self.procs.stop(child)

    # -- a live run ------------------------------------------------------------------------------------
    async def live(self, scenario: str, target: str, *, clients: int, fleets: int, rate: float, pad: int = 0,
                   stall: int = 0, grace: float = 20, stall_wait: float = 0, deflate: bool = False,
                   filters: int = 0) -> Run:
        """`filters` (S2F, hub only): half the clients spread over that many distinct row filters."""
        assert self.writer is not None
        run = Run(scenario, f"{target}-filtered" if filters else target, clients=clients)
        server = await self.server(target)
        workers = await self.fleets(fleets)
        # The stalled client lives in a process of its own: watching its socket costs CPU that must not
        # show up as latency of the reading clients.
        staller = (await self.procs.worker("fleet", "fleet-stalled")) if stall else None
        try:
            if staller is not None:
                await self.connect([staller], server, target, 0, stall, deflate)
            run.connected, failed, compressed = await self.connect(workers, server, target,
                                                                   clients - clients // 2 if filters else clients,
                                                                   0, deflate)
            for i in range(filters):
                # Distinct filters (distinct canonical keys) that all pass the writer's lines (source 'bench'):
                # every client still expects every event, and the hub evaluates `filters` filters per event.
                n = clients // 2 // filters + (1 if i < clients // 2 % filters else 0)
                more, failed_more, _ = await self.connect(workers, server, target, n, 0, deflate,
                                                          f"&log_stream.source=bench,other{i}")
                run.connected = more  # a fleet answers with all its clients so far, not this call's
                for key, v in failed_more.items():
                    failed[key] = failed.get(key, 0) + v
            if deflate:
                run.extra["deflate_negotiated"] = compressed
            if failed:
                run.extra["connect_failed"] = failed
            if run.connected == 0:
                raise HarnessError(f"{scenario} {target}: no client could connect ({failed})")
            await asyncio.sleep(0.5)
            lo = await self.head()
            everyone = [*workers, *([staller] if staller else [])]
            before = self._usage(server, everyone)
            await self.profiler.start(server.pid, f"{scenario}-{target}{'-4kB' if pad and not stall else ''}")
            busy0, t0, wall0 = busy_cpu(), time.monotonic(), time.time()
            w = await self.writer.call({"cmd": "write", "dsn": self.dsn, "rate": rate,
                                        "duration": self.plan.duration, "pad": pad},
                                       self.plan.duration * 4 + 60)
            hi = await self.head()
            run.events = hi - lo
            run.expected = run.events * run.connected
            run.gen_rate, run.gen_late_ms = float(w["rate"]), float(w["late_max_ms"])
            run.extra["commit_ms"] = {k: float(w[f"commit_{k}_ms"]) for k in ("p50", "p99", "max")}
            lat_paths = [self.workdir / f"lat-{scenario}-{target}-{i}.bin" for i in range(fleets)]
            answers = await asyncio.gather(*(
                f.call({"cmd": "expect", "count": run.events, "grace": grace, "lat_path": str(p)}, grace + 60)
                for f, p in zip(workers, lat_paths, strict=True)))
            after = self._usage(server, everyone)
            # Read the window before stopping the profiler: py-spy's flush is neither wall time nor load.
            run.wall = time.monotonic() - t0
            run.other_cpu = max(0.0, busy_cpu() - busy0 - sum(a.cpu - b.cpu for a, b in zip(after, before,
                                                                                               strict=True)))
            await self.profiler.stop()
            run.server_cpu = after[0].cpu - before[0].cpu
            run.gen_cpu = after[1].cpu - before[1].cpu
            fleet_cpu = [a.cpu - b.cpu for a, b in zip(after[2:], before[2:], strict=True)]
            run.fleet_cpu = sum(fleet_cpu)
            run.fleet_util = max(fleet_cpu) / run.wall if run.wall else 0.0
            for a in answers:
                run.delivered += int(a["delivered"])
                run.dups += int(a["dups"])
                for k, v in a["close_codes"].items():
                    run.close_codes[k] = run.close_codes.get(k, 0) + v
            lat: array[float] = array("d")
            lat_t: array[float] = array("d")
            for p in lat_paths:
                lat.frombytes(p.read_bytes())
                times = p.with_name(p.name + ".t")
                lat_t.frombytes(times.read_bytes())
                p.unlink()
                times.unlink()
            run.extra["timeline"] = timeline(lat, lat_t, wall0)
            run.lat = sorted(lat)
            if staller is not None:
                stalled = await staller.call(
                    {"cmd": "stalled", "lo": lo, "hi": hi, "stall_wait": stall_wait,
                     "resume_path": self.path(target, "{since}") if target == HUB else None,
                     "resume_timeout": 20}, stall_wait + 60)
                run.extra["stalled"] = stalled["stalled"]
            run.server_hwm = usage(server.pid).hwm
            if target == HUB:
                # The watchdog logs every sweep while a stalled write lasts: count clients, not lines.
                closed = re.findall(r"client (\S+): socket write stalled[^\n]*closing 4008", server.log_tail(10**7))
                run.extra["hub_4008_closes"] = len(set(closed))
        finally:
            await self.profiler.stop()
            await self.stop(*workers, *([staller] if staller else []), server)
        return run

    def _usage(self, server: Server, fleets: list[Worker]) -> list[Usage]:
        assert self.writer is not None
        return [server.usage(), self.writer.usage(), *(f.usage() for f in fleets)]

    # -- S4 ----------------------------------------------------------------------------------------------
    async def idle(self, target: str, clients: int, fleets: int) -> Run:
        run = Run("S4", target, clients=clients)
        server = await self.server(target)
        warm = await self.fleets(1)
        workers: list[Worker] = []
        try:
            # Warm up first, so one-off allocations (imports, first handshake) are not counted per connection.
            await self.connect(warm, server, target, 20)  # (connected, failed, compressed) not needed
            await self.stop(*warm)
            await asyncio.sleep(1.0)
            rss0 = server.usage().rss
            workers = await self.fleets(fleets)
            t0 = time.monotonic()
            cpu0 = server.usage().cpu
            run.connected, failed, _ = await self.connect(workers, server, target, clients)
            run.extra["connect_s"] = time.monotonic() - t0
            if failed:
                run.extra["connect_failed"] = failed
            await asyncio.sleep(2.0)
            end = server.usage()
            run.server_cpu = end.cpu - cpu0
            run.server_hwm = end.hwm
            run.extra.update(rss_before=rss0, rss_after=end.rss,
                             per_conn=(end.rss - rss0) / run.connected if run.connected else float("nan"))
            run.fleet_cpu = sum(f.usage().cpu for f in workers)
        finally:
            await self.stop(*workers, server)
        return run

    # -- S5 ----------------------------------------------------------------------------------------------
    async def resume(self) -> Run:
        assert self.writer is not None
        behind = self.plan.s5_behind
        run = Run("S5", HUB, clients=1)
        since = await self.head()
        fill = await self.writer.call({"cmd": "filler", "dsn": self.dsn, "n": behind}, 300)
        run.extra["filler_s"] = fill["seconds"]
        head = await self.head()
        server = await self.server(HUB)
        fleet = (await self.fleets(1))[0]
        try:
            await self.profiler.start(server.pid, "S5-http-hub")
            http = await fleet.call({"cmd": "http_replay", "host": "127.0.0.1", "port": server.port,
                                     "token": self.token, "since": since, "limit": 1000}, 300)
            await self.profiler.stop()
            ref = await self.writer.call({"cmd": "read_ref", "dsn": self.dsn, "since": since, "limit": 1000},
                                         300)
            run.extra["http"] = http
            run.extra["db_ref"] = ref
            before = self._usage(server, [fleet])
            await self.profiler.start(server.pid, "S5-ws-hub")
            busy0, t0 = busy_cpu(), time.monotonic()
            # Live events keep coming during the replay and after it, so "then live" is measurable.
            live_s = 4 if self.plan.quick else 8
            run.extra["live_window_s"] = live_s
            live = asyncio.create_task(self.writer.call(
                {"cmd": "write", "dsn": self.dsn, "rate": 50, "duration": live_s, "pad": 0}, 120))
            await fleet.call({"cmd": "resume", "host": "127.0.0.1", "port": server.port,
                              "path": self.path(HUB, str(since))}, 120)
            w = await live
            run.gen_rate = float(w["rate"])
            hi = await self.head()
            fin = await fleet.call({"cmd": "resume_finish", "since": since, "hi": hi, "timeout": 60}, 120)
            after = self._usage(server, [fleet])
            run.wall = time.monotonic() - t0
            run.other_cpu = max(0.0, busy_cpu() - busy0 - sum(a.cpu - b.cpu for a, b in zip(after, before,
                                                                                               strict=True)))
            await self.profiler.stop()
            run.server_cpu = after[0].cpu - before[0].cpu
            run.gen_cpu = after[1].cpu - before[1].cpu
            run.fleet_cpu = after[2].cpu - before[2].cpu
            run.server_hwm = usage(server.pid).hwm
            run.events = hi - since
            run.expected = hi - since
            run.delivered = run.expected - int(fin["missing"])
            run.dups = int(fin["dups"])
            run.extra["ws"] = fin
            run.extra["behind"] = head - since
        finally:
            await self.profiler.stop()
            await self.stop(fleet, server)
        return run

    # -- S6 ----------------------------------------------------------------------------------------------
    async def write_path(self, dsns: dict[str, str]) -> dict[str, Any]:
        """Inserts/s with 1 and 16 writers, for each trigger variant; median of `s6_rounds` rounds."""
        assert self.writer is not None
        plan = self.plan
        channels = {"hub": CHANNEL, "none": None, "bare": BARE_CHANNEL, "nolock": CHANNEL, "previous": CHANNEL}
        rates: dict[tuple[str, int], list[float]] = {}
        for writers, per in ((1, plan.s6_single), (16, plan.s6_each)):
            for _ in range(plan.s6_rounds):
                for variant, dsn in dsns.items():  # interleaved, so background noise hits every variant alike
                    r = await self.writer.call({"cmd": "trades", "dsn": dsn, "writers": writers,
                                                "per_writer": per, "listen": channels[variant]}, 600)
                    if channels[variant] and r["notified"] < r["inserts"]:
                        raise HarnessError(f"S6 {variant}: {r['notified']} of {r['inserts']} notifications")
                    key = (variant, writers)
                    rates.setdefault(key, []).append(float(r["rate"]))
        return {"rates": {f"{v}/{w}": statistics.median(x) for (v, w), x in rates.items()},
                "all": {f"{v}/{w}": x for (v, w), x in rates.items()}}


def timeline(lat: array[float], at: array[float], start: float) -> list[dict[str, float]]:
    """Latency per second of the run (by receipt time): shows whether a p99 comes from one bad moment."""
    buckets: dict[int, list[float]] = {}
    for value, when in zip(lat, at, strict=True):
        buckets.setdefault(int(when - start), []).append(value)
    out = []
    for second in sorted(buckets):
        values = sorted(buckets[second])
        out.append({"s": second, "n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
                    "max": values[-1]})
    return out


def median_run(runs: list[Run]) -> Run:
    """Several repetitions of one scenario on one server: sums of counts, medians of everything measured."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    med = statistics.median
    out = Run(first.scenario, first.target, clients=first.clients,
              connected=min(r.connected for r in runs), events=sum(r.events for r in runs),
              expected=sum(r.expected for r in runs), delivered=sum(r.delivered for r in runs),
              dups=sum(r.dups for r in runs), server_cpu=med(r.server_cpu for r in runs),
              server_hwm=int(med(r.server_hwm for r in runs)), gen_cpu=med(r.gen_cpu for r in runs),
              gen_rate=med(r.gen_rate for r in runs), gen_late_ms=max(r.gen_late_ms for r in runs),
              fleet_cpu=med(r.fleet_cpu for r in runs), fleet_util=max(r.fleet_util for r in runs),
              other_cpu=med(r.other_cpu for r in runs), wall=med(r.wall for r in runs))
    out.fixed = {str(q): med(r.p(q) for r in runs) for q in (50, 95, 99)}
    out.fixed["100"] = med(r.worst for r in runs)
    for r in runs:
        for k, v in r.close_codes.items():
            out.close_codes[k] = out.close_codes.get(k, 0) + v
    out.extra["runs_p99_ms"] = [round(r.p(99) * 1000, 1) for r in runs]
    commits = [r.extra["commit_ms"] for r in runs if "commit_ms" in r.extra]
    if commits:
        out.extra["commit_ms"] = {k: med(c[k] for c in commits) for k in ("p50", "p99", "max")}
    stalled = [s for r in runs for s in r.extra.get("stalled", [])]
    if stalled:
        out.extra["stalled"] = stalled
    if any("hub_4008_closes" in r.extra for r in runs):
        out.extra["hub_4008_closes"] = sum(r.extra.get("hub_4008_closes", 0) for r in runs)
    out.extra["timelines"] = [r.extra.get("timeline", []) for r in runs]
    if "deflate_negotiated" in first.extra:
        out.extra["deflate_negotiated"] = min(r.extra.get("deflate_negotiated", 0) for r in runs)
    return out


#: S2F: S2 with half the clients on this many distinct row filters; its p99 against S2 unfiltered, same run.
S2F_FILTERS = 10
S2F_LIMIT = 1.25


async def s2f(bench: Bench, repeated: Callable[..., Awaitable[dict[str, Run]]]) -> dict[str, Run]:
    """S2 twice, interleaved: every client unfiltered ("hub"), then half on S2F_FILTERS filters."""
    plan = bench.plan
    print(f"S2F S2 with half of {plan.s2_clients} clients on {S2F_FILTERS} different row filters "
          f"(log_stream.source), against S2 unfiltered in the same run", flush=True)
    return await repeated(bench, "S2F", lambda target: bench.live(
        "S2F", HUB, clients=plan.s2_clients, fleets=2, rate=plan.s2_rate, grace=30,
        filters=S2F_FILTERS if target == f"{HUB}-filtered" else 0), targets=(HUB, f"{HUB}-filtered"))
