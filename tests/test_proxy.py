"""nginx in front of two hubs with docs/nginx/zepix-hub.conf, exactly as documented (docs/deploy.md): TLS at
the proxy, WebSocket upgrade, one client moved from hub to hub mid-stream that sees every event once.

Needs Debian's nginx (`apt-get install -y nginx`; .ci/run installs it as root). Without /usr/sbin/nginx the
module is skipped with a reason that says so; with CI=true each test fails instead, so that CI cannot go green
without it. The test installs nothing and runs nginx as a foreground process of its own, on loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path

import asyncpg
import httpx
import websockets

from service.api.auth import mint
from service.settings import load_settings
from tests.certs import make_pki
from tests.hubs import SECRET, HubProcess, connect, recv_json, refused
from tests.nginx import NGINX, nginx
from tests.required import require

MISSING = None if NGINX.exists() else f"{NGINX} is missing; run `apt-get install -y nginx` as root"
_nginx_installed = require("proxy", MISSING)


async def _serving_hub(hubs: list[HubProcess]) -> HubProcess:
    """The hub that holds the one WebSocket client (its connection gauge, sampled each heartbeat, says 1)."""
    deadline = time.monotonic() + 20  # hang guard
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            holding = []
            for hub in hubs:
                text = (await client.get(f"{hub.http}/metrics")).text
                if re.search(r"^zepix_hub_connections(\{[^}]*\})? 1\.0$", text, re.M):
                    holding.append(hub)
            if len(holding) == 1:
                return holding[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no single hub holds the client: {holding}")
            await asyncio.sleep(0.1)


async def test_nginx_config_in_front_of_two_hubs_moves_a_client_mid_stream_without_a_gap(
        dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    public = None  # the public origin, known once nginx has its port
    hubs = [HubProcess(dsn, tmp_path / f"hub{i}.log") for i in (1, 2)]
    for hub in hubs:
        hub.start()
    writer: asyncio.Task[None] | None = None
    try:
        with nginx(tmp_path / "nginx", pki, hubs) as port:
            public = f"https://localhost:{port}"
            # Both hubs get the Origin allowlist for the public name: restart them with it.
            for hub in hubs:
                hub.terminate()
                hub.env["HUB_ALLOWED_ORIGINS"] = public
                hub.start()
            trusting = pki.client_context()
            token = mint(load_settings(jwt_secret=SECRET), SECRET, subject="proxy", ttl_s=600)
            url = f"wss://localhost:{port}/ws/live?token={token}&topics=trade_update"

            # The Origin allowlist holds through the proxy; a foreign page is refused.
            code, _ = await refused(url, ssl=trusting, origin=websockets.Origin("https://evil.example"))
            assert code == 4003
            # nginx replaces a client's X-Forwarded-For with the address it saw; the hubs believe nginx (loopback,
            # HUB_FORWARDED_ALLOW_IPS' default), so a forged one must not reach their logs as the client's.
            async with httpx.AsyncClient(verify=trusting, timeout=10) as client:
                reply = await client.get(f"{public}/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
                assert reply.status_code == 200
            deadline = time.monotonic() + 10  # hang guard: uvicorn logs the access after the response

            def access() -> list[str]:
                return [line for hub in hubs for line in hub.log_path.read_text().splitlines()
                        if "GET /healthz" in line]

            while not access():
                assert time.monotonic() < deadline, "no hub logged the request"
                await asyncio.sleep(0.05)
            (line,) = access()
            assert "203.0.113.9" not in line and "127.0.0.1:" in line, line

            total = 120

            async def write() -> None:
                conn = await asyncpg.connect(dsn)
                try:
                    for i in range(total):
                        await conn.execute("INSERT INTO trades (symbol, side, quantity) VALUES ($1, 'BUY', 1)",
                                           f"S{i}")
                        await asyncio.sleep(0.02)
                finally:
                    await conn.close()

            received: list[dict[str, object]] = []
            since: int | None = None
            epoch: str | None = None
            moves: list[tuple[int, int]] = []  # (hub port before, hub port after)
            writer = asyncio.create_task(write())
            while True:
                query = "" if since is None else f"&since={since}&epoch={epoch}"
                ws = await connect(url + query, ssl=trusting, origin=websockets.Origin(public))
                try:
                    welcome = await recv_json(ws)
                    assert welcome["type"] == "welcome", welcome
                    assert epoch in (None, welcome["epoch"]), (epoch, welcome)  # one log behind both hubs
                    epoch = str(welcome["epoch"])
                    serving = await _serving_hub(hubs)
                    if moves:
                        assert serving.port != moves[-1][0], "the client came back to the hub that stopped"
                        moves[-1] = (moves[-1][0], serving.port)
                    stop_after = len(received) + 25  # stop the serving hub mid-stream, twice
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                        if frame["type"] == "replayed":
                            assert frame["recovered"] is True and frame["epoch"] == epoch, frame
                        if frame["type"] != "event":
                            continue
                        received.append(frame)
                        since = int(frame["seq"])  # type: ignore[call-overload]
                        if len(received) == total:
                            break
                        if len(moves) < 2 and len(received) >= stop_after:
                            moves.append((serving.port, 0))
                            serving.terminate()  # 1001: the client reconnects through nginx, to the other hub
                            with contextlib.suppress(websockets.ConnectionClosed):
                                while True:
                                    frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                                    if frame["type"] == "event":
                                        received.append(frame)
                                        since = int(frame["seq"])  # type: ignore[call-overload]
                            assert ws.close_code == 1001, ws.close_code
                            serving.start()  # back on its port, for the next move
                            break
                finally:
                    await ws.close()
                if len(received) >= total:
                    break
            await writer
            writer = None

        rows = await db.fetch("SELECT seq, payload FROM events WHERE topic = 'trade_update' ORDER BY seq")
        assert len(moves) == 2 and all(after not in (0, before) for before, after in moves), moves
        assert [f["seq"] for f in received] == [r["seq"] for r in rows]  # complete, in order, none twice
        symbols = [f["data"]["trade"]["symbol"] for f in received]  # type: ignore[index]
        assert symbols == [json.loads(r["payload"])["trade"]["symbol"] for r in rows] == [f"S{i}" for i in range(total)]
    finally:
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        for hub in hubs:
            hub.kill()
