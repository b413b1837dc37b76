"""Where the database is and how to reach it: the DSN, the pool, the dedicated connections.

`resolve_dsn` returns HUB_DATABASE_URL / DATABASE_URL, or starts the embedded
server. Pools are created by the app's lifespan and closed by it; nothing here
keeps a live resource in a module global.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .embedded import start_embedded, with_database
from .settings import Settings

APPLICATION_NAME = "zepix-hub"

#: What a read meets while PostgreSQL restarts or is away (TimeoutError is an OSError): HTTP answers 503 and a
#: resume closes 1013, both meaning "retry shortly"; any other database error is a bug and surfaces as one.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError, OSError,  # too many connections, out of memory, disk full
)


def resolve_dsn(settings: Settings) -> str:
    """The libpq-style DSN the hub uses; starts the embedded server when no URL is configured."""
    if settings.database_url:
        return normalise_url(settings.database_url)
    return start_embedded(settings.data_dir).dsn("postgres")


def normalise_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+asyncpg://) as well as plain ones."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def sqlalchemy_url(url: str) -> str:
    return "postgresql+asyncpg://" + normalise_url(url)[len("postgresql://"):]


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb arrives as text we pass straight through; decode only where asked.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, settings: Settings, *, role: str = "pool") -> asyncpg.Pool:
    """A pool for event reads and snapshots. Owned and closed by the caller (the app's lifespan)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(settings.pool_min, settings.pool_max),
        max_size=settings.pool_max,
        server_settings={"application_name": f"{APPLICATION_NAME}-{role}"},
        init=_init_connection,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(dsn: str, *, role: str, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """A dedicated connection (the listener's, the CLI's), closed by the caller."""
    return await asyncpg.connect(
        dsn, timeout=timeout, server_settings={"application_name": f"{APPLICATION_NAME}-{role}"}, **kwargs
    )


__all__ = ["connect", "create_pool", "normalise_url", "resolve_dsn", "sqlalchemy_url", "with_database"]
