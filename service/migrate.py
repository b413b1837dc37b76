"""Run Alembic from the hub: upgrade to head, print the SQL, report the current revision."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"

log = logging.getLogger(__name__)


def alembic_config(dsn: str | None = None) -> Config:
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if dsn:
        from .database import sqlalchemy_url

        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Blocking (Alembic runs its own event loop): call off the loop."""
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)


def offline_sql(revision_range: str = "head") -> str:
    """The SQL a migration would run, for review (Alembic offline mode)."""
    out = io.StringIO()
    cfg = alembic_config("postgresql://offline/placeholder")
    cfg.stdout = out
    with redirect_stdout(out):
        command.upgrade(cfg, revision_range, sql=True)
    return out.getvalue()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(conn: asyncpg.Connection) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    value = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
    return str(value) if value is not None else None
