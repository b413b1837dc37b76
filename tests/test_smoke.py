import httpx

from tests.hubs import RunningHub, connect, recv_json, recv_until


async def test_trade_insert_reaches_a_websocket_client(hub: RunningHub, db) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}") as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome"
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        frame = await recv_until(ws, lambda f: f.get("topic") == "trade_update")
        assert frame["data"]["trade"]["symbol"] == "BTCUSDT"
        assert frame["seq"] == 1
    async with httpx.AsyncClient(base_url=hub.http) as http:
        r = await http.get("/api/events", params={"since": 0},
                           headers={"Authorization": f"Bearer {hub.token()}"})
        assert r.status_code == 200
        assert [e["seq"] for e in r.json()["events"]] == [1]
