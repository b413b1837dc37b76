"""Fixtures: a real PostgreSQL (HUB_TEST_DATABASE_URL or embedded), a migrated template, a database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from service.embedded import destroy_scratch
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
    if not IGNORED_FROM_ENVIRONMENT:
        return []
    return [f"ignored from the environment (hubs under test never see them): {', '.join(IGNORED_FROM_ENVIRONMENT)}"]


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
