"""Tokens never logged: not in the query string, the Authorization header, the subprotocol, or a refresh.

A hub at DEBUG (as a `zepix-hub serve` process, and in-process under the very
logging configuration `serve` installs) sees every way a token can travel, good
and bad, over WebSocket and HTTP. Then every line it logged is searched for the
tokens, for pieces of them, and for anything shaped like a JWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from service.api.app import create_app
from service.api.auth import mint
from service.api.server import HubServer, uvicorn_config
from service.settings import load_settings
from tests.hubs import SECRET, HubProcess, connect, hub_settings, recv_json, recv_until

JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_\-]{2,}")
CAPTURED_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "service", "asyncio", "websockets")


@dataclass
class Tokens:
    """One distinct token per way in, so a leak names its path."""

    query: str
    header: str
    subprotocol: str
    refresh: str
    refresh_other_subject: str
    garbage: str
    expired: str
    http_header: str
    http_query: str

    @classmethod
    def mint(cls) -> Tokens:
        settings = load_settings(jwt_secret=SECRET)

        def token(sub: str, ttl: float = 600) -> str:
            return mint(settings, SECRET, subject=sub, ttl_s=ttl)

        valid = token("log-query")
        return cls(
            query=valid, header=token("log-header"), subprotocol=token("log-subprotocol"),
            refresh=token("log-query", ttl=900), refresh_other_subject=token("log-intruder"),
            # Looks like a JWT, signature does not match.
            garbage=valid.rsplit(".", 1)[0] + ".c2lnbmF0dXJlLXRoYXQtZG9lcy1ub3QtbWF0Y2gtYW55dGhpbmc",
            expired=token("log-expired", ttl=-120), http_header=token("log-http"), http_query=token("log-http-q"),
        )

    def all(self) -> dict[str, str]:
        return dict(vars(self))


async def _close_code(ws: websockets.ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await recv_json(ws, 10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


async def _refresh_in_band(ws_url: str, t: Tokens) -> None:
    """Tokens inside client frames: one refresh accepted, one for another subject, one forged."""
    async with await connect(f"{ws_url}?token={t.query}&topics=log_stream") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "refresh", "token": t.refresh}))
        assert (await recv_until(ws, lambda f: f["type"] != "event"))["type"] == "refreshed"
        for token in (t.refresh_other_subject, t.garbage):
            await ws.send(json.dumps({"type": "refresh", "token": token}))
            reply = await recv_until(ws, lambda f: f["type"] != "event")
            assert (reply["type"], reply["code"]) == ("error", "refresh_rejected")


async def _exercise(ws_url: str, http_url: str, t: Tokens, *, in_band: bool) -> None:
    """Every way a token reaches the hub, each checked to have done what it should."""
    # 1. ?token= (and, if asked, refreshes in-band).
    if in_band:
        await _refresh_in_band(ws_url, t)
    else:
        async with await connect(f"{ws_url}?token={t.query}&topics=log_stream") as ws:
            assert (await recv_json(ws))["sub"] == "log-query"
    # 2. Authorization: Bearer.
    async with await connect(ws_url, additional_headers={"Authorization": f"Bearer {t.header}"}) as ws:
        assert (await recv_json(ws))["sub"] == "log-header"
    # 3. The browser's way: the ["bearer", JWT] subprotocol pair.
    async with await connect(ws_url, subprotocols=["bearer", t.subprotocol]) as ws:
        assert (await recv_json(ws))["sub"] == "log-subprotocol"
    # 4. Bad tokens on every path: 4001, and the reason never echoes the token.
    bad = [
        connect(f"{ws_url}?token={t.garbage}"),
        connect(f"{ws_url}?token={t.expired}"),
        connect(ws_url, additional_headers={"Authorization": f"Bearer {t.expired}"}),
        connect(ws_url, subprotocols=["bearer", t.garbage]),
    ]
    for attempt in bad:
        async with await attempt as ws:
            assert await _close_code(ws) == 4001
    # 5. HTTP: header (good and expired), and a token wrongly put in the query string (401, but logged).
    async with httpx.AsyncClient(timeout=10) as http:
        ok = await http.get(f"{http_url}/api/events?since=0", headers={"Authorization": f"Bearer {t.http_header}"})
        assert ok.status_code == 200
        snap = await http.get(f"{http_url}/api/snapshot", headers={"Authorization": f"Bearer {t.http_header}"})
        assert snap.status_code == 200
        expired = await http.get(f"{http_url}/api/events?since=0", headers={"Authorization": f"Bearer {t.expired}"})
        assert expired.status_code == 401
        in_query = await http.get(f"{http_url}/api/events?since=0&token={t.http_query}")
        assert in_query.status_code == 401
        for resp in (expired, in_query):
            assert "eyJ" not in resp.text


def _leaks(text: str, t: Tokens) -> list[str]:
    """Whole tokens, 16-character pieces of their payload or signature, and anything JWT-shaped."""
    found: list[str] = []
    for name, token in t.all().items():
        if token in text:
            found.append(f"{name}: whole token")
            continue
        for part in token.split(".")[1:]:
            pieces = [part[i:i + 16] for i in range(0, max(1, len(part) - 15))]
            hit = next((p for p in pieces if p in text), None)
            if hit is not None:
                found.append(f"{name}: piece {hit!r}")
                break
    found += [f"JWT-like {m.group(0)[:24]!r} in: {_line_of(text, m.start())[:200]}" for m in JWT_LIKE.finditer(text)]
    return found


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)]


def _log_lines(text: str) -> list[str]:
    """The log lines of a `serve` process's output: without the CLI's banners ("is live", "stopped": prints,
    not log records)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("    zepix-hub ")]


# -- a `zepix-hub serve` process -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, level, in_band", [
    ("text", "DEBUG", False),
    ("json", "INFO", False),
    ("json", "DEBUG", False),
    ("text", "DEBUG", True),
])
async def test_serve_logs_no_token(dsn: str, tmp_path: Path, fmt: str, level: str, in_band: bool) -> None:
    log_path = tmp_path / "hub.log"
    proc = HubProcess(dsn, log_path, HUB_LOG_LEVEL=level, HUB_LOG_FORMAT=fmt).start()
    tokens = Tokens.mint()
    try:
        await _exercise(proc.ws, proc.http, tokens, in_band=in_band)
    finally:
        assert proc.terminate() == 0  # a clean stop flushes every line
    text = log_path.read_text()
    lines = _log_lines(text)
    # The level really applied: at DEBUG the handshakes and frames are traced, at INFO only access lines.
    assert len(lines) > (100 if level == "DEBUG" else 8), text[-2000:]
    assert _leaks(text, tokens) == [], _leaks(text, tokens)
    assert "token=[REDACTED]" in text  # the access line of the query-string request, redacted, not dropped
    assert "/api/events?since=0" in text
    if level == "DEBUG":  # the handshake trace printed the header and the subprotocol, redacted
        assert "authorization: Bearer [REDACTED]" in text and "sec-websocket-protocol: bearer, [REDACTED]" in text
    banner = [line for line in text.splitlines() if "live at" in line]
    assert len(banner) == 1 and "token" not in banner[0].split("(")[0]  # no dev token outside dev mode
    if fmt == "json":
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))  # one JSON object per line, tracebacks included
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
        for entry in entries:
            assert isinstance(entry, dict) and {"ts", "level", "logger", "msg"} <= set(entry), entry
        assert {e["logger"] for e in entries} >= {"uvicorn.access", "service.api.session", "uvicorn.error"}


# -- in-process, under the logging configuration `serve` installs ------------------------------------------

class Capture(logging.Handler):
    """Keeps each record's final text as it was when this handler saw it (redaction mutates records)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """uvicorn's Config applies the hub's dictConfig process-wide; put pytest's logging back afterwards."""
    saved = {}
    for name in CAPTURED_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, list(logger.filters), logger.disabled)
    try:
        yield
    finally:
        for name, (handlers, level, propagate, filters, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.filters, logger.disabled = propagate, filters, disabled


def _attach_captures() -> tuple[Capture, Capture, io.StringIO]:
    """A capture before the hub's handler (raw records) and one after it (as emitted); its stream to memory."""
    raw, emitted, stream = Capture(), Capture(), io.StringIO()
    hub_handler = logging.getLogger("service").handlers[0]
    assert isinstance(hub_handler, logging.StreamHandler) and hub_handler.filters, "not the hub's handler"
    hub_handler.setStream(stream)
    for name in CAPTURED_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.insert(0, raw)
        logger.handlers.append(emitted)
    return raw, emitted, stream


@pytest.mark.parametrize("fmt, in_band", [
    ("text", False), ("json", False), ("json", True),
])
async def test_in_process_hub_records_carry_no_token(dsn: str, fmt: str, in_band: bool) -> None:
    tokens = Tokens.mint()
    settings = hub_settings(dsn, log_level="DEBUG", log_format=fmt)
    with _restored_logging():
        # Building the config installs the hub's logging exactly as `zepix-hub serve` does.
        server = HubServer(uvicorn_config(create_app(settings), settings, port=0))
        raw, emitted, stream = _attach_captures()
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(600):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.05)
            assert server.started, "hub did not start"
            base = f"127.0.0.1:{server.port}"
            await _exercise(f"ws://{base}/ws/live", f"http://{base}", tokens, in_band=in_band)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
    output = stream.getvalue()
    assert len(emitted.lines) > 20 and output.count("\n") >= len(emitted.lines) // 2
    # What reached the hub's handler, and what it wrote, carries no token.
    assert _leaks("\n".join(line for _, line in emitted.lines), tokens) == []
    assert _leaks(output, tokens) == []
    assert "token=[REDACTED]" in output
    assert "authorization: Bearer [REDACTED]" in output and "sec-websocket-protocol: bearer, [REDACTED]" in output
    # The hub's own code never puts a token into a record, redaction or not (uvicorn's access
    # line and the websockets wire trace do, which is why the redacting filter exists).
    own = "\n".join(line for name, line in raw.lines if name.startswith("service"))
    assert own and _leaks(own, tokens) == []
    if fmt == "json":
        for line in output.splitlines():
            assert isinstance(json.loads(line), dict), line


# -- tokens that reach a log line by a side door ----------------------------------------------------------------

async def _malformed_subprotocol_handshake(port: int, token: str) -> str:
    """A handshake whose Sec-WebSocket-Protocol cannot be parsed: websockets logs a traceback quoting it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((
            "GET /ws/live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: bearer, {token};;\r\n\r\n").encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.read(200), 10)).decode(errors="replace").split("\r\n")[0]
    finally:
        writer.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_tracebacks_and_percent_encoded_tokens_are_redacted(dsn: str, tmp_path: Path, fmt: str) -> None:
    log_path = tmp_path / "hub.log"
    proc = HubProcess(dsn, log_path, HUB_LOG_LEVEL="DEBUG", HUB_LOG_FORMAT=fmt).start()
    settings = load_settings(jwt_secret=SECRET)
    header_token = mint(settings, SECRET, subject="log-bad-subprotocol", ttl_s=600)
    encoded_token = mint(settings, SECRET, subject="log-encoded-query", ttl_s=600)
    try:
        assert await _malformed_subprotocol_handshake(proc.port, header_token) == "HTTP/1.1 400 Bad Request"
        # The hub decodes query keys and values: this is ?token=<JWT>, and it is accepted.
        async with await connect(f"{proc.ws}?tok%65n=%65{encoded_token[1:]}") as ws:
            assert (await recv_json(ws))["sub"] == "log-encoded-query"
    finally:
        assert proc.terminate() == 0
    text = log_path.read_text()
    assert "InvalidHeaderFormat" in text  # the traceback is still logged, only redacted
    assert "tok%65n=[REDACTED]" in text
    for name, token in (("subprotocol", header_token), ("encoded", encoded_token)):
        for part in token.split(".")[1:]:
            assert part[:16] not in text and part[-16:] not in text, (name, text[-3000:])
    assert JWT_LIKE.findall(text) == []


def _exc_info(message: str) -> Any:
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize("text, survives", [
    (f"GET /ws/live?tok%65n={JWT}", "tok%65n=[REDACTED]"),
    ("GET /ws/live?%74%6F%6B%65%6E=opaque-secret&since=3", "&since=3"),
    (f"GET /x?a=%65{JWT[1:]}", "GET /x?a="),
    (f"GET /x?a={JWT.replace('e', '%65')}", "GET /x?a="),
    (f"invalid Sec-WebSocket-Protocol header: bearer, {JWT};;", "bearer, [REDACTED]"),
    ("100% of 50% is 50%", "100% of 50% is 50%"),
])
def test_redaction_sees_through_percent_encoding_and_tracebacks(text: str, survives: str) -> None:
    from service.logconfig import JsonFormatter, TextFormatter, redact

    secrets = [JWT.split(".")[1], JWT.split(".")[2], "opaque-secret"]
    cleaned = redact(text)
    assert survives in cleaned
    assert not any(s in cleaned for s in secrets), cleaned
    # The same text in an exception and a stack, through both formatters: nothing bypasses redaction.
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, "handshake failed: %s", (text,),
                               _exc_info(text), sinfo=f"Stack (most recent call last):\n  {text}")
    for formatter in (TextFormatter("%(levelname)s %(name)s: %(message)s"), JsonFormatter()):
        record.exc_text = None
        line = formatter.format(record)
        assert not any(s in line for s in secrets), (type(formatter).__name__, line)
        assert "ValueError" in line
