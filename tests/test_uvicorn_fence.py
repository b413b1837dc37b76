"""The uvicorn internals the hub relies on (service/api/uvicorn_internals.py), and what happens without them."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import uvicorn
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.api.server import HubServer, uvicorn_config
from service.api.uvicorn_internals import startup_problem
from tests.hubs import RunningHub, connect, hub_settings, recv_json, recv_until

ROOT = Path(__file__).resolve().parent.parent


async def _metric(http: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{http}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def test_the_installed_uvicorn_is_inside_the_tested_bound() -> None:
    """pyproject.toml bounds uvicorn to the releases this suite has run against; the suite runs on one."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("uvicorn")]
    bound = SpecifierSet(spec.split("]", 1)[1] if "]" in spec else spec[len("uvicorn"):])
    assert bound.contains(Version(uvicorn.__version__)), (spec, uvicorn.__version__)
    assert any(s.operator in ("<", "<=", "==", "~=") for s in bound), f"no upper bound on uvicorn: {spec}"
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    assert startup_problem(WebSocketsSansIOProtocol) is None


async def test_with_uvicorn_internals_frames_take_the_direct_path(hub: RunningHub, db: asyncpg.Connection) -> None:
    ws = await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream")
    try:
        await recv_json(ws)
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'direct', 'bot')")
        await recv_until(ws, lambda f: f.get("topic") == "log_stream")
    finally:
        await ws.close()
    assert await _metric(hub.http, "zepix_hub_direct_write_path") == 1
    assert await _metric(hub.http, "zepix_hub_connections_by_writer_total", writer="asgi") == 0


@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
async def test_without_the_direct_path_the_hub_says_so_and_still_delivers(
        dsn: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """Forced fallback: uvicorn's other WebSocket implementation has none of the attributes the direct path
    needs, as a future uvicorn release might not."""
    settings = hub_settings(dsn)
    server = HubServer(uvicorn_config(create_app(settings), settings, port=0))
    server.config.log_config = None
    server.config.ws = "websockets"  # the legacy implementation, not websockets-sansio
    # The hub's logging config (applied by uvicorn.Config) makes "service" not propagate: listen on it directly.
    watched = logging.getLogger("service")
    watched.addHandler(caplog.handler)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert not task.done() and time.monotonic() < deadline, "hub did not start"
            await asyncio.sleep(0.02)
        http = f"http://127.0.0.1:{server.port}"
        warnings = [r.getMessage() for r in caplog.records if "slower ASGI path" in r.getMessage()]
        assert len(warnings) == 1 and "not websockets-sansio" in warnings[0], warnings  # at start-up, before any client
        assert await _metric(http, "zepix_hub_direct_write_path") == 0

        from service.api.auth import mint
        from tests.hubs import SECRET

        token = mint(settings, SECRET, subject="fallback", ttl_s=600)
        clients = [await connect(f"ws://127.0.0.1:{server.port}/ws/live?token={token}&topics=log_stream")
                   for _ in range(2)]
        for ws in clients:
            await recv_json(ws)
        await db.execute("INSERT INTO logs (level, msg, source) VALUES ('INFO', 'through asgi', 'bot')")
        for ws in clients:
            frame = await recv_until(ws, lambda f: f.get("topic") == "log_stream")
            assert frame["data"]["msg"] == "through asgi"
            await ws.close()
        assert await _metric(http, "zepix_hub_connections_by_writer_total", writer="asgi") == 2
        assert len([r for r in caplog.records if "slower ASGI path" in r.getMessage()]) == 1  # said once
    finally:
        watched.removeHandler(caplog.handler)
        server.should_exit = True
        await asyncio.wait_for(task, 30)
