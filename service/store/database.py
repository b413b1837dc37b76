"""Where the database is and how to reach it: the DSN, the pool, the dedicated connections.

`resolve_dsn` returns HUB_DATABASE_URL / DATABASE_URL, or starts the embedded
server. Pools are created by the app's lifespan and closed by it; nothing here
keeps a live resource in a module global.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from ..errors import ConfigError, DatabaseSetupError
from ..settings import Settings
from .embedded import start_embedded, with_database

APPLICATION_NAME = "zepix-hub"

#: What a read meets while PostgreSQL restarts or is away (TimeoutError is an OSError): HTTP answers 503 and a
#: resume closes 1013, both meaning "retry shortly"; any other database error is a bug and surfaces as one.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError, OSError,  # too many connections, out of memory, disk full
    # A connection ended mid-statement (pg_terminate_backend, a restart) can surface as this instead of
    # ConnectionDoesNotExistError ("cannot switch to state 12; another operation is in progress",
    # MagicStack/asyncpg#1069): the connection is gone either way.
    asyncpg.exceptions.InternalClientError,
)


def resolve_dsn(settings: Settings) -> str:
    """The libpq-style DSN the hub uses; starts the embedded server when no URL is configured."""
    if settings.database_url:
        return normalise_url(settings.database_url)
    return start_embedded(settings.data_dir).dsn("postgres")


#: The URL forms the hub accepts; each becomes a plain postgresql:// URL.
URL_PREFIXES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "postgresql+psycopg://",
                "postgresql+psycopg2://")


def normalise_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+asyncpg://) as well as plain ones; ConfigError for anything else.

    Anything else must fail here: a bare `localhost` handed to libpq-style parsing would connect to
    the default database (PGDATABASE, or the user's) and migrate it.
    """
    prefix = next((p for p in URL_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise ConfigError("the database URL (HUB_DATABASE_URL) must start with postgresql:// or postgres://, "
                          f"e.g. postgresql://USER@HOST:5432/DBNAME, not {_unparsed_url_for_message(url)!r}")
    plain = "postgresql://" + url[len(prefix):]
    _check_hosts(plain)
    return plain


def _check_hosts(url: str) -> None:
    """Each host[:port] of the URL (libpq allows a comma-separated list) and any ?port= must parse."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise ConfigError(f"invalid database URL {_unparsed_url_for_message(url)!r}: {exc}") from None
    ports: list[str] = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        if host.startswith("["):
            address, bracket, rest = host[1:].partition("]")
            if not bracket or not address or (rest and not rest.startswith(":")):
                raise ConfigError(f"invalid database URL {_unparsed_url_for_message(url)!r}: bad IPv6 host")
            ports.append(rest[1:])
        elif "]" in host or "[" in host:
            raise ConfigError(f"invalid database URL {_unparsed_url_for_message(url)!r}: bad host")
        else:
            ports.append(host.rpartition(":")[2] if ":" in host else "")
    for value in parse_qs(parts.query).get("port", []):
        ports.extend(value.split(","))
    for port in ports:
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            # Not echoed: a password with an unencoded '#', '/' or '?' ends up here, cut in pieces.
            raise ConfigError(f"invalid database URL {_unparsed_url_for_message(url)!r}: the port must be 1-65535 "
                              "(percent-encode '@', '#', '/', '?' and ':' in a user name or password)")


#: libpq parameters whose value is a secret. File paths (passfile, sslkey, sslcert, sslrootcert, sslcrl) are
#: shown: they tell an operator which file is read, and the file's own permissions guard what is in it.
SECRET_PARAMS = frozenset({"password", "sslpassword"})
_KEYWORD_SECRET = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def mask_dsn(dsn: str) -> str:
    """The DSN without its secrets, for printing: the userinfo password and every secret-bearing
    parameter (matched case-insensitively and percent-decoded, as libpq and asyncpg decode them), and
    any parameter value that is itself a URL with credentials."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:  # not a URL: libpq's keyword=value form
        return _KEYWORD_SECRET.sub(r"\1***", dsn)
    # libpq ends the user info at an '@' before the first '/': the last such '@', so that a password
    # with an unencoded '@', '?' or '#' is hidden whole.
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    at = authority.rfind("@")
    prefix = ""
    if at >= 0:
        user, colon, _ = authority[:at].partition(":")
        prefix, rest = f"{user}{':***' if colon else ''}@", rest[at + 1:]
    body, hashmark, fragment = rest.partition("#")
    path, question, query = body.partition("?")
    params = []
    for param in query.split("&") if question else []:
        key, equals, value = param.partition("=")
        if equals and (unquote(key).strip().lower() in SECRET_PARAMS
                       or ("://" in unquote(value) and "@" in unquote(value))):
            value = "***"
        params.append(f"{key}{equals}{value}")
    return f"{scheme}://{prefix}{path}{question}{'&'.join(params)}{hashmark}{fragment}"


def _unparsed_url_for_message(url: str) -> str:
    """The URL for an error message: everything before the last '@' of its authority hidden, because a URL
    that failed to parse may be one whose password holds an unencoded '#', '/' or '?'."""
    masked = mask_dsn(url)
    if "@" in masked:
        scheme, sep, rest = masked.partition("://")
        masked = (scheme + sep if sep else "") + "***@" + (rest if sep else scheme).rpartition("@")[2]
    return masked[:200]


def sqlalchemy_url(url: str) -> str:
    return "postgresql+asyncpg://" + normalise_url(url)[len("postgresql://"):]


def describe_error(exc: BaseException, dsn: str) -> str:
    """One line for a database error a command met: what, where (no password) and what to do."""
    where = mask_dsn(dsn)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{where}: {exc}: create it (createdb NAME) or point HUB_DATABASE_URL at an existing one"
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return f"{where} is not migrated ({exc}): run zepix-hub migrate first"
    return f"{where}: {type(exc).__name__}: {exc}"


@contextlib.contextmanager
def reported(dsn: str) -> Iterator[None]:
    """Turn a database error into DatabaseSetupError: a CLI command prints one line, not a traceback."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseSetupError(describe_error(exc, dsn)) from None


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


__all__ = ["connect", "create_pool", "describe_error", "mask_dsn", "normalise_url", "reported", "resolve_dsn",
           "sqlalchemy_url", "with_database"]
