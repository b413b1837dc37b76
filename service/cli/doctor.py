"""`zepix-hub doctor`: check what the hub needs, one line per check, each failure with its fix.

Settings that matter for security (dev mode, bind, TLS, audience, the JWT key), then the database: connection,
migration, capture triggers, schema privileges, a LISTEN/NOTIFY round trip, the NOTIFY queue. Checks that
need an unreachable database count as failed. Exit 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from alembic.script import ScriptDirectory

from ..api.auth import DEV_SECRET_FILE, describe_key, signing_key, verification_key
from ..api.tls import check_tls as load_pair
from ..errors import ConfigError, HubError
from ..settings import Settings, load_settings
from ..store import migrate
from ..store.database import connect, resolve_dsn
from ..store.database import mask_dsn as mask_dsn  # re-exported: doctor prints DSNs masked

CONNECT_TIMEOUT_S = 5.0
NOTIFY_TIMEOUT_S = 5.0
#: Above this the NOTIFY queue is filling up (PostgreSQL stops NOTIFY at 100 %: writers then fail).
QUEUE_ALERT = 0.01
#: The capture path of the newest migration (sql/v6); doctor checks what it needs.
TRIGGERS = {"trades_event_v3": "trades", "logs_event_v3": "logs", "logs_append_only_v1": "logs",
            "trades_no_truncate_v1": "trades"}
APPEND_FUNCTION = "zepix_hub.hub_append_event_v3"
FUNCTIONS = (APPEND_FUNCTION, "public.hub_event_frame_v1", "zepix_hub.hub_trades_event_v3",
             "zepix_hub.hub_logs_event_v3", "zepix_hub.hub_notify_v3", "zepix_hub.hub_refuse_change_v1",
             "public.hub_notify", "public.hub_prune_logs_v1")


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    status: str  # OK, WARN (passes), FAIL, SKIP (fails: not checked)
    detail: str
    fix: str | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("OK", "WARN")


def ok(name: str, detail: str) -> Result:
    return Result(name, "OK", detail)


def fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, "FAIL", detail, fix)


def check_key(settings: Settings) -> Result:
    """The key tokens are verified with, where it comes from and how strong it is (never the key itself)."""
    name = "JWT key"
    try:
        key = verification_key(settings)
        if settings.jwt_private_key and not settings.symmetric:
            signing_key(settings)  # optional, but a bad one must show here rather than in `zepix-hub token`
        strength = describe_key(settings, key)
    except ConfigError as exc:
        fix = "set the key variables named above, then run doctor again"
        if existing_dev_secret_file(settings):
            fix = (f"{settings.data_dir} holds a dev secret: `serve --demo`/`--dev` uses it (check that setup "
                   "with HUB_DEV=true zepix-hub doctor); a plain `serve` needs HUB_JWT_SECRET")
        return fail(name, str(exc), fix)
    algorithm = settings.jwt_algorithms[0]
    if settings.symmetric:
        source = "HUB_JWT_SECRET" if settings.jwt_secret else f"the dev secret in {settings.data_dir}"
        detail = f"{algorithm} secret from {source} ({strength})"
    else:
        detail = f"{algorithm} {strength} public key from HUB_JWT_PUBLIC_KEY"
    if settings.dev_mode:
        return Result(name, "WARN", f"{detail}, dev mode is on",
                      "fine on a laptop; in production leave HUB_DEV unset and set HUB_JWT_SECRET "
                      "or HUB_JWT_PUBLIC_KEY")
    return ok(name, detail)


def existing_dev_secret_file(settings: Settings) -> bool:
    return settings.symmetric and not settings.dev_mode and not settings.jwt_secret and \
        (settings.data_dir / DEV_SECRET_FILE).is_file()


def check_dev_mode(settings: Settings) -> Result:
    name = "dev mode"
    if not settings.dev_mode:
        return ok(name, "off")
    if settings.loopback:
        return Result(name, "WARN", f"on (loopback only: {settings.host}); `serve` prints a 7-day all-topics token",
                      "fine on a laptop; in production leave HUB_DEV unset")
    if settings.dev_allow_remote:
        return Result(name, "WARN", f"on and forced on {settings.host} (HUB_DEV_ALLOW_REMOTE=true): anyone who "
                      "reaches the hub and sees its output can read every topic",
                      "leave HUB_DEV and HUB_DEV_ALLOW_REMOTE unset and set HUB_JWT_SECRET")
    return fail(name, f"on, with {settings.host} not a loopback address: `serve` refuses to start",
                "leave HUB_DEV unset and set HUB_JWT_SECRET (32+ characters), or bind to 127.0.0.1")


def check_bind(settings: Settings) -> Result:
    name = "bind address"
    if settings.loopback:
        return ok(name, f"{settings.host} (loopback: reachable from this machine only)")
    if settings.tls:
        return ok(name, f"{settings.host} is reachable from the network, over TLS")
    return Result(name, "WARN", f"{settings.host} is reachable from the network",
                  "put a TLS-terminating proxy in front (docs/deploy.md) or set HUB_TLS_CERT and HUB_TLS_KEY: "
                  "without TLS, tokens would cross the network in clear")


def check_tls(settings: Settings) -> Result:
    name = "TLS"
    if not settings.tls:
        return ok(name, "off: the hub serves http:// and ws:// (behind a TLS-terminating proxy, or on loopback)")
    try:
        load_pair(settings)
    except ConfigError as exc:
        return fail(name, str(exc), "point HUB_TLS_CERT and HUB_TLS_KEY at a readable PEM certificate and its key")
    return ok(name, f"on: https:// and wss:// with {settings.tls_cert}")


def check_audience(settings: Settings) -> Result:
    name = "audience"
    if settings.jwt_audience is not None:
        return ok(name, f"tokens must carry aud={settings.jwt_audience}")
    return Result(name, "WARN", "check off (HUB_JWT_AUDIENCE is empty): any token signed with the key is "
                  "accepted, also one minted for another service sharing the key or identity provider",
                  "unset HUB_JWT_AUDIENCE (default zepix-hub) or set it to the aud your tokens carry")


async def connect_db(dsn: str) -> tuple[asyncpg.Connection | None, Result]:
    name = "database"
    shown = mask_dsn(dsn)
    try:
        conn = await connect(dsn, role="doctor", timeout=CONNECT_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError as exc:
        return None, fail(name, f"{shown}: {exc}",
                          "create the database (createdb NAME) or point HUB_DATABASE_URL at an existing one")
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        return None, fail(name, f"{shown}: {exc}",
                          "check the user and password in HUB_DATABASE_URL (and pg_hba.conf on the server)")
    except (TimeoutError, OSError) as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return None, fail(name, f"cannot reach {shown}: {what}",
                          "start PostgreSQL, or fix the host and port in HUB_DATABASE_URL")
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return None, fail(name, f"{shown}: {exc}", "fix HUB_DATABASE_URL or the server it points at")
    try:
        version = await conn.fetchval("SHOW server_version")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        await conn.close()
        return None, fail(name, f"{shown}: {exc}", "fix HUB_DATABASE_URL or the server it points at")
    return conn, ok(name, f"connected to {shown} (PostgreSQL {version})")


async def check_migrations(conn: asyncpg.Connection) -> Result:
    name = "migrations"
    head = migrate.head_revision()
    current = await migrate.current_revision(conn)
    if current is None:
        return fail(name, "the database was never migrated", "run: zepix-hub migrate")
    if current == head:
        return ok(name, f"at head ({head})")
    known = {rev.revision for rev in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()}
    if current not in known:
        return fail(name, f"the database is at {current}, a revision this hub does not know (head is {head})",
                    "upgrade zepix-hub to the version that migrated this database")
    return fail(name, f"the database is at {current}, head is {head}", "run: zepix-hub migrate")


async def check_triggers(conn: asyncpg.Connection) -> Result:
    name = "triggers"
    rows = await conn.fetch(
        """SELECT t.tgname, c.relname, t.tgenabled::text AS tgenabled
             FROM pg_trigger AS t
             JOIN pg_class AS c ON c.oid = t.tgrelid
             JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND t.tgname = ANY($1::text[])
              AND n.nspname = ANY(current_schemas(false))""",
        list(TRIGGERS))
    found = {(r["tgname"], r["relname"]): r["tgenabled"] for r in rows}
    # By schema and name in the catalog: a hub's login has no USAGE on zepix_hub, so it cannot resolve the names.
    functions = {r["name"] for r in await conn.fetch(
        """SELECT n.nspname || '.' || p.proname AS name
             FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
            WHERE n.nspname || '.' || p.proname = ANY($1::text[])""",
        list(FUNCTIONS))}
    missing = [f"{trigger} on {table}" for trigger, table in TRIGGERS.items()
               if (trigger, table) not in found]
    missing += [f"function {f}()" for f in FUNCTIONS if f not in functions]
    if missing:
        return fail(name, "missing: " + ", ".join(missing),
                    "run: zepix-hub migrate (if it says the database is at head, the objects were dropped by "
                    "hand: review and re-apply the SQL of `zepix-hub sql`)")
    disabled = sorted((trigger, table) for (trigger, table), state in found.items() if state == "D")
    if disabled:
        return fail(name, "disabled: " + ", ".join(f"{t} on {r}" for t, r in disabled)
                    + " (changes to those tables reach no client)",
                    " ".join(f"ALTER TABLE {r} ENABLE TRIGGER {t};" for t, r in disabled))
    return ok(name, f"{', '.join(TRIGGERS)} installed and enabled; {len(FUNCTIONS)} functions present")


async def check_schemas(conn: asyncpg.Connection) -> Result:
    """What `zepix-hub migrate` refuses: a role other than the owner that may create where the hub's SECURITY
    DEFINER functions look names up (migrate.PATH_SCHEMAS) could have its own code run as the owner."""
    name = "schema privileges"
    revokes = await migrate.unsafe_creators(conn)
    if revokes:
        return fail(name, "roles other than the owner may create objects in a schema the hub's functions "
                          "resolve names in (they could run their own code as the owner)",
                    "run as a superuser or the schema's owner: " + "; ".join(revokes))
    return ok(name, f"only the owner may create in {', '.join(migrate.PATH_SCHEMAS)}")


async def check_notify(conn: asyncpg.Connection, dsn: str) -> Result:
    """LISTEN on a throwaway channel here, pg_notify from a second connection, wait for it."""
    name = "LISTEN/NOTIFY"
    channel = f"zepix_doctor_{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().hex
    arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_notify(_conn: Any, _pid: int, _channel: str, message: str) -> None:
        if message == payload and not arrived.done():
            arrived.set_result(time.monotonic())

    await conn.add_listener(channel, on_notify)
    try:
        sender = await connect(dsn, role="doctor-notify", timeout=CONNECT_TIMEOUT_S)
        try:
            sent = time.monotonic()
            await sender.execute("SELECT pg_notify($1, $2)", channel, payload)
        finally:
            await sender.close()
        try:
            received = await asyncio.wait_for(arrived, NOTIFY_TIMEOUT_S)
        except TimeoutError:
            return fail(name, f"a notification on {channel} did not arrive within {NOTIFY_TIMEOUT_S:g} s",
                        "connect the hub straight to PostgreSQL: a pooler in transaction mode "
                        "(PgBouncer) does not carry LISTEN/NOTIFY")
    finally:
        await conn.remove_listener(channel, on_notify)
    return ok(name, f"round trip in {(received - sent) * 1000:.0f} ms")


async def check_queue(conn: asyncpg.Connection) -> Result:
    name = "NOTIFY queue"
    usage = float(await conn.fetchval("SELECT pg_notification_queue_usage()"))
    if usage > QUEUE_ALERT:
        return fail(name, f"{usage:.1%} full; at 100 % every write to trades and logs fails",
                    "a session LISTENs without reading (often one stuck in a long transaction): find it in "
                    "pg_stat_activity and end it with pg_terminate_backend(pid)")
    return ok(name, f"{usage:.2%} used")


async def run_checks(settings: Settings, emit: Callable[[Result], None]) -> list[Result]:
    """Run every check, emitting each result as soon as it is known."""
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        emit(result)

    for setting_check in (check_dev_mode, check_bind, check_tls, check_audience, check_key):
        record(setting_check(settings))
    try:
        dsn = await asyncio.to_thread(resolve_dsn, settings)
    except HubError as exc:
        record(fail("database", str(exc), "set HUB_DATABASE_URL to a reachable PostgreSQL"))
        dsn = None
    conn: asyncpg.Connection | None = None
    if dsn is not None:
        conn, result = await connect_db(dsn)
        record(result)
    checks: list[tuple[str, Callable[[asyncpg.Connection], Awaitable[Result]]]] = [
        ("migrations", check_migrations), ("triggers", check_triggers), ("schema privileges", check_schemas),
        ("LISTEN/NOTIFY", lambda c: check_notify(c, dsn or "")), ("NOTIFY queue", check_queue),
    ]
    try:
        for name, check in checks:
            if conn is None:
                record(Result(name, "SKIP", "not checked: no database connection"))
                continue
            try:
                record(await check(conn))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                record(fail(name, f"{type(exc).__name__}: {exc}", "see the error above; run doctor again"))
    finally:
        if conn is not None:
            await conn.close()
    return results


def _print(result: Result) -> None:
    print(f"{result.status:<4}  {result.name}: {result.detail}", flush=True)
    if result.fix and result.status != "OK":
        print(f"      fix: {result.fix}", flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print one line per check (and a fix for each failure); 0 if all pass, 1 otherwise."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _print(fail("configuration", str(exc), "fix the HUB_* variable named above"))
        return 1
    results = asyncio.run(run_checks(settings, _print))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"\n{len(failed)} of {len(results)} checks failed: " + ", ".join(r.name for r in failed),
              file=sys.stderr)
        return 1
    print(f"\nall {len(results)} checks passed")
    return 0
