"""`zepix-hub bench [--quick] [--scenarios S1,S3]`: run the benchmark and print the results table.

Database: a fresh database on HUB_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres, any database on the server:
the bench creates and drops its own), or a private embedded PostgreSQL with
HUB_BENCH_EMBEDDED=1 (or an `--embedded` flag, if the CLI defines one), or when
no server answers on the default.

Other knobs (environment): HUB_BENCH_JSON=path writes every figure as JSON;
HUB_BENCH_MARKDOWN=path writes the tables as Markdown (docs/benchmarks.md);
HUB_BENCH_REPEAT=N runs S1, S2, S3 N times, interleaved, and reports medians
(default 3, or 1 with --quick); HUB_BENCH_NAIVE_WS=websockets|wsproto serves the
naive baseline with another uvicorn WebSocket implementation;
HUB_BENCH_UVLOOP_HUB=1 starts the hub with uvloop as asyncio's policy (an experiment);
HUB_BENCH_KEEP=1 keeps the work directory (process logs); HUB_BENCH_PROFILE=dir
records a py-spy profile (raw collapsed stacks) of the server under test in
S1, S2, S3 and S5 (py-spy must be on PATH; profiling slows the server down, so
compare profiled figures only with each other).

Exit status: 0 when the benchmark ran (even if targets were missed: they print
MISSED), 1 when the harness itself failed, 2 for a bad --scenarios value.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from service.api.auth import mint
from service.cli.doctor import APPEND_FUNCTION
from service.settings import load_settings
from service.store import migrate
from service.store.embedded import destroy_scratch, start_scratch, with_database

from .capture import BARE_NOTIFY_SQL, DROP_CAPTURE_SQL, PREVIOUS_CAPTURE
from .common import raise_nofile
from .procs import HarnessError, Processes
from .report import (
    idle_table,
    live_table,
    markdown,
    resume_lines,
    stall_lines,
    verdicts,
    write_table,
)
from .scenarios import CEILING, HUB, NAIVE, TARGETS, Bench, Plan, Run, median_run, s2f

#: The capture functions that take the commit-order lock themselves (migration 0006 appends inline).
CAPTURE_TRIGGER_FUNCTIONS = ("zepix_hub.hub_trades_event_v3", "zepix_hub.hub_logs_event_v3")
ALL = ("S1", "S2", "S2F", "S3", "S4", "S5", "S6")
EXTRA = ("S2D",)  # run only when named: S2 with permessage-deflate offered, as browsers do
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PACKAGES = ("fastapi", "starlette", "uvicorn", "websockets", "asyncpg", "uvloop", "psutil", "pydantic")



def cmd_bench(args: argparse.Namespace) -> int:
    chosen = _scenarios(args.scenarios)
    if chosen is None:
        print(f"zepix-hub bench: --scenarios takes a comma-separated subset of {','.join(ALL + EXTRA)}",
              file=sys.stderr)
        return 2
    raise_nofile()
    embedded = bool(getattr(args, "embedded", False)) or _flag("HUB_BENCH_EMBEDDED")
    try:
        return int(asyncio.run(_main(Plan.make(bool(args.quick)), chosen, embedded)))
    except HarnessError as exc:
        print(f"\nzepix-hub bench: harness error: {exc}", file=sys.stderr)
        return 1


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _scenarios(raw: str | None) -> list[str] | None:
    if not raw:
        return list(ALL)
    wanted = [s.strip().upper() for s in raw.split(",") if s.strip()]
    if not wanted or any(s not in ALL + EXTRA for s in wanted):
        return None
    return [s for s in ALL + EXTRA if s in wanted]


class Database:
    """The PostgreSQL server the bench uses, and the databases it created there (dropped at the end)."""

    def __init__(self, admin_dsn: str, embedded_dir: Path | None = None) -> None:
        self.admin_dsn, self.embedded_dir = admin_dsn, embedded_dir
        self.created: list[str] = []

    async def create(self, tag: str, revision: str = "head") -> str:
        name = f"zepix_bench_{tag}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        self.created.append(name)
        dsn = with_database(self.admin_dsn, name)
        await asyncio.to_thread(migrate.upgrade, dsn, revision)
        return dsn

    async def version(self) -> str:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    async def drop_all(self) -> None:
        for name in list(self.created):
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(self.admin_dsn)
                try:
                    await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                finally:
                    await conn.close()
            self.created.remove(name)
        if self.embedded_dir is not None:
            destroy_scratch(self.embedded_dir / "pgdata")


async def _database(embedded: bool) -> Database:
    url = os.environ.get("HUB_BENCH_DATABASE_URL")
    if not embedded:
        try:
            conn = await asyncpg.connect(url or DEFAULT_URL, timeout=5)
            await conn.close()
            return Database(with_database(url or DEFAULT_URL, "postgres"))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if url:
                raise HarnessError(f"HUB_BENCH_DATABASE_URL does not answer: {exc}") from None
            print(f"  .. no PostgreSQL at {DEFAULT_URL} ({type(exc).__name__}); starting an embedded one")
    return await asyncio.to_thread(_start_embedded)


def _start_embedded() -> Database:
    server = start_scratch("zepix-bench-pg-")
    return Database(server.dsn("postgres"), embedded_dir=server.pgdata.parent)


def machine(pg_version: str) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {"cpus": os.cpu_count(), "git": _git(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "postgresql": pg_version, "platform": platform.platform(),
            "packages": versions, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _git() -> str:
    """The commit measured, and whether the working tree differed from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


async def _main(plan: Plan, chosen: list[str], embedded: bool) -> int:
    db = await _database(embedded)  # first: a database that does not answer leaves nothing behind
    workdir = Path(tempfile.mkdtemp(prefix="zepix-bench-"))
    procs = Processes(workdir)
    bench: Bench | None = None
    started = time.monotonic()
    results: dict[str, Any] = {}
    try:
        info = machine(await db.version())
        n = repeats(plan.quick)
        print(f"zepix-hub bench ({'quick' if plan.quick else 'full'}): scenarios {','.join(chosen)}"
              f"{f'; S1-S3 run {n} times, interleaved, and report medians' if n > 1 else ''}")
        print(f"  machine: {info['cpus']} CPUs, {info['memory_gb']} GB RAM, load average {info['loadavg']}, "
              f"PostgreSQL {info['postgresql']}, Python {info['python']}")
        print("  packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
        print(f"  code: {info['git']}")
        print(f"  work directory (process logs): {workdir}\n", flush=True)
        results["machine"] = info
        dsn = await db.create("main")
        secret = secrets.token_urlsafe(48)
        settings = load_settings(jwt_secret=secret, dev=False, database_url=dsn, jwt_algorithms=["HS256"])
        token = mint(settings, secret, subject="bench", ttl_s=6 * 3600)
        bench = Bench(plan, procs, dsn, secret, token, workdir)
        await bench.start()
        for name in chosen:
            t0 = time.monotonic()
            results[name] = await SCENARIOS[name](bench, db)
            print(f"  ({name} took {time.monotonic() - t0:.0f} s)\n", flush=True)
        print("Targets (every comparison within this invocation):")
        found = verdicts(results)
        for v in found:
            print(v.line())
        results["verdicts"] = [dataclasses.asdict(v) for v in found]
        results["seconds"] = time.monotonic() - started
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(f"\nbench finished in {results['seconds']:.0f} s; load average now {results['loadavg_end']} "
              f"(other tenants on this machine add noise: compare ratios, not absolute times)")
        _save(results, workdir)
        md = os.environ.get("HUB_BENCH_MARKDOWN")
        if md:
            _write(md, markdown(results, repeats(plan.quick), plan.quick))
            print(f"markdown tables written to {md}")
        return 0
    finally:
        if bench is not None:
            await bench.close()
        await procs.stop_all()
        await db.drop_all()
        if not _flag("HUB_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _save(results: dict[str, Any], workdir: Path) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, Run):
            d = dataclasses.asdict(value)
            d.pop("lat")  # raw samples; empty for a median of repetitions, whose figures are in `fixed`
            d["latency_ms"] = {f"p{q}": value.p(q) * 1000 for q in (50, 95, 99)} | {"max": value.worst * 1000}
            return d
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    data = json.dumps(plain(results), indent=1, default=str)
    target = os.environ.get("HUB_BENCH_JSON")
    if target:
        Path(target).write_text(data)
        print(f"results written to {target}")


# -- the scenarios ------------------------------------------------------------------------------------------
async def s1(bench: Bench, db: Database) -> dict[str, Run]:
    plan = bench.plan
    title = (f"S1  {plan.s1_clients} clients, {plan.s1_rate:.0f} log events/s for {plan.duration:.0f} s "
             f"(~0.3 kB frames), one INSERT transaction per event")
    print(title, flush=True)
    runs = await _repeated(bench, "S1", lambda target: bench.live(
        "S1", target, clients=plan.s1_clients, fleets=1, rate=plan.s1_rate))
    _print(live_table("", runs)[1:])
    return runs


async def s2(bench: Bench, db: Database) -> dict[str, Run]:
    plan = bench.plan
    print(f"S2  {plan.s2_clients} clients, {plan.s2_rate:.0f} log events/s for {plan.duration:.0f} s "
          f"= {plan.s2_clients * plan.s2_rate:,.0f} frames/s, two client processes", flush=True)
    runs = await _repeated(bench, "S2", lambda target: bench.live(
        "S2", target, clients=plan.s2_clients, fleets=2, rate=plan.s2_rate, grace=30))
    _print(live_table("", runs)[1:])
    return runs


async def s2d(bench: Bench, db: Database) -> dict[str, Run]:
    plan = bench.plan
    print(f"S2D S2 with every client offering permessage-deflate, as browsers do: {plan.s2_clients} clients, "
          f"{plan.s2_rate:.0f} events/s for {plan.duration:.0f} s", flush=True)
    runs = await _repeated(bench, "S2D", lambda target: bench.live(
        "S2D", target, clients=plan.s2_clients, fleets=2, rate=plan.s2_rate, grace=60, deflate=True))
    _print(live_table("", runs)[1:])
    return runs


async def s3(bench: Bench, db: Database) -> dict[str, Run]:
    plan = bench.plan
    # Loopback absorbs ~4 MB per connection before the hub's writes block: the stalled run must last long
    # enough at 0.8 MB/s to get there, even in --quick.
    duration = max(plan.duration, 8.0)
    print(f"S3  S1 with {plan.s3_pad / 1000:.0f} kB events ({plan.s1_clients} reading clients) plus one "
          f"client that stops reading; stalled runs last {duration:.0f} s", flush=True)
    saved = plan.duration
    plan.duration = duration

    def one(target: str) -> Coroutine[Any, Any, Run]:
        if target == "hub-4kB":
            return bench.live("S3", HUB, clients=plan.s1_clients, fleets=1, rate=plan.s1_rate, pad=plan.s3_pad)
        others_grace = 2 if plan.quick else 5  # the naive manager never catches up: do not wait long
        return bench.live("S3", target, clients=plan.s1_clients, fleets=1, rate=plan.s1_rate, pad=plan.s3_pad,
                          stall=1, grace=20 if target == HUB else others_grace,
                          stall_wait=30 if target == HUB else 1)

    # --quick skips the ceiling's stalled run (it never drops the client either; S3 needs long runs).
    targets = ("hub-4kB", HUB, NAIVE) if plan.quick else ("hub-4kB", HUB, NAIVE, CEILING)
    try:
        runs = await _repeated(bench, "S3", one, targets)
    finally:
        plan.duration = saved
    labels = {"hub-4kB": "hub-4kB (no stall)", HUB: "hub", NAIVE: "naive", CEILING: "ceiling"}
    _print(live_table("", {labels[k]: r for k, r in runs.items()})[1:])
    for key in (HUB, NAIVE, CEILING):
        if key in runs:
            _print(stall_lines(runs[key]))
    return runs


async def s4(bench: Bench, db: Database) -> dict[str, Run]:
    n = bench.plan.s4_clients
    print(f"S4  {n:,} idle connections (hub: authenticated, welcome received), four client processes",
          flush=True)
    runs = {target: await bench.idle(target, n, 4) for target in TARGETS}
    _print(idle_table(runs))
    return runs


async def s5(bench: Bench, db: Database) -> Run:
    print(f"S5  resume: a client {bench.plan.s5_behind:,} events behind (HTTP pages, then WebSocket since=)",
          flush=True)
    run = await bench.resume()
    _print(resume_lines(run))
    return run


async def s6(bench: Bench, db: Database) -> dict[str, Any]:
    plan = bench.plan
    print(f"S6  write path: 1 writer x {plan.s6_single:,} trades, 16 writers x {plan.s6_each:,} trades, one "
          f"INSERT transaction each; hub triggers vs none vs a bare per-row pg_notify(row_to_json(NEW)) "
          f"trigger vs the hub's previous capture path (migration {PREVIOUS_CAPTURE}); {plan.s6_rounds} round(s)",
          flush=True)
    dsns = {v: await db.create(f"s6{v}") for v in ("hub", "none", "bare", "nolock")}
    dsns["previous"] = await db.create("s6previous", PREVIOUS_CAPTURE)
    for variant, sql in (("none", DROP_CAPTURE_SQL), ("bare", BARE_NOTIFY_SQL)):
        conn = await asyncpg.connect(dsns[variant])
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    if not await _drop_commit_lock(dsns["nolock"]):
        dsns.pop("nolock")
    res = await bench.write_path(dsns)
    _print(write_table(res))
    return res


def repeats(quick: bool = False) -> int:
    """HUB_BENCH_REPEAT, else 3 (1 with --quick): the targets are medians of several runs."""
    raw = os.environ.get("HUB_BENCH_REPEAT", "")
    return max(1, int(raw)) if raw.isdigit() else (1 if quick else 3)


async def _repeated(bench: Bench, scenario: str, make: Callable[[str], Coroutine[Any, Any, Run]],
                    targets: tuple[str, ...] = TARGETS) -> dict[str, Run]:
    """Run every target HUB_BENCH_REPEAT times, interleaved (hub, naive, ceiling, hub, ...), so that a
    noisy minute on this shared machine hits every server alike; report medians of per-run figures."""
    done: dict[str, list[Run]] = {t: [] for t in targets}
    n = repeats(bench.plan.quick)
    for i in range(n):
        if n > 1:
            bench.say(f"{scenario} repetition {i + 1}/{n}")
        for target in targets:
            done[target].append(await make(target))
    return {t: median_run(runs) for t, runs in done.items()}


async def _drop_commit_lock(dsn: str) -> bool:
    """Diagnostic S6 variant: the hub's triggers without the commit-order lock (NOT correct: seq
    order would no longer be commit order). It tells the lock's serialisation apart from the triggers' work.
    Since migration 0006 the trigger functions take the lock inline too: it goes from every capture function."""
    conn = await asyncpg.connect(dsn)
    try:
        stripped_any = False
        for name in (APPEND_FUNCTION, *CAPTURE_TRIGGER_FUNCTIONS):
            oid = await conn.fetchval("SELECT to_regproc($1)::oid", name)
            if oid is None:
                continue
            body = await conn.fetchval("SELECT pg_get_functiondef($1::oid)", oid)
            # v3 locks a table, v2 and v1 took an advisory lock.
            stripped = re.sub(r"LOCK TABLE zepix_hub\.commit_order IN SHARE UPDATE EXCLUSIVE MODE;|"
                              r"PERFORM\s+pg_advisory_xact_lock\(\s*\d+\s*\);", "", body)
            if stripped != body:
                await conn.execute(stripped)  # pg_get_functiondef renders CREATE OR REPLACE FUNCTION
                stripped_any = True
        return stripped_any
    finally:
        await conn.close()


async def _s2f(bench: Bench, db: Database) -> dict[str, Run]:
    runs = await s2f(bench, _repeated)
    _print(live_table("", runs)[1:])
    return runs


SCENARIOS = {"S1": s1, "S2": s2, "S2F": _s2f, "S2D": s2d, "S3": s3, "S4": s4, "S5": s5, "S6": s6}


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()
