"""Run Alembic from the hub: upgrade to head, print the SQL, report the current revision."""

from __future__ import annotations

import asyncio
import io
import logging
from contextlib import redirect_stdout

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from ..errors import ConfigError, DatabaseSetupError
from . import bundle
from .database import describe_error, sqlalchemy_url

log = logging.getLogger(__name__)


def alembic_config(dsn: str | None = None) -> Config:
    # alembic.ini's prepend_sys_path puts its own folder first on sys.path: the revisions' `import
    # migrations.sqlfiles` then finds the migrations/ that sits beside it, in a checkout as in a wheel.
    cfg = Config(str(bundle.alembic_ini()))
    cfg.set_main_option("script_location", str(bundle.migrations_dir()))
    if dsn:
        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


#: The schemas where a look-alike function or operator could decide what the hub's SECURITY DEFINER
#: functions run: pg_catalog and zepix_hub make up the capture path's search_path and home; public holds
#: the bot's tables and hub_notify, and is the search_path of the older revisions' functions, which stay
#: for a rolling upgrade. Nobody but their owner (or a superuser) may create in any of them.
PATH_SCHEMAS = ("pg_catalog", "zepix_hub", "public")

#: Who, besides the schema's owner, the hub objects' owner and superusers, holds CREATE on those schemas.
#: The hub objects' owner: zepix_hub's, else the events table's, else the migrating role (a new database).
_CREATORS = """
WITH owner AS (
    SELECT coalesce((SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'zepix_hub'),
                    (SELECT relowner FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass('public.events')),
                    (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)) AS oid
)
SELECT n.nspname::text AS schema,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END AS grantee
  FROM pg_catalog.pg_namespace AS n
 CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) AS a
  LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
 WHERE n.nspname = ANY($1::text[]) AND a.privilege_type = 'CREATE'
   AND a.grantee <> n.nspowner AND a.grantee <> (SELECT oid FROM owner)
   AND NOT coalesce(r.rolsuper, false)
 ORDER BY pg_catalog.array_position($1::text[], n.nspname::text), 2
"""


async def unsafe_creators(conn: asyncpg.Connection) -> list[str]:
    """The REVOKE statements that would leave only the owner able to create in PATH_SCHEMAS (none: safe)."""
    rows = await conn.fetch(_CREATORS, list(PATH_SCHEMAS))
    return [f"REVOKE CREATE ON SCHEMA {r['schema']} FROM {r['grantee']}" for r in rows]


def creators_problem(revokes: list[str]) -> str:
    """One line: who may plant look-alikes where the hub's functions look names up, and what to run."""
    return ("roles other than the owner may create objects in a schema the hub's functions resolve names in, "
            "so they could run their own code as the owner; run as a superuser or the schema's owner: "
            + "; ".join(revokes))


def check_schemas(dsn: str) -> None:
    """Refuse (DatabaseSetupError, one line) a database where another role may create in PATH_SCHEMAS."""
    async def check() -> list[str]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await unsafe_creators(conn)
        finally:
            await conn.close()

    try:
        revokes = asyncio.run(check())
    except (asyncpg.PostgresError, OSError) as exc:
        raise DatabaseSetupError(f"cannot migrate {describe_error(exc, dsn)}") from None
    if revokes:
        raise DatabaseSetupError(f"refusing to migrate: {creators_problem(revokes)}")


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Blocking (Alembic runs its own event loop): call off the loop.

    Raises ConfigError for an unknown revision and DatabaseSetupError for a database error, each one line,
    and refuses (DatabaseSetupError) a database where roles other than the owner may create objects in a
    schema of PATH_SCHEMAS.
    """
    check_schemas(dsn)
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
