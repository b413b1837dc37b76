"""Bad tokens, table-driven: 4001 (or 4003) on the WebSocket, 401 (or 403) over HTTP, and the hub serves on."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from websockets.exceptions import ConnectionClosed

from tests.hubs import SECRET, RunningHub, connect, recv_json, refused, running_hub


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "t", "iat": now, "exp": now + 600, "aud": "zepix-hub", **extra}


def _without_aud(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != "aud"}


def _hs(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return str(jwt.encode(claims, key, algorithm=alg))


BAD_TOKENS: dict[str, tuple[Callable[[], str | None], str]] = {
    "missing": (lambda: None, "missing token"),
    "empty": (lambda: "", "missing token"),
    "garbage": (lambda: "garbage", "malformed token"),
    "three garbage parts": (lambda: "a.b.c", "malformed token"),
    "wrong signature": (lambda: _hs(_claims(), key="another-secret-" + "y" * 40), "invalid token signature"),
    "alg none": (lambda: _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + ".",
                 "token algorithm not allowed"),
    "HS512 not on the allow-list": (lambda: _hs(_claims(), alg="HS512"), "token algorithm not allowed"),
    "expired": (lambda: _hs(_claims(exp=int(time.time()) - 5)), "token expired"),
    "not yet valid": (lambda: _hs(_claims(nbf=int(time.time()) + 600)), "token not yet valid"),
    "no exp": (lambda: _hs({"sub": "t", "aud": "zepix-hub"}), "token has no valid exp"),
    "too large": (lambda: _hs(_claims(pad="x" * 5000)), "token too large"),
    "bad topics claim": (lambda: _hs(_claims(topics=["nope"])), "invalid topics claim"),
    "topics claim not a list": (lambda: _hs(_claims(topics=5)), "invalid topics claim"),
}


async def _still_serving(hub: RunningHub) -> None:
    async with await connect(f"{hub.ws}?token={hub.token()}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_closes_4001_and_http_401(hub: RunningHub, case: str) -> None:
    make, reason = BAD_TOKENS[case]
    token = make()
    url = hub.ws if token is None else f"{hub.ws}?token={token}"
    assert await refused(url) == (4001, reason)
    async with httpx.AsyncClient(base_url=hub.http) as http:
        headers = {} if not token else {"Authorization": f"Bearer {token}"}
        r = await http.get("/api/events", params={"since": 0}, headers=headers)
    assert r.status_code == 401
    await _still_serving(hub)


async def test_token_by_header_and_by_subprotocol(hub: RunningHub) -> None:
    token = hub.token()
    async with await connect(hub.ws, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
    async with await connect(hub.ws, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert (await recv_json(ws))["type"] == "welcome"
    # A bad token in the subprotocol is refused the same way, still answering "bearer" so browsers see the code.
    assert await refused(hub.ws, subprotocols=["bearer", "garbage"]) == (4001, "malformed token")


async def test_query_token_wins_over_header(hub: RunningHub) -> None:
    code, _ = await refused(f"{hub.ws}?token=garbage", additional_headers={"Authorization": f"Bearer {hub.token()}"})
    assert code == 4001


async def test_forbidden_topics_close_4003_and_http_403(hub: RunningHub) -> None:
    narrow = hub.token(topics=["log_stream"])
    code, reason = await refused(f"{hub.ws}?token={narrow}&topics=trade_update")
    assert (code, reason) == (4003, "topic not allowed")
    async with httpx.AsyncClient(base_url=hub.http) as http:
        r = await http.get("/api/events", params={"since": 0, "topics": "trade_update"},
                           headers={"Authorization": f"Bearer {narrow}"})
    assert r.status_code == 403
    await _still_serving(hub)


@pytest.fixture
async def rs_hub(dsn: str) -> AsyncIterator[tuple[RunningHub, str, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    async with running_hub(dsn, jwt_secret=None, jwt_algorithms="RS256", jwt_public_key=public,
                           jwt_audience="zepix-dashboard", jwt_issuer="zepix-auth") as running:
        yield running, private, public


async def test_rs256_setup_rejects_algorithm_confusion_and_wrong_aud_iss(rs_hub: tuple[RunningHub, str, str]) -> None:
    hub, private, public = rs_hub
    good = _claims(aud="zepix-dashboard", iss="zepix-auth")
    ok = str(jwt.encode(good, private, algorithm="RS256"))
    async with await connect(f"{hub.ws}?token={ok}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
    # HS256 signed with the public key: the classic confusion attack.
    confused = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64(good)
    import hashlib
    import hmac
    sig = hmac.new(public.encode(), confused.encode(), hashlib.sha256).digest()
    confused += "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    cases = {
        "confusion": (confused, "token algorithm not allowed"),
        "wrong aud": (str(jwt.encode({**good, "aud": "other"}, private, algorithm="RS256")), "wrong token audience"),
        "no aud": (str(jwt.encode(_without_aud(_claims(iss="zepix-auth")), private, algorithm="RS256")),
                   "wrong token audience"),
        "wrong iss": (str(jwt.encode({**good, "iss": "evil"}, private, algorithm="RS256")), "wrong token issuer"),
    }
    for name, (token, reason) in cases.items():
        assert await refused(f"{hub.ws}?token={token}") == (4001, reason), name
        async with httpx.AsyncClient(base_url=hub.http) as http:
            r = await http.get("/api/events", params={"since": 0}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name


async def test_token_expiring_mid_session_closes_4001(hub: RunningHub) -> None:
    token = hub.token(ttl=2)
    exp = jwt.get_unverified_claims(token)["exp"]
    # log_stream only: no sys_status heartbeats, so a session that outlives its token stays silent and the
    # wait below ends a few seconds after exp, not at the suite's timeout.
    async with await connect(f"{hub.ws}?token={token}&topics=log_stream") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        grace = 5.0
        try:
            frame = await recv_json(ws, timeout=max(0.0, exp - time.time()) + grace)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the session dropped without a close frame at token expiry"
            assert (exc.rcvd.code, exc.rcvd.reason) == (4001, "token expired")
        except TimeoutError:
            raise AssertionError(f"the session stayed open {grace} s past its token's exp: "
                                 "the token-expiry timer did not close it 4001") from None
        else:
            raise AssertionError(f"expected a 4001 close at token expiry, got {frame}")


async def test_refresh_in_band_keeps_the_session(hub: RunningHub) -> None:
    first = hub.token(ttl=5)  # exp is whole seconds: 4-5 s of room for the bad refreshes below, short enough to outwait
    first_exp = jwt.get_unverified_claims(first)["exp"]
    async with await connect(f"{hub.ws}?token={first}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "refresh", "token": "garbage"}))
        bad = await recv_json_of(ws, "error")
        assert bad["code"] == "refresh_rejected"
        await ws.send(json.dumps({"type": "refresh", "token": hub.token(sub="someone-else")}))
        assert (await recv_json_of(ws, "error"))["message"] == "the new token is for another subject"
        await ws.send(json.dumps({"type": "refresh", "token": hub.token(ttl=600, topics=["log_stream"])}))
        ack = await recv_json_of(ws, "refreshed")
        assert ack["topics"] == ["log_stream"]
        await asyncio.sleep(max(0.0, first_exp + 1 - time.time()))  # past the first token's exp
        try:
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json_of(ws, "pong"))["type"] == "pong"
        except ConnectionClosed as exc:
            raise AssertionError(f"closed at the first token's exp despite the refresh ({exc.rcvd}): "
                                 "refresh did not re-arm the expiry timer") from None


async def test_refresh_narrows_the_topics_actually_delivered(hub: RunningHub, db: asyncpg.Connection) -> None:
    """Checked on the stream, not only on the `refreshed` reply: a trade committed after the narrowing
    refresh must not reach the socket (no sys_status here, so the next event is the first one delivered)."""
    async with await connect(f"{hub.ws}?token={hub.token()}&topics=trade_update,log_stream") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "refresh", "token": hub.token(topics=["log_stream"])}))
        assert (await recv_json_of(ws, "refreshed"))["topics"] == ["log_stream"]
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('BTCUSDT', 'BUY', 1)")
        await db.execute("INSERT INTO logs (level, msg) VALUES ('INFO', 'after the refresh')")
        frame = await recv_json_of(ws, "event")
        assert frame["topic"] == "log_stream", (
            f"after a refresh narrowed the token to log_stream, the stream still delivered {frame['topic']} "
            f"(seq {frame['seq']}): refresh did not narrow the topics delivered")
        assert frame["data"]["msg"] == "after the refresh"


async def recv_json_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        frame = await recv_json(ws)
        if frame["type"] == kind:
            return frame


async def test_foreign_origin_is_refused_4003_but_own_and_scripts_are_fine(hub: RunningHub) -> None:
    token = hub.token()
    code, reason = await refused(f"{hub.ws}?token={token}", origin="http://evil.example")  # type: ignore[arg-type]
    assert (code, reason) == (4003, "origin not allowed")
    for malformed in ("http://[", "http://[::1", "http://[zz]"):  # urlsplit raises on these
        assert await refused(f"{hub.ws}?token={token}", origin=malformed) == (4003, "origin not allowed")  # type: ignore[arg-type]
    own = f"http://127.0.0.1:{hub.port}"
    async with await connect(f"{hub.ws}?token={token}", origin=own) as ws:  # type: ignore[arg-type]
        assert (await recv_json(ws))["type"] == "welcome"


async def test_allowed_origins_setting(dsn: str) -> None:
    async with running_hub(dsn, allowed_origins="https://dash.example.com") as hub:
        token = hub.token()
        async with await connect(f"{hub.ws}?token={token}", origin="https://dash.example.com") as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "welcome"
        own = f"http://127.0.0.1:{hub.port}"
        assert (await refused(f"{hub.ws}?token={token}", origin=own))[0] == 4003  # type: ignore[arg-type]
