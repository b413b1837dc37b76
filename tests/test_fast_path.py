"""The fast path is in use: with the supported uvicorn, a client without extensions gets its frames written
straight to the transport (service/api/asgi.py), not through the ASGI send. A uvicorn release that renames what
the fast path relies on fails here instead of silently slowing every client down."""

from __future__ import annotations

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.hubs import RunningHub, connect, recv_json, recv_until


async def writers(hub: RunningHub) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{hub.http}/metrics")).text
    return {sample.labels["writer"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "zepix_hub_connections_by_writer" for sample in family.samples
            if sample.name.endswith("_total")}


async def test_clients_without_extensions_are_served_by_the_direct_writer(hub: RunningHub,
                                                                          db: asyncpg.Connection) -> None:
    assert await writers(hub) == {"direct": 0, "asgi": 0}
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=log_stream") as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome"
        assert ws.protocol.extensions == [], "the hub negotiated an extension it should refuse"
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'fast')")
        frame = await recv_until(ws, lambda f: f.get("topic") == "log_stream")
        assert frame["data"]["msg"] == "fast"
    assert await writers(hub) == {"direct": 1, "asgi": 0}, (
        "a client without extensions went down the ASGI path: the installed uvicorn no longer offers what "
        "service/api/asgi.py's DirectSocket relies on")
