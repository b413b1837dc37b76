"""Run Alembic from the hub: upgrade to head, print the SQL, report the current revision."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from . import bundle
from .errors import ConfigError, DatabaseSetupError

log = logging.getLogger(__name__)


def alembic_config(dsn: str | None = None) -> Config:
    # alembic.ini's prepend_sys_path puts its own folder first on sys.path: the revisions' `import
    # migrations.sqlfiles` then finds the migrations/ that sits beside it, in a checkout as in a wheel.
    cfg = Config(str(bundle.alembic_ini()))
    cfg.set_main_option("script_location", str(bundle.migrations_dir()))
    if dsn:
        from .database import sqlalchemy_url

        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Blocking (Alembic runs its own event loop): call off the loop.

    Raises ConfigError for an unknown revision and DatabaseSetupError for a database error, each one line.
    """
    from sqlalchemy.exc import DBAPIError

    from .database import describe_error

    try:
        command.upgrade(alembic_config(dsn), _checked(revision))
    except (CommandError, AssertionError, ValueError) as exc:  # Alembic asserts on some malformed revisions
        raise ConfigError(f"cannot migrate to revision {revision!r}: {str(exc) or 'malformed revision'}") from None
    except DBAPIError as exc:
        # SQLAlchemy wraps the driver's error; the asyncpg one (its cause) says what went wrong.
        cause = exc.orig.__cause__ if exc.orig is not None and exc.orig.__cause__ is not None else exc.orig
        raise DatabaseSetupError(f"cannot migrate {describe_error(cause or exc, dsn)}") from None


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)


def offline_sql(revision_range: str = "head") -> str:
    """The SQL a migration would run, for review (Alembic offline mode)."""
    out = io.StringIO()
    cfg = alembic_config("postgresql://offline/placeholder")
    cfg.stdout = out
    try:
        with redirect_stdout(out):
            command.upgrade(cfg, _checked(revision_range), sql=True)
    except (CommandError, AssertionError, ValueError) as exc:
        raise ConfigError(f"cannot print the SQL for revision {revision_range!r}: {str(exc) or 'malformed revision'}"
                          ) from None
    return out.getvalue()


def _checked(revision: str) -> str:
    """Alembic asserts (a traceback) on an empty revision instead of saying what is wrong."""
    parts = revision.split(":")
    if len(parts) > 2 or any(not part.strip() for part in parts):
        raise ConfigError(f"invalid revision {revision!r}: use head, a revision id, or a range such as base:head")
    return revision.strip()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this hub knows, head included."""
    return {r.revision for r in ScriptDirectory.from_config(alembic_config()).iterate_revisions("head", "base")}


async def current_revision(conn: asyncpg.Connection) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    value = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
    return str(value) if value is not None else None


def require_migrated(dsn: str) -> None:
    """Refuse, in one line, to serve a database that was never migrated (with HUB_AUTO_MIGRATE=false): the
    hub's startup would otherwise fail inside uvicorn's lifespan, which prints a traceback."""
    import asyncio

    from .database import describe_error

    async def check() -> str | None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await current_revision(conn)
        finally:
            await conn.close()

    try:
        revision = asyncio.run(check())
    except (asyncpg.PostgresError, OSError) as exc:
        raise DatabaseSetupError(f"cannot serve {describe_error(exc, dsn)}") from None
    if revision is None:
        raise DatabaseSetupError("the database is not migrated and HUB_AUTO_MIGRATE is false: "
                                 "run zepix-hub migrate first")
    head = head_revision()
    if revision != head and revision in known_revisions():
        # This hub's queries need what the newer migrations create (event_log_epoch since 0005). A database
        # ahead of the hub is fine: old code keeps working across a migration (versioned SQL functions).
        raise DatabaseSetupError(f"the database is at migration {revision}, this hub needs {head}, and "
                                 "HUB_AUTO_MIGRATE is false: run zepix-hub migrate first")
