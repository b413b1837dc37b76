"""Fixtures: a real PostgreSQL (HUB_TEST_DATABASE_URL or embedded), a migrated template, a database per test."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from service.store.embedded import destroy_scratch
from tests import ci_counts
from tests.hubs import RunningHub, hub_variable, running_hub
from tests.pg import (
    PgServer,
    ensure_private_running,
    make_template,
    start_private_server,
    start_server,
    stop_server,
)

# The hubs the tests start (in-process, as subprocesses, the CLI) must run with what each test sets and
# nothing else: a HUB_QUEUE_MAX_FRAMES or HUB_JWT_AUDIENCE left in the caller's shell would otherwise change
# every hub of the run. Removed here, at import, before any test module reads the environment.
IGNORED_FROM_ENVIRONMENT = sorted(name for name in os.environ if hub_variable(name))
for _name in IGNORED_FROM_ENVIRONMENT:
    del os.environ[_name]


def pytest_report_header() -> list[str]:
    lines = [f"backend: {BACKEND}"]
    if IGNORED_FROM_ENVIRONMENT:
        lines.append("ignored from the environment (hubs under test never see them): "
                     + ", ".join(IGNORED_FROM_ENVIRONMENT))
    return lines


# -- backends: the suite runs once against a server (HUB_TEST_DATABASE_URL) and once against the embedded one ---
BACKEND = "server" if os.environ.get("HUB_TEST_DATABASE_URL") else "embedded"
_BACKEND_ONLY: dict[str, str] = {}  # node id -> reason, for tests this backend skips by their marker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.backend("server" | "embedded", reason=...)` runs a test on that backend only; the other
    pass skips it, and .ci/run counts and prints it (tests/ci_counts.py)."""
    for item in items:
        marker = item.get_closest_marker("backend")
        if marker is None:
            continue
        name, reason = (marker.args[0] if marker.args else None), marker.kwargs.get("reason")
        if name not in ci_counts.BACKENDS or not reason:
            raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.backend('server' or 'embedded', reason=...)")
        if name != BACKEND:
            _BACKEND_ONLY[item.nodeid] = f"{name} only: {reason}"
            item.add_marker(pytest.mark.skip(reason=_BACKEND_ONLY[item.nodeid]))


_OUTCOMES: dict[str, tuple[str, str]] = {}  # node id -> (outcome, skip reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    known = _OUTCOMES.get(report.nodeid, ("passed", ""))[0]
    if report.failed:
        _OUTCOMES[report.nodeid] = ("failed", "")
    elif report.skipped and known != "failed":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _OUTCOMES[report.nodeid] = ("skipped", reason.removeprefix("Skipped: "))
    elif report.when == "call" and known != "failed":
        _OUTCOMES[report.nodeid] = ("passed", "")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With HUB_TEST_SUMMARY=path, write what this pass ran there, for tests/ci_counts.py."""
    target = os.environ.get("HUB_TEST_SUMMARY")
    if not target or hasattr(session.config, "workerinput"):
        return
    by = {outcome: [n for n, (o, _) in _OUTCOMES.items() if o == outcome] for outcome in ("passed", "failed")}
    skipped = {n: reason for n, (o, reason) in _OUTCOMES.items() if o == "skipped"}
    summary = ci_counts.record(BACKEND, by["passed"], by["failed"], skipped,
                               {n: r for n, r in _BACKEND_ONLY.items() if n in skipped})
    Path(target).write_text(json.dumps(summary, indent=1))


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def template(pg: PgServer) -> str:
    return make_template(pg)


@pytest.fixture
async def dsn(pg: PgServer, template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (cloned from the template), dropped afterwards."""
    name = await pg.create_database(template=template)
    try:
        yield pg.dsn(name)
    finally:
        await pg.drop_database(name)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def hub(dsn: str) -> AsyncIterator[RunningHub]:
    async with running_hub(dsn) as running:
        yield running


@pytest.fixture(scope="session")
def private_server() -> Iterator[tuple[Path, str]]:
    pgdata, admin = start_private_server()
    try:
        yield pgdata, admin
    finally:
        destroy_scratch(pgdata)


@pytest.fixture
def private_pg(private_server: tuple[Path, str]) -> tuple[Path, str]:
    """A private embedded PostgreSQL that tests may stop and restart: (pgdata, admin DSN).

    Running at the start of every test: one that stopped it and failed to start it again costs only itself.
    """
    pgdata, admin = private_server
    ensure_private_running(pgdata, admin)
    return pgdata, admin
