"""create_app() and the lifespan that owns every task and connection of a hub process.

create_app() checks the configuration (a missing key fails before any socket opens); the lifespan finds
and migrates the database, opens the pool and starts the Hub (service/api/runtime.py), and its
AsyncExitStack undoes all of it in reverse on shutdown (docs/adr/0012-concern-packages.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..settings import Settings, load_settings
from ..store import migrate
from ..store.database import DATABASE_UNAVAILABLE, create_pool, resolve_dsn
from .asgi import TransportAbort
from .assets import STATIC_DIR, VersionedStaticFiles
from .auth import Verifier, verification_key
from .routes import router
from .runtime import Hub

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app. Raises ConfigError for a bad configuration (e.g. no JWT key outside dev mode).

    Shutdown order: clients are closed with 1001 first (by HubServer, before uvicorn's own 1012), then the
    Hub's tasks are cancelled and awaited, then the pool is closed.
    """
    settings = settings or load_settings()
    verifier = Verifier(settings, verification_key(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            dsn = await asyncio.to_thread(resolve_dsn, settings)
            if settings.auto_migrate:
                await asyncio.to_thread(migrate.upgrade, dsn)
            pool = await create_pool(dsn, settings)
            stack.push_async_callback(pool.close)
            hub = Hub(settings, verifier, dsn, pool)
            await hub.start(stack)
            app.state.hub = hub
            log.info("zepix-hub ready")
            yield

    app = FastAPI(title="zepix-hub", version="0.1.0", lifespan=lifespan,
                  description="Real-time event hub for the Zepix trading bot dashboard. "
                              "WebSocket protocol: docs/protocol.md and /asyncapi.json.")
    app.state.settings = settings
    app.include_router(router)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.mount("/static", VersionedStaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    app.add_middleware(TransportAbort)
    return app


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: database unavailable: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"detail": "database unavailable; retry shortly"}, status_code=503,
                        headers={"Retry-After": "1"})
