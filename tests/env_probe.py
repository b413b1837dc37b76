"""Run only by test_env_isolation, in a pytest whose environment carries poisonous HUB_* variables.

Not named test_*.py, so the normal suite does not collect it. Each test starts a hub the way the suite does
and shows, from outside, that the poison did not reach it: a client may send three pings in a row (the poison
allows one message in a thousand seconds), and a token minted by the CLI carries the default audience, not
the poisoned one.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import websockets
from jose import jwt

from service.api.auth import mint
from service.settings import load_settings
from tests.hubs import SECRET, HubProcess, RunningHub, connect, recv_json

POISON = {"hub_client_burst": "1", "HUB_CLIENT_RATE": "0.001", "HUB_JWT_AUDIENCE": "poison-audience",
          "HUB_DATABASE_URL": "postgresql://poison@127.0.0.1:1/poison", "DATABASE_URL": "postgresql://poison@127.0.0.1:1/p"}


def test_the_poison_is_gone_from_the_test_process() -> None:
    assert not {k for k in os.environ if k in POISON}, "the suite left HUB_* variables of the caller in place"


async def three_pings(ws_url: str, token: str) -> None:
    async with await connect(f"{ws_url}?token={token}&topics=log_stream") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        for _ in range(3):
            await ws.send('{"type":"ping"}')
        kinds: list[str] = []
        try:
            while len(kinds) < 3:
                kinds.append((await recv_json(ws))["type"])
        except websockets.ConnectionClosed as exc:
            kinds.append(f"closed {exc.rcvd.code if exc.rcvd else None}")
        assert kinds == ["pong"] * 3, f"the hub rate-limited a client: it read the caller's HUB_CLIENT_*: {kinds}"


async def test_an_in_process_hub_ignores_the_callers_variables(hub: RunningHub) -> None:
    await three_pings(hub.ws, hub.token())


async def test_a_hub_process_ignores_the_callers_variables(dsn: str, tmp_path: Path) -> None:
    proc = await asyncio.to_thread(HubProcess(dsn, tmp_path / "hub.log").start)
    try:
        await three_pings(proc.ws, mint(load_settings(jwt_secret=SECRET), SECRET, subject="probe", ttl_s=600))
    finally:
        proc.kill()


async def test_a_cli_run_ignores_the_callers_variables(tmp_path: Path) -> None:
    from tests.test_cli import NO_DB, cli, cli_env

    run = await cli(cli_env(NO_DB, tmp_path), "token", "--sub", "probe")
    assert run.code == 0, run
    claims = jwt.get_unverified_claims(run.out.strip())
    assert claims.get("aud") == "zepix-hub", f"zepix-hub token read the caller's HUB_JWT_AUDIENCE: {json.dumps(claims)}"
