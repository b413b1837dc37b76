"""The hub as an operator installs it: a built wheel in a fresh virtual environment, run from an empty directory.

The wheel is built once per run; the new environment gets the test environment's dependencies through a .pth
file (no index, no download) and the wheel itself with --no-deps, so the whole setup costs a few seconds.
Nothing of the checkout is importable from there: the test proves it by asking where `service` came from.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from service.store import migrate
from service.store.embedded import stop_embedded
from tests.hubs import SECRET
from tests.pg import PgServer, open_tempdir

ROOT = Path(__file__).resolve().parent.parent
SHARED = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Installed:
    bin: Path
    site: Path

    def env(self, **extra: str) -> dict[str, str]:
        # Only what the test sets: the runner's HUB_*, DATABASE_URL or PYTHONPATH must not leak in.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HUB_") and k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HUB_LOG_LEVEL="WARNING", **extra)
        return env

    def run(self, cwd: Path, env: dict[str, str], *args: str, within: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "zepix-hub"), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=within, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools' in-tree build/ would otherwise keep (and ship) files deleted since.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".zepix-hub", "test-artifacts", ".*_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                            str(base / "dist"), str(source)], capture_output=True, text=True, timeout=170)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (base / "dist").glob("zepix_hub-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The dependencies, from the test environment: a plain path line (its .pth files, among them the editable
    # install's finder that would map `service` to the checkout, are not run).
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-index", "--no-compile", str(wheel)],
                             capture_output=True, text=True, timeout=120, cwd=base)
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(venv / "bin", site)


async def _serve(installed: Installed, cwd: Path, env: dict[str, str],
                 *flags: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start the installed `zepix-hub serve --port 0 [flags]`; return it and the URL line it printed."""
    proc = await asyncio.create_subprocess_exec(
        str(installed.bin / "zepix-hub"), "serve", "--port", "0", *flags, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    output = ""
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), max(0.01, deadline - time.monotonic()))).decode()
        assert line, f"serve ended before it was live:\n{output}"
        output += line
        if re.search(r"live|\?token=", line) and "http://" in line:
            return proc, output + (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()


async def _trade_arrives(ws_base: str, token: str, writer_dsn: str) -> None:
    """A trade inserted by plain SQL reaches a /ws/live client."""
    symbol = f"WHL{uuid.uuid4().hex[:6].upper()}"
    async with websockets.connect(f"{ws_base}ws/live?token={token}&topics=trade_update", open_timeout=10) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
        conn = await asyncpg.connect(writer_dsn)
        try:
            await conn.execute("INSERT INTO trades (symbol, side, quantity, entry_price) VALUES ($1, 'BUY', 1, 100)",
                               symbol)
        finally:
            await conn.close()
        deadline = time.monotonic() + 20
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
            if frame.get("topic") == "trade_update":
                assert frame["data"]["trade"]["symbol"] == symbol and isinstance(frame["seq"], int), frame
                return


async def _stop(proc: asyncio.subprocess.Process, sig: int) -> str:
    assert proc.stdout is not None
    proc.send_signal(sig)
    rest = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    assert await asyncio.wait_for(proc.wait(), 30) == 0, rest
    return rest


def _where_service_comes_from(installed: Installed, cwd: Path, env: dict[str, str]) -> Path:
    found = subprocess.run([str(installed.bin / "python"), "-c", "import service.store.bundle as b; print(b.root())"],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return Path(found.stdout.strip())


@pytest.fixture
def shared_database() -> Iterator[str]:
    """A uniquely named database on the shared server at 127.0.0.1:5432, dropped afterwards."""
    name = f"zepix_wheel_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(SHARED, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432 ({exc})")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def test_the_wheel_migrates_serves_and_passes_doctor_against_a_server(
        installed: Installed, shared_database: str, tmp_path: Path) -> None:
    empty = tmp_path / "anywhere"
    empty.mkdir()
    env = installed.env(HUB_DATABASE_URL=shared_database, HUB_JWT_SECRET=SECRET, HUB_DEV="false")
    assert _where_service_comes_from(installed, empty, env).is_relative_to(installed.site)

    migrated = await asyncio.to_thread(installed.run, empty, env, "migrate")
    assert migrated.returncode == 0 and "migrated to head" in migrated.stdout, migrated
    env["HUB_AUTO_MIGRATE"] = "false"  # as a deployment runs it: migrate first, then serve
    proc, printed = await _serve(installed, empty, env)
    try:
        base = re.search(r"(http://127\.0\.0\.1:\d+/)", printed)
        assert base is not None, printed
        async with httpx.AsyncClient(timeout=10) as http:  # the dashboard's files are in the wheel too
            page = await http.get(base.group(1))
            assert page.status_code == 200 and "static/app.js?v=" in page.text
            script = await http.get(base.group(1) + re.findall(r'src="(static/app\.js\?v=\w+)"', page.text)[0])
            assert script.status_code == 200 and len(script.content) > 1000
        token = (await asyncio.to_thread(installed.run, empty, env, "token", "--sub", "wheel")).stdout.strip()
        await _trade_arrives(base.group(1).replace("http://", "ws://"), token, shared_database)
        doctor = await asyncio.to_thread(installed.run, empty, env, "doctor")
        assert doctor.returncode == 0 and "checks passed" in doctor.stdout, doctor
        assert "not managed by zepix-hub" in await _stop(proc, signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert sorted(p.name for p in empty.iterdir()) == []  # nothing written where it ran


@pytest.fixture
def open_empty_dir() -> Iterator[Path]:
    """An empty directory the installed hub runs in (its ./.zepix-hub must be reachable by the server)."""
    with open_tempdir("zepix-wheel-") as empty:
        yield empty


async def test_the_wheel_runs_on_the_embedded_database_from_an_empty_directory(
        installed: Installed, open_empty_dir: Path) -> None:
    empty = open_empty_dir
    env = installed.env()  # nothing configured but dev mode, asked for: the embedded database and a dev token
    data = empty / ".zepix-hub"
    proc: asyncio.subprocess.Process | None = None
    try:
        migrated = await asyncio.to_thread(installed.run, empty, env, "migrate")
        assert migrated.returncode == 0 and "migrated to head" in migrated.stdout, migrated
        proc, printed = await _serve(installed, empty, env, "--dev")
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", printed)
        assert found is not None, printed
        await _trade_arrives(found.group(1).replace("http://", "ws://"), found.group(2),
                             f"postgresql://postgres@/postgres?host={data / 'pgdata'}")
        # doctor checks the dev hub that serve --dev ran: the dev secret is its key only in dev mode
        doctor = await asyncio.to_thread(installed.run, empty, {**env, "HUB_DEV": "true"}, "doctor")
        assert doctor.returncode == 0 and "checks passed" in doctor.stdout, doctor
        # migrate started the embedded server: serve leaves it running, and says so
        assert "was running before this serve and is left running" in await _stop(proc, signal.SIGINT)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(stop_embedded, data)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_exactly_what_the_tests_run_with() -> None:
    """Every distribution zepix-hub[test] pulls in, however indirectly, is pinned in constraints.txt at the
    version installed here (CI installs with -c constraints.txt; after a dependency change: bash .ci/lock)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep, f"constraints.txt: not an exact pin: {line!r}"
            pins[_canonical(name)] = pinned.strip()
    assert "zepix-hub" not in pins  # the project itself is what is being tested, not a dependency

    needed: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [("zepix-hub", frozenset({"test"}))]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            key = _canonical(req.name)
            if key not in needed:
                needed[key] = metadata.version(req.name)
                todo.append((req.name, frozenset(req.extras)))
    unpinned = sorted(set(needed) - set(pins))
    assert not unpinned, f"not in constraints.txt (run bash .ci/lock): {unpinned}"
    differ = {k: (pins[k], v) for k, v in needed.items() if pins[k] != v}
    assert not differ, f"installed versions differ from constraints.txt (pinned, installed): {differ}"


def _unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's `Key=value` lines as {"Section.Key": [values...]} (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_the_sample_systemd_units_migrate_first_restart_and_verify(installed: Installed, tmp_path: Path) -> None:
    systemd = ROOT / "docs" / "systemd"
    hub, migrate = _unit(systemd / "zepix-hub.service"), _unit(systemd / "zepix-hub-migrate.service")
    assert hub["Service.Restart"] == ["on-failure"] and hub["Service.EnvironmentFile"]
    assert "HUB_AUTO_MIGRATE=false" in hub["Service.Environment"]
    assert "HUB_AUTO_MIGRATE=false" in (systemd / "hub.env").read_text().splitlines()
    assert hub["Service.ExecStart"][0].split()[1:2] == ["serve"]
    # The migration: a separate oneshot unit the hub requires and waits for, with its own credentials.
    for key in ("Unit.Requires", "Unit.After"):
        assert "zepix-hub-migrate.service" in hub[key][0].split(), key
    assert migrate["Service.Type"] == ["oneshot"] and migrate["Service.ExecStart"][0].split()[1:] == ["migrate"]
    assert migrate["Service.EnvironmentFile"] != hub["Service.EnvironmentFile"]
    assert "/docs/deploy.md" in hub["Unit.Documentation"][0]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were checked for content only")
    # systemd-analyze checks that ExecStart= is executable: point the copies at the installed wheel's script.
    for name in ("zepix-hub.service", "zepix-hub-migrate.service"):
        text = (systemd / name).read_text().replace("/opt/zepix-hub/bin/", f"{installed.bin}/")
        (tmp_path / name).write_text(text)
    verify = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "zepix-hub.service"),
                             str(tmp_path / "zepix-hub-migrate.service")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values but says so: any output is a finding.
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify


def test_the_wheel_carries_every_file_of_sql_and_migrations(installed: Installed) -> None:
    """A file added to sql/ or migrations/ that the package-data globs in pyproject.toml miss would work from a
    checkout and break only in a deployment."""
    shipped = installed.site / "service" / "_db"
    expected = {"alembic.ini"} | {
        str(path.relative_to(ROOT)) for folder in ("sql", "migrations") for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts}
    missing = sorted(name for name in expected if not (shipped / name).is_file())
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools.package-data]): {missing}"
    assert (shipped / "sql" / "queries.sql").read_bytes() == (ROOT / "sql" / "queries.sql").read_bytes()


async def test_alembic_upgrade_head_from_a_checkout_still_works(pg: PgServer) -> None:
    """The top-level layout stays what DBAs and plain Alembic expect: alembic.ini at the root of a checkout."""
    name = await pg.create_database(prefix="zepix_alembic")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k != "DATABASE_URL"}
        env["HUB_DATABASE_URL"] = pg.dsn(name)
        run = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "alembic", "upgrade", "head"],
                                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        conn = await asyncpg.connect(pg.dsn(name))
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == migrate.head_revision()
        finally:
            await conn.close()
    finally:
        await pg.drop_database(name)


def test_the_wheel_carries_no_benchmark(installed: Installed, tmp_path: Path) -> None:
    """The benchmark (bench/, with its hand-written RFC 6455 client and its netlink socket reader) runs from a
    checkout only (ADR 0013): a deployment gets neither, and `zepix-hub bench` there says where it runs."""
    (record,) = installed.site.glob("zepix_hub-*.dist-info/RECORD")
    shipped = [line.split(",")[0] for line in record.read_text().splitlines() if line]
    assert any(name.startswith("service/") for name in shipped), shipped  # the listing is the wheel's
    assert not [name for name in shipped if "bench" in Path(name).parts], shipped
    for name in shipped:
        if name.endswith(".py"):
            text = (installed.site / name).read_text()
            assert "AF_NETLINK" not in text, f"{name} reads netlink"
            assert "Sec-WebSocket-Key:" not in text, f"{name} writes a WebSocket client handshake by hand"

    empty = tmp_path / "anywhere"
    empty.mkdir()
    env = installed.env(HUB_DATABASE_URL="postgresql://nobody@127.0.0.1:1/not_used")
    run = installed.run(empty, env, "bench", "--quick", within=60)
    assert run.returncode == 2, run
    assert "Traceback" not in run.stdout + run.stderr and run.stdout == "", run
    assert run.stderr.count("\n") == 1 and "source checkout" in run.stderr, run.stderr
    assert sorted(p.name for p in empty.iterdir()) == []
