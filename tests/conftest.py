"""Fixtures: a real PostgreSQL (HUB_TEST_DATABASE_URL or embedded), a migrated template, a database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from service.embedded import destroy_scratch
from tests.hubs import RunningHub, running_hub
from tests.pg import (
    PgServer,
    ensure_private_running,
    make_template,
    start_private_server,
    start_server,
    stop_server,
)


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
