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
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import websockets
from jose import jwt

from service.api.auth import Verifier, mint
from service.cli.doctor import check_triggers
from service.cli.main import build_parser
from service.cli.tail import resolve_token, use_colour
from service.errors import ConfigError
from service.store.embedded import stop_embedded
from tests.hubs import SECRET, HubProcess, RunningHub, alive, hub_settings
from tests.pg import PgServer, open_tempdir

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


async def test_bench_runs_from_the_checkout_through_the_script_and_python_m_bench(tmp_path: Path) -> None:
    """bench/ sits beside service/, outside the wheel (ADR 0013): the editable install's `zepix-hub` script, run
    from elsewhere, and `python -m bench` in the checkout both reach it (a bad --scenarios stops it before any
    database is touched)."""
    env = cli_env(NO_DB, tmp_path)
    script = shutil.which("zepix-hub", path=str(Path(sys.executable).parent)) or shutil.which("zepix-hub")
    assert script is not None, "the zepix-hub script of `pip install -e .` is not installed"
    runs = [await asyncio.to_thread(subprocess.run, argv, cwd=cwd, env=env, capture_output=True, text=True,
                                    timeout=60, stdin=subprocess.DEVNULL)
            for argv, cwd in (([script, "bench", "--scenarios", "S9"], tmp_path),
                              ([sys.executable, "-m", "bench", "--scenarios", "S9"], ROOT))]
    for run in runs:
        assert run.returncode == 2 and "Traceback" not in run.stderr, run
        assert run.stderr.startswith("zepix-hub bench: --scenarios takes a comma-separated subset of S1,"), run
    help_ = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bench", "--help"], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert help_.returncode == 0 and "--scenarios" in help_.stdout, help_


async def test_token_prints_a_token_that_verifies(tmp_path: Path) -> None:
    env = cli_env(NO_DB, tmp_path)
    good, bad_ttl, zero_ttl, bad_topics, no_sub, short_ttl, one_s = await asyncio.gather(
        cli(env, "token", "--sub", "alice", "--topics", "log_stream,notification", "--ttl", "15m"),
        cli(env, "token", "--sub", "alice", "--ttl", "forever"),
        cli(env, "token", "--sub", "alice", "--ttl", "0s"),
        cli(env, "token", "--sub", "alice", "--topics", "log_stream,nope"),
        cli(env, "token"),
        cli(env, "token", "--sub", "alice", "--ttl", "0.1s"),
        cli(env, "token", "--sub", "alice", "--ttl", "1s"),
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
    # exp counts whole seconds: 0.1s would have minted a token that is expired on arrival.
    assert_usage_error(short_ttl, "--ttl '0.1s' is too short", "at least 1s")
    assert short_ttl.out == ""
    assert one_s.code == 0, one_s
    claims = jwt.get_unverified_claims(one_s.out.strip())
    assert claims["exp"] - claims["iat"] == 1


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
    for check in ("JWT key", "database", "migrations", "triggers", "schema privileges", "LISTEN/NOTIFY",
                  "NOTIFY queue"):
        assert any(line.startswith("OK") and f"  {check}: " in line for line in lines), (check, good.out)
    assert "all 11 checks passed" in good.out
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
    assert re.search(r"^FAIL  triggers: missing: trades_event_v3 on trades", unmigrated.out, re.M)
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
        cli(cli_env(NO_DB, tmp_path), "tail", "--token", "t", "--since", "\u0661"),  # an Arabic-Indic one
    )
    (bad_alg, no_secret, short_secret, no_token, bad_topic, bad_url, bad_since, no_dev_secret, bad_level,
     digit_one) = runs
    assert_usage_error(bad_alg, "HUB_JWT_ALGORITHMS", "'none' is never allowed")
    assert_usage_error(no_secret, "no JWT key", "HUB_JWT_SECRET")
    assert_usage_error(short_secret, "HUB_JWT_SECRET is too short")
    assert_usage_error(no_token, "no token", "HUB_TOKEN")
    assert_usage_error(bad_topic, "unknown topic 'trades'")
    assert_usage_error(bad_url, "hub URL")
    assert_usage_error(bad_since, "since must be a non-negative integer")
    assert_usage_error(no_dev_secret, "no dev secret")
    assert_usage_error(bad_level, "HUB_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    assert_usage_error(digit_one, "since must be a non-negative integer")  # the same parser as ?since=
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
    await db.execute("ALTER TABLE logs DISABLE TRIGGER logs_event_v3")
    result = await check_triggers(db)
    assert (result.status, result.detail) == (
        "FAIL", "disabled: logs_event_v3 on logs (changes to those tables reach no client)")
    assert result.fix == "ALTER TABLE logs ENABLE TRIGGER logs_event_v3;"


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
    from service.cli.doctor import mask_dsn

    assert mask_dsn("postgresql://bot:s3cret@db:5432/zepix") == "postgresql://bot:***@db:5432/zepix"
    assert mask_dsn("postgresql://bot@db/zepix?sslmode=require&password=s3cret") == \
        "postgresql://bot@db/zepix?sslmode=require&password=***"
    assert mask_dsn("postgresql:///zepix?host=/run/pg&password=s3cret#x") == \
        "postgresql:///zepix?host=/run/pg&password=***#x"


# -- bad input: one line, a non-zero exit, no traceback --------------------------------------------------------

def libpq_env(pg: PgServer, database: str) -> dict[str, str]:
    """PGHOST/PGPORT/PGUSER/PGDATABASE pointing at `database`: where libpq goes when a URL names nothing."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(pg.admin_dsn)
    host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
    return {"PGHOST": host, "PGPORT": str(parts.port or 5432), "PGUSER": parts.username or "postgres",
            "PGDATABASE": database}


BAD_DATABASE_URLS = [
    ("localhost", "must start with postgresql://"),
    ("garbage", "must start with postgresql://"),
    ("mysql://bot:s3cret@db/zepix", "must start with postgresql://"),
    ("postgresql://[::1", "invalid database URL"),
    ("postgresql://127.0.0.1:99999/zepix", "port must be 1-65535"),
    ("postgresql://127.0.0.1:abc/zepix", "port must be 1-65535"),
    ("postgresql://[::1]:0/zepix", "port must be 1-65535"),
    ("postgresql:///zepix?port=x", "port must be 1-65535"),
    # A password with an unencoded '#' or '/' breaks the URL apart: the error must show none of it.
    ("postgresql://app:s3cr#et@db/hub", "'postgresql://***@db/hub': the port must be 1-65535"),
    ("postgresql://app:s3/cr?et@db:5432/hub", "'postgresql://***@db:5432/hub'"),
]


async def test_a_database_url_that_is_not_postgres_touches_no_database(pg: PgServer, tmp_path: Path) -> None:
    # libpq's defaults point at a database of our own: a URL that slipped through would migrate this one.
    bait = await pg.create_database(prefix="review_fix")
    try:
        def env(url: str) -> dict[str, str]:
            return cli_env(url, tmp_path, **libpq_env(pg, bait))

        every_command = [("migrate",), ("prune", "--older-than", "1d"), ("demo",), ("serve", "--port", "0")]
        runs = await asyncio.gather(
            *(cli(env(url), "migrate") for url, _ in BAD_DATABASE_URLS),
            *(cli(env("localhost"), *command) for command in every_command[1:]),
            cli(env("localhost"), "doctor"),
        )
        migrates, others, doctor = runs[:len(BAD_DATABASE_URLS)], runs[len(BAD_DATABASE_URLS):-1], runs[-1]
        for (url, words), run in zip(BAD_DATABASE_URLS, migrates, strict=True):
            assert_usage_error(run, words)
            assert run.out == "" and len(run.err.splitlines()) == 1, (url, run)
            assert "s3cret" not in run.err
        for run in others:
            assert_usage_error(run, "HUB_DATABASE_URL", "must start with postgresql://")
        assert doctor.code == 1 and "Traceback" not in doctor.out + doctor.err
        assert re.search(r"^FAIL  database: the database URL .* must start with postgresql://", doctor.out, re.M)

        conn = await asyncpg.connect(pg.dsn(bait))
        try:
            created = await conn.fetchval("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        finally:
            await conn.close()
        assert created == 0, "a bad URL reached libpq's default database"
    finally:
        await pg.drop_database(bait)


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
    ("postgres://u@h/db", "postgresql://u@h/db"),
    ("postgresql+asyncpg://u:p@h:1/db?sslmode=require", "postgresql://u:p@h:1/db?sslmode=require"),
    ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg"),
    ("postgresql://u@[::1]:65535,h2/db", "postgresql://u@[::1]:65535,h2/db"),
    ("postgresql:///db", "postgresql:///db"),
])
def test_database_urls_the_hub_accepts(url: str, expected: str) -> None:
    from service.store.database import normalise_url, sqlalchemy_url

    assert normalise_url(url) == expected
    assert sqlalchemy_url(url) == "postgresql+asyncpg://" + expected[len("postgresql://"):]


@pytest.mark.parametrize("url, words", BAD_DATABASE_URLS)
def test_database_urls_the_hub_refuses(url: str, words: str) -> None:
    from service.store.database import sqlalchemy_url

    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        sqlalchemy_url(url)  # what Alembic is handed: the same check as the hub's own connections
    assert "s3cr" not in str(info.value)


SETTING_ERRORS = [
    # resume_cap + 1 reaches SQL as a bigint: 2**63 - 1 made every resume close 1011.
    ({"HUB_RESUME_CAP": str(2**63 - 1)}, "resume_cap: Input should be less than or equal to 1000000000"),
    ({"HUB_POOL_MAX": str(10**12)}, "pool_max: Input should be less than or equal to 1000"),
    ({"HUB_QUEUE_MAX_FRAMES": str(2**63)}, "queue_max_frames: Input should be less than or equal to"),
    # inf/nan would reach the welcome frame as Infinity/NaN, which browsers' JSON.parse rejects.
    ({"HUB_HEARTBEAT_S": "inf"}, "heartbeat_s: Input should be a finite number"),
    ({"HUB_HEARTBEAT_S": "nan"}, "heartbeat_s: Input should be a finite number"),
    ({"HUB_SEND_TIMEOUT_S": "Infinity"}, "send_timeout_s: Input should be a finite number"),
    ({"HUB_CLIENT_RATE": "-inf"}, "client_rate: Input should be a finite number"),
]


async def test_out_of_range_settings_are_configuration_errors(tmp_path: Path) -> None:
    runs = await asyncio.gather(*(cli(cli_env(NO_DB, tmp_path, **env), "serve", "--port", "0")
                                  for env, _ in SETTING_ERRORS))
    for (env, words), run in zip(SETTING_ERRORS, runs, strict=True):
        assert_usage_error(run, "invalid configuration", words)
        assert len(run.err.splitlines()) == 1, (env, run.err)


def test_frames_never_carry_nan_or_infinity() -> None:
    from service.hub import frames

    assert frames.dumps({"heartbeat_s": 5.0}) == '{"heartbeat_s":5.0}'
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError):
            frames.dumps({"heartbeat_s": bad})


def _rsa_pem(tmp: Path) -> tuple[Path, Path, Path]:
    """A fresh RSA pair as PEM files, and the public key as a binary (DER) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public, der = tmp / "private.pem", tmp / "public.pem", tmp / "public.der"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))
    der.write_bytes(key.public_key().public_bytes(serialization.Encoding.DER, spki))
    return private, public, der


async def test_bad_jwt_key_material_is_a_configuration_error(tmp_path: Path) -> None:
    private, public, der = _rsa_pem(tmp_path)
    garbage_pem = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    garbage_private = garbage_pem.replace("PUBLIC", "PRIVATE")

    def env(public_key: str, private_key: str = str(private)) -> dict[str, str]:
        return cli_env(NO_DB, tmp_path, HUB_JWT_SECRET="", HUB_JWT_ALGORITHMS="RS256",
                       HUB_JWT_PUBLIC_KEY=public_key, HUB_JWT_PRIVATE_KEY=private_key)

    # (environment, command, words of the one error line; "" = the command works)
    cases: list[tuple[dict[str, str], tuple[str, ...], str]] = [
        (env(str(public)), ("token", "--sub", "a"), ""),
        (env(garbage_pem), ("serve", "--port", "0"), "HUB_JWT_PUBLIC_KEY is not a valid RS256 key"),
        (env(str(der)), ("serve", "--port", "0"), "HUB_JWT_PUBLIC_KEY: key file"),
        (env(str(public), garbage_private), ("token", "--sub", "a"), "HUB_JWT_PRIVATE_KEY is not a valid RS256 key"),
        (env(str(public), str(der)), ("token", "--sub", "a"), "is not PEM text"),
        (env(str(public), str(public)), ("token", "--sub", "a"), "HUB_JWT_PRIVATE_KEY holds a public key"),
        (env(str(public), "bm90IGEga2V5" * 30), ("token", "--sub", "a"), "not PEM text, and no file by that name"),
        (cli_env(NO_DB, tmp_path, HUB_JWT_SECRET=garbage_pem + "x" * 32), ("serve", "--port", "0"),
         "HUB_JWT_SECRET is not a valid HS256 secret"),
    ]
    runs = await asyncio.gather(*(cli(e, *command) for e, command, _ in cases))
    for (_, command, words), run in zip(cases, runs, strict=True):
        if not words:
            assert run.code == 0, run
            pem = public.read_text()
            assert Verifier(hub_settings(NO_DB, jwt_algorithms=["RS256"]), pem).verify(run.out.strip()).subject == "a"
        else:
            assert_usage_error(run, words)
            assert len(run.err.splitlines()) == 1, (command, run.err)
            assert "bm90IGEga2V5" not in run.err  # key material is never echoed

    doctors = await asyncio.gather(cli(env(garbage_pem), "doctor"), cli(env(str(public), str(der)), "doctor"))
    for run, words in zip(doctors, ("HUB_JWT_PUBLIC_KEY is not a valid RS256 key", "is not PEM text"), strict=True):
        assert run.code == 1 and "Traceback" not in run.out + run.err
        assert re.search(rf"^FAIL  JWT key: .*{re.escape(words)}", run.out, re.M), run.out


async def test_serve_that_cannot_bind_says_so_in_one_line(dsn: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(dsn, tmp_path, HUB_AUTO_MIGRATE="false")
        in_use, no_host = await asyncio.gather(cli(env, "serve", "--port", str(port)),
                                               cli(env, "serve", "--host", "no-such-host.invalid", "--port", "0"))
    for run, where in ((in_use, f"127.0.0.1:{port}"), (no_host, "no-such-host.invalid:0")):
        assert run.code == 1, run
        assert "Traceback" not in run.err and "Task exception was never retrieved" not in run.err, run.err
        last = run.err.rstrip().splitlines()[-1]
        assert last == f"zepix-hub: the hub could not start on {where} (see the error above)", run.err


async def test_missing_or_unmigrated_databases_and_bad_revisions_are_one_line(
        dsn: str, pg: PgServer, tmp_path: Path) -> None:
    empty = await pg.create_database(prefix="review_fix")  # reachable, never migrated
    missing = pg.dsn("review_fix_no_such_database")
    try:
        cases: list[tuple[str, tuple[str, ...], int, str]] = [
            (missing, ("migrate",), 1, '"review_fix_no_such_database" does not exist: create it'),
            (missing, ("prune", "--older-than", "1d"), 1, '"review_fix_no_such_database" does not exist'),
            (missing, ("demo",), 1, '"review_fix_no_such_database" does not exist'),
            (pg.dsn(empty), ("prune", "--older-than", "1d"), 1, "is not migrated"),
            (pg.dsn(empty), ("demo",), 1, "run zepix-hub migrate first"),
            (pg.dsn(empty), ("migrate", "--revision", "garbage"), 2, "Can't locate revision identified by 'garbage'"),
            (NO_DB, ("sql", "--revision", "garbage"), 2, "Can't locate revision identified by 'garbage'"),
            (NO_DB, ("sql", "--revision", ""), 2, "invalid revision ''"),
            (NO_DB, ("sql", "--revision", "a:b:c"), 2, "invalid revision 'a:b:c'"),
            (NO_DB, ("sql", "--revision", "@"), 2, "malformed revision"),
            (dsn, ("prune", "--older-than", "1d", "--batch", "99999999999999999999"), 2, "must be 1-1000000"),
            (NO_DB, ("serve", "--workers", "100000"), 2, "must be 1-256"),
            (NO_DB, ("demo", "--rate", "inf"), 2, "must be a finite number more than 0"),
        ]
        runs = await asyncio.gather(*(cli(cli_env(url, tmp_path), *command) for url, command, _, _ in cases))
        for (_, command, code, words), run in zip(cases, runs, strict=True):
            assert run.code == code, (command, run)
            assert "Traceback" not in run.out + run.err, (command, run.err)
            assert words in run.err, (command, words, run.err)
            # One error line (argparse puts its usage lines before it).
            assert len([line for line in run.err.splitlines() if line.startswith("zepix-hub")]) == 1, run.err
        # serve without auto-migration: refused before uvicorn starts (its lifespan would print a traceback)
        for url, words in ((pg.dsn(empty), "run zepix-hub migrate first"), (missing, "does not exist")):
            run = await cli(cli_env(url, tmp_path, HUB_AUTO_MIGRATE="false"), "serve", "--port", "0")
            assert run.code == 1 and "Traceback" not in run.out + run.err and words in run.err, run
            assert len([line for line in run.err.splitlines() if line.startswith("zepix-hub")]) == 1, run.err
        conn = await asyncpg.connect(pg.dsn(empty))
        try:  # a refused revision migrated nothing
            assert await conn.fetchval("SELECT to_regclass('alembic_version')") is None
        finally:
            await conn.close()
    finally:
        await pg.drop_database(empty)


async def test_tail_refuses_bad_urls_and_tokens_without_echoing_the_token(tmp_path: Path) -> None:
    token = mint(hub_settings(NO_DB), SECRET, subject="tail", ttl_s=600)
    cases: list[tuple[tuple[str, ...], str]] = [
        (("--url", "http://[::1"), "malformed host or port"),
        (("--url", f"http://[::1/?token={token}"), "malformed host or port"),
        (("--url", "http://127.0.0.1:99999", "--token", token), "malformed host or port"),
        (("--url", "http://127.0.0.1:abc", "--token", token), "malformed host or port"),
        (("--url", "http://127.0.0.1:1", "--token", token[:20] + "\n" + token[20:]), "token must be printable ASCII"),
        (("--url", "http://127.0.0.1:1", "--token", token[:20] + "\t" + token[20:]), "token must be printable ASCII"),
        (("--url", "http://127.0.0.1:1", "--token", token[:20] + " " + token[20:]), "token must be printable ASCII"),
        (("--url", "http://127.0.0.1:1", "--token", token[:20] + "\x1b" + token[20:]), "token must be printable ASCII"),
    ]
    runs = await asyncio.gather(*(cli(cli_env(NO_DB, tmp_path), "tail", *args, within=20) for args, _ in cases))
    for (args, words), run in zip(cases, runs, strict=True):
        assert_usage_error(run, words)
        assert len(run.err.splitlines()) == 1, (args, run.err)
        assert "eyJ" not in run.err and token[25:45] not in run.err, run.err


async def test_serve_demo_the_readme_command_end_to_end(embedded_home: Path) -> None:
    """The README's first command on the embedded database: the printed dev-token URL serves the dashboard
    and its live stream, the demo feed outlives losing its connection, Ctrl-C exits 0, stop-db stops it."""
    data = embedded_home / "data"
    env = cli_env("", embedded_home, HUB_DEV="", HUB_JWT_SECRET="", HUB_LOG_LEVEL="INFO")  # as a newcomer runs it
    proc = await spawn(env, "serve", "--demo", "--port", "0", "--rate", "20")
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())  # drained all along: a full pipe would stall the hub
    try:
        line = await read_line_until(proc.stdout, r"\?token=", within=180)  # includes the embedded initdb
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert found is not None, line
        base, token = found.group(1), found.group(2)
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(base)
        assert page.status_code == 200 and "<html" in page.text.lower()

        ws_url = base.replace("http://", "ws://") + f"ws/live?token={token}&topics=trade_update,log_stream"
        async with websockets.connect(ws_url, open_timeout=10) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            seqs = await _event_seqs(ws, 5)
            # The demo's database connection dies (a DBA ends it, PostgreSQL restarts): the feed reconnects.
            db = await asyncpg.connect(f"postgresql://postgres@/postgres?host={data / 'pgdata'}")
            try:
                killed = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                           "WHERE application_name = 'zepix-hub-demo'")
            finally:
                await db.close()
            assert killed == 1
            try:
                later = await _event_seqs(ws, 5, within=60)
            except TimeoutError:
                proc.send_signal(signal.SIGINT)
                await asyncio.wait_for(proc.wait(), 30)
                err = (await asyncio.wait_for(stderr, 10)).decode()
                raise AssertionError(f"no event 60 s after the demo lost its connection: {err[-3000:]}") from None
            assert later[0] > seqs[-1]
        postmaster = psutil.Process(int((data / "pgdata" / "postmaster.pid").read_text().split()[0]))
        family = [postmaster, *postmaster.children(recursive=True)]  # checkpointer, walwriter, backends, ...
        assert len(family) > 1 and _postgres_of(data)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        err = (await asyncio.wait_for(stderr, 10)).decode()
        assert "Traceback" not in err and "demo feed reconnected" in err, err[-2000:]
        assert token not in err  # the dev token is printed once, to stdout, never logged

        # Ctrl-C stopped the embedded PostgreSQL this serve started, said so, and left no postgres behind.
        out = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        assert "the embedded PostgreSQL it started" in out and "is stopped" in out, out
        assert not [p for p in family if alive(p)]
        assert _postgres_of(data) == []
        stop = await cli(env, "stop-db")
        assert stop.code == 0 and "no embedded PostgreSQL running" in stop.out, stop
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.cancel()
        await asyncio.to_thread(stop_embedded, data)


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    with open_tempdir("zepix-cli-") as home:
        yield home


def _postgres_of(data: Path) -> list[str]:
    """Command lines of the live processes started on this data dir (the postmaster carries -D DIR)."""
    pgdata = str(data / "pgdata")
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if pgdata in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(cmdline)
        except psutil.Error:
            pass
    return found



async def test_serve_leaves_running_an_embedded_database_it_did_not_start(embedded_home: Path) -> None:
    """A database that was running before (here: started by migrate) outlives a serve's Ctrl-C."""
    data = embedded_home / "data"
    env = cli_env("", embedded_home, HUB_DEV="", HUB_JWT_SECRET="")
    try:
        migrated = await cli(env, "migrate", within=180)
        assert migrated.code == 0, migrated
        assert _postgres_of(data)
        proc = await spawn(env, "serve", "--dev", "--port", "0")
        assert proc.stdout is not None
        try:
            await read_line_until(proc.stdout, r"\?token=", within=60)
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            out = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert "was running before this serve and is left running" in out, out
        assert _postgres_of(data)
    finally:
        await asyncio.to_thread(stop_embedded, data)
    assert _postgres_of(data) == []


async def test_serve_leaves_running_the_database_it_started_while_others_use_it(embedded_home: Path) -> None:
    """Another session (a second hub, a psql) on the embedded PostgreSQL a serve started: Ctrl-C does not cut
    it off."""
    data = embedded_home / "data"
    env = cli_env("", embedded_home, HUB_DEV="", HUB_JWT_SECRET="")
    proc = await spawn(env, "serve", "--dev", "--port", "0")
    assert proc.stdout is not None
    try:
        await read_line_until(proc.stdout, r"\?token=", within=180)
        other = await asyncpg.connect(f"postgresql://postgres@/postgres?host={data / 'pgdata'}")
        try:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            out = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
            assert "is left running: 1 other session(s) use it" in out, out
            assert await other.fetchval("SELECT 1") == 1
        finally:
            await other.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(stop_embedded, data)
    assert _postgres_of(data) == []


async def _event_seqs(ws: websockets.ClientConnection, n: int, within: float = 30) -> list[int]:
    """The seqs of the next `n` persisted events (hang guard `within`)."""
    seqs: list[int] = []
    deadline = time.monotonic() + within
    while len(seqs) < n:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if frame.get("type") == "event" and frame.get("seq") is not None:
            seqs.append(frame["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == n
    return seqs
