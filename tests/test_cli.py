"""The real `zepix-hub` CLI, run as subprocesses against real databases and hubs.

Independent invocations run concurrently (each Python start costs a fraction
of a second); every wait has a generous hang guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import select
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.auth import Verifier, mint
from service.cli import build_parser
from service.doctor import check_triggers
from service.errors import ConfigError
from service.tail import resolve_token, use_colour
from tests.hubs import SECRET, HubProcess, RunningHub, hub_settings
from tests.pg import PgServer

ROOT = Path(__file__).resolve().parent.parent
NO_DB = "postgresql://nobody@127.0.0.1:1/not_used"  # for commands that must not touch a database
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli_env(dsn: str, tmp: Path, **extra: str) -> dict[str, str]:
    # Only what the test sets: a HUB_* or DATABASE_URL from the runner's shell must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k != "DATABASE_URL"}
    env.update(HUB_DATABASE_URL=dsn, HUB_JWT_SECRET=SECRET, HUB_DEV="false", HUB_DATA_DIR=str(tmp / "data"),
               HUB_LOG_LEVEL="WARNING")
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}  # "" = leave the variable unset


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: restore the default so the child turns SIGINT into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def spawn(env: dict[str, str], *args: str, stdout: int = asyncio.subprocess.PIPE
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args, env=env, cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout, stderr=asyncio.subprocess.PIPE, preexec_fn=_default_sigint)


async def cli(env: dict[str, str], *args: str, within: float = 60) -> Run:
    proc = await spawn(env, *args)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)  # hang guard
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def assert_usage_error(run: Run, *words: str) -> None:
    """Exit 2 with one clear line on stderr naming the problem, and no traceback."""
    assert run.code == 2, run
    assert "Traceback" not in run.err + run.out
    assert run.err.startswith("zepix-hub: ") or run.err.startswith("usage: "), run.err
    for word in words:
        assert word in run.err, (word, run.err)


def command_names() -> list[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(subparsers.choices)


async def test_every_command_has_help(tmp_path: Path) -> None:
    env = cli_env(NO_DB, tmp_path)
    names = command_names()
    expected = {"serve", "migrate", "sql", "prune", "token", "demo", "tail", "doctor", "stop-db", "bench"}
    assert expected <= set(names)
    runs = await asyncio.gather(cli(env, "--help"), *(cli(env, name, "--help") for name in names))
    top, *subs = runs
    assert top.code == 0 and top.out.startswith("usage: zepix-hub")
    for name in names:
        assert name in top.out
    for name, run in zip(names, subs, strict=True):
        assert run.code == 0, (name, run)
        assert run.out.startswith(f"usage: zepix-hub {name}"), (name, run.out)
        assert run.err == ""


async def test_token_prints_a_token_that_verifies(tmp_path: Path) -> None:
    env = cli_env(NO_DB, tmp_path)
    good, bad_ttl, zero_ttl, bad_topics, no_sub = await asyncio.gather(
        cli(env, "token", "--sub", "alice", "--topics", "log_stream,notification", "--ttl", "15m"),
        cli(env, "token", "--sub", "alice", "--ttl", "forever"),
        cli(env, "token", "--sub", "alice", "--ttl", "0s"),
        cli(env, "token", "--sub", "alice", "--topics", "log_stream,nope"),
        cli(env, "token"),
    )
    assert good.code == 0, good
    principal = Verifier(hub_settings(NO_DB), SECRET).verify(good.out.strip())
    assert principal.subject == "alice"
    assert principal.topics == {"log_stream", "notification"}
    assert abs(principal.expires_at - (time.time() + 900)) < 60
    assert_usage_error(bad_ttl, "invalid duration 'forever'")
    assert_usage_error(zero_ttl, "invalid duration '0s'")
    assert_usage_error(bad_topics, "unknown topic 'nope'")
    assert_usage_error(no_sub, "--sub")


async def test_migrate_on_a_migrated_database_and_sql(
        dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    env = cli_env(dsn, tmp_path)
    migrated, sql = await asyncio.gather(cli(env, "migrate"), cli(cli_env(NO_DB, tmp_path), "sql"))
    assert migrated.code == 0, migrated
    assert migrated.out.strip() == "migrated to head"
    assert await db.fetchval("SELECT count(*) FROM alembic_version") == 1
    assert sql.code == 0, sql
    assert "CREATE TABLE events" in sql.out
    assert "CREATE CONSTRAINT TRIGGER trades_event_v1" in sql.out


async def test_prune_deletes_old_events_and_moves_the_floor(
        hub: RunningHub, db: asyncpg.Connection, tmp_path: Path) -> None:
    env = cli_env(hub.settings.database_url or "", tmp_path)
    for n in range(3):
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', $1)", f"line {n}")
    await asyncio.sleep(1.1)
    zero, bad = await asyncio.gather(cli(env, "prune", "--older-than", "0s"),
                                     cli(env, "prune", "--older-than", "soon"))
    assert_usage_error(zero, "invalid duration '0s'")
    assert_usage_error(bad, "invalid duration 'soon'")
    assert await db.fetchval("SELECT count(*) FROM events") == 3  # a refused prune deletes nothing

    pruned = await cli(env, "prune", "--older-than", "1s", "--batch", "2")
    assert pruned.code == 0, pruned
    assert pruned.out.strip() == "pruned 3 events older than 1s; retention floor is seq 3"
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert await db.fetchval("SELECT pruned_through FROM event_retention") == 3

    auth = {"Authorization": f"Bearer {hub.token()}"}
    async with httpx.AsyncClient(base_url=hub.http, headers=auth) as http:
        gone = await http.get("/api/events", params={"since": 0})
        assert gone.status_code == 410
        assert (gone.json()["oldest"], gone.json()["head"]) == (4, 3)
        fine = await http.get("/api/events", params={"since": 3})
        assert fine.status_code == 200 and fine.json()["events"] == []


async def test_doctor_passes_on_a_good_database_and_explains_failures(
        dsn: str, pg: PgServer, tmp_path: Path) -> None:
    empty = await pg.create_database()  # reachable, never migrated
    try:
        good, missing, unmigrated = await asyncio.gather(
            cli(cli_env(dsn, tmp_path), "doctor"),
            cli(cli_env(pg.dsn("zepix_no_such_database"), tmp_path), "doctor"),
            cli(cli_env(pg.dsn(empty), tmp_path), "doctor"),
        )
    finally:
        await pg.drop_database(empty)

    assert good.code == 0, good
    lines = good.out.splitlines()
    for check in ("JWT key", "database", "migrations", "triggers", "LISTEN/NOTIFY", "NOTIFY queue"):
        assert any(line.startswith("OK") and f"  {check}: " in line for line in lines), (check, good.out)
    assert "all 6 checks passed" in good.out
    assert "fix:" not in good.out

    assert missing.code == 1, missing
    assert "Traceback" not in missing.out + missing.err
    assert re.search(r'^FAIL  database: .*"zepix_no_such_database" does not exist', missing.out, re.M)
    assert "fix: create the database" in missing.out
    assert re.search(r"^SKIP  migrations: not checked", missing.out, re.M)
    assert re.search(r"^OK    JWT key", missing.out, re.M)

    assert unmigrated.code == 1, unmigrated
    assert re.search(r"^FAIL  migrations: the database was never migrated", unmigrated.out, re.M)
    assert "fix: run: zepix-hub migrate" in unmigrated.out
    assert re.search(r"^FAIL  triggers: missing: trades_event_v2 on trades", unmigrated.out, re.M)
    assert re.search(r"^OK    LISTEN/NOTIFY: round trip", unmigrated.out, re.M)


async def test_configuration_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    runs = await asyncio.gather(
        cli(cli_env(NO_DB, tmp_path, HUB_JWT_ALGORITHMS="none"), "serve", "--port", "0"),
        cli(cli_env(NO_DB, tmp_path, HUB_JWT_SECRET=""), "serve", "--port", "0"),
        cli(cli_env(NO_DB, tmp_path, HUB_JWT_SECRET="short"), "serve", "--port", "0"),
        cli(cli_env(NO_DB, tmp_path), "tail", "--url", "http://127.0.0.1:1"),
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--topics", "trades"),
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--url", "ftp://x/"),
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--since", "-1"),
        cli(cli_env(NO_DB, tmp_path, HUB_DEV="true", HUB_JWT_SECRET=""), "tail"),
        cli(cli_env(NO_DB, tmp_path, HUB_LOG_LEVEL="verbose"), "serve", "--port", "0"),
    )
    bad_alg, no_secret, short_secret, no_token, bad_topic, bad_url, bad_since, no_dev_secret, bad_level = runs
    assert_usage_error(bad_alg, "HUB_JWT_ALGORITHMS", "'none' is never allowed")
    assert_usage_error(no_secret, "no JWT key", "HUB_JWT_SECRET")
    assert_usage_error(short_secret, "HUB_JWT_SECRET is too short")
    assert_usage_error(no_token, "no token", "HUB_TOKEN")
    assert_usage_error(bad_topic, "unknown topic 'trades'")
    assert_usage_error(bad_url, "hub URL")
    assert_usage_error(bad_since, "since must be a non-negative integer")
    assert_usage_error(no_dev_secret, "no dev secret")
    assert_usage_error(bad_level, "HUB_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    assert not (tmp_path / "data" / "jwt-secret").exists()  # tail must not invent a secret the hub lacks


class PtyReader:
    """The terminal side of a pty a child writes its stdout to."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.buffer = bytearray()

    def _read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.buffer.decode(errors="replace")
            if re.search(pattern, ANSI.sub("", text)):
                return text
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{pattern!r} not seen on the terminal; got:\n{text}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed its side
                    chunk = b""
                assert chunk, f"terminal closed before {pattern!r}; got:\n{text}"
                self.buffer.extend(chunk)

    async def read_until(self, pattern: str, within: float = 20) -> str:
        return await asyncio.to_thread(self._read_until, pattern, within)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


async def read_line_until(stream: asyncio.StreamReader, pattern: str, within: float = 20) -> str:
    deadline = time.monotonic() + within
    while True:
        line = await asyncio.wait_for(stream.readline(), max(0.01, deadline - time.monotonic()))
        assert line, f"stream ended before {pattern!r}"
        text = line.decode()
        if re.search(pattern, text):
            return text


async def test_tail_follows_live_events_resumes_and_exits_cleanly(
        dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    hub = await asyncio.to_thread(HubProcess(dsn, tmp_path / "hub.log").start)
    terminal = PtyReader()
    procs: list[asyncio.subprocess.Process] = []
    try:
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'before tail', 'bot')")
        token = mint(hub_settings(dsn), SECRET, subject="cli-test", ttl_s=600)
        # --json with an explicit token; and the human view on a terminal with a dev token, from seq 0.
        raw = await spawn(cli_env(dsn, tmp_path), "tail", "--json", "--url", hub.http, "--token", token,
                          "--topics", "log_stream,trade_update")
        procs.append(raw)
        human = await spawn(cli_env(dsn, tmp_path, HUB_DEV="true", NO_COLOR="", TERM="xterm"),
                            "tail", "--url", hub.http, "--since", "0", stdout=terminal.slave)
        procs.append(human)
        assert raw.stdout is not None and raw.stderr is not None and human.stderr is not None
        await read_line_until(raw.stderr, r"^-- connected to ws://127\.0\.0\.1:\d+/ws/live")
        await read_line_until(human.stderr, r"^-- resumed from seq 0: 1 missed event$")
        await terminal.read_until(r"log_stream\s+1  INFO\s+bot: before tail")

        await db.execute("INSERT INTO trades (symbol, side, quantity, entry_price, status) "
                         "VALUES ('ETHUSDT', 'SELL', 2, 3000.5, 'OPEN')")
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('ERROR', 'order rejected', 'broker')")

        frame = json.loads(await read_line_until(raw.stdout, r'"topic": ?"trade_update"'))
        assert (frame["type"], frame["seq"]) == ("event", 2)
        assert frame["data"]["trade"]["symbol"] == "ETHUSDT"
        assert datetime.fromisoformat(frame["ts"]) <= datetime.now(UTC)
        log_frame = json.loads(await asyncio.wait_for(raw.stdout.readline(), 20))
        assert (log_frame["topic"], log_frame["seq"]) == ("log_stream", 3)
        assert log_frame["data"]["msg"] == "order rejected"

        text = await terminal.read_until(r"notification\s+4  ERROR\s+Error in broker — order rejected")
        plain = ANSI.sub("", text)
        trade_line = r"^\d\d:\d\d:\d\d\.\d{3} trade_update\s+2  #1 ETHUSDT SELL OPEN 2@3000\.5\r?$"
        assert re.search(trade_line, plain, re.M)
        assert re.search(r"log_stream\s+3  ERROR\s+broker: order rejected", plain)
        assert re.search(r"sys_status\s+-  RUNNING cpu \S+% ram \S+%", plain)
        assert "\x1b[" in text  # coloured: stdout is a terminal and NO_COLOR is unset

        # Ctrl-C and SIGTERM both end tail with exit 0, closing its socket properly.
        human.send_signal(signal.SIGINT)
        raw.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(human.wait(), 20) == 0
        assert await asyncio.wait_for(raw.wait(), 20) == 0
        assert "Traceback" not in (await human.stderr.read()).decode() + (await raw.stderr.read()).decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        terminal.close()
        hub.kill()


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty, open(tmp_path / "out.txt", "w") as plain_file:
            monkeypatch.delenv("NO_COLOR", raising=False)
            monkeypatch.setenv("TERM", "xterm")
            assert use_colour(tty)
            assert not use_colour(plain_file)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_colour(tty)
    finally:
        os.close(master)
        os.close(slave)


async def test_doctor_spots_a_disabled_trigger(db: asyncpg.Connection) -> None:
    assert (await check_triggers(db)).status == "OK"
    await db.execute("ALTER TABLE logs DISABLE TRIGGER logs_event_v2")
    result = await check_triggers(db)
    assert (result.status, result.detail) == (
        "FAIL", "disabled: logs_event_v2 on logs (changes to those tables reach no client)")
    assert result.fix == "ALTER TABLE logs ENABLE TRIGGER logs_event_v2;"


def test_tail_token_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prod = hub_settings(NO_DB, data_dir=tmp_path)
    dev = hub_settings(NO_DB, data_dir=tmp_path, dev=True)
    link = "http://127.0.0.1:8000/?token=from-link"
    monkeypatch.delenv("HUB_TOKEN", raising=False)
    assert resolve_token("explicit", link, prod) == "explicit"
    assert resolve_token(None, link, prod) == "from-link"  # the dashboard link printed by `serve --demo`
    monkeypatch.setenv("HUB_TOKEN", "from-env")
    assert resolve_token(None, link, prod) == "from-env"
    assert resolve_token("explicit", link, prod) == "explicit"
    monkeypatch.delenv("HUB_TOKEN")
    with pytest.raises(ConfigError, match="no token: pass --token or set HUB_TOKEN"):
        resolve_token(None, "http://127.0.0.1:8000", prod)
    minted = resolve_token(None, "http://127.0.0.1:8000", dev)
    assert callable(minted)  # minted afresh for every connection
    assert Verifier(prod, SECRET).verify(minted()).subject == "dev-tail"


def test_printed_urls_use_an_openable_host() -> None:
    from service.settings import display_host

    assert [display_host(h) for h in ("0.0.0.0", "::", "", "10.1.2.3", "::1", "[::1]", "hub.local")] == [
        "127.0.0.1", "127.0.0.1", "127.0.0.1", "10.1.2.3", "[::1]", "[::1]", "hub.local"]


def test_doctor_masks_passwords_wherever_the_dsn_carries_them() -> None:
    from service.doctor import mask_dsn

    assert mask_dsn("postgresql://bot:s3cret@db:5432/zepix") == "postgresql://bot:***@db:5432/zepix"
    assert mask_dsn("postgresql://bot@db/zepix?sslmode=require&password=s3cret") == \
        "postgresql://bot@db/zepix?sslmode=require&password=***"
    assert mask_dsn("postgresql:///zepix?host=/run/pg&password=s3cret#x") == \
        "postgresql:///zepix?host=/run/pg&password=***#x"
