"""The client message rate limiter and the WebSocket frame encoder, without a database or a server."""

from __future__ import annotations

import json
import struct

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from service.api.session import _RateLimit
from service.hub.frames import Frame, control, dumps, error, live_event, ws_text_frame


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_allows_a_burst_then_refuses_then_refills_at_the_rate() -> None:
    clock = Clock()
    limit = _RateLimit(rate=2.0, burst=3, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.25  # half a token
    assert not limit.allow()
    clock.now += 0.25  # a whole one
    assert limit.allow()
    assert not limit.allow()
    clock.now += 3600  # a long pause refills to the burst, not beyond
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]


def test_rate_limit_refusals_do_not_spend_tokens() -> None:
    clock = Clock()
    limit = _RateLimit(rate=1.0, burst=1, clock=clock)
    assert limit.allow()
    assert not any(limit.allow() for _ in range(100))
    clock.now += 1.0
    assert limit.allow(), "refused messages must not push the next allowed one further away"


def decode(wire: bytes) -> list[str]:
    """The frames in `wire`, read by websockets' own parser as a client would."""
    parser = Protocol(Side.CLIENT, max_size=None)
    parser.receive_data(wire)
    frames = parser.events_received()
    assert all(f.opcode is Opcode.TEXT and f.fin for f in frames)  # type: ignore[union-attr]
    return [f.data.decode() for f in frames]  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_of_every_length_class_parse_back(n: int) -> None:
    text = "é" * (n // 2) + "x" * (n % 2)  # n bytes, multi-byte characters included
    payload = text.encode()
    assert len(payload) == n
    wire = ws_text_frame(payload)
    assert decode(wire) == [text]
    assert wire[0] == 0x81 and not wire[1] & 0x80, "a server frame is FIN + text and never masked"
    header = {1: 2, 2: 4, 3: 10}[1 + (len(payload) >= 126) + (len(payload) >= 65536)]
    assert len(wire) == header + len(payload), "the shortest length encoding (RFC 6455 5.2)"
    if len(payload) >= 65536:
        assert struct.unpack("!Q", wire[2:10])[0] == len(payload)


def test_frames_concatenate_into_one_write() -> None:
    frames = [Frame("log_stream", i, dumps({"seq": i, "msg": "ü" * i})) for i in range(1, 200, 37)]
    assert decode(b"".join(f.wire for f in frames)) == [f.text for f in frames]


def test_frame_shapes_and_no_nan() -> None:
    assert json.loads(error("bad", "why").text) == {"type": "error", "code": "bad", "message": "why"}
    assert json.loads(control("pong").text) == {"type": "pong"}
    live = json.loads(live_event("sys_status", {"cpu": 1}).text)
    assert live["seq"] is None and live["topic"] == "sys_status" and live["data"] == {"cpu": 1}
    with pytest.raises(ValueError):
        dumps({"cpu": float("nan")})  # browsers' JSON.parse rejects NaN: never send it
    assert dumps({"k": "é"}) == '{"k":"é"}'
