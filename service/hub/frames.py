"""Server->client frames of /ws/live (docs/protocol.md), each encoded once (RFC 6455) and shared by every client.

Event frames for persisted topics are rendered by the database (hub_event_frame_v1) and passed through as
text; the hub renders only its control frames and the live-only sys_status and connection notifications.
Close codes and the since/epoch forms are the protocol's vocabulary: service/protocol.py (docs/adr/0003-close-codes.md).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Frame:
    """One server->client text frame, serialised once and shared by every client that gets it."""

    topic: str | None  # None for control frames (welcome, pong, error, replayed)
    seq: int | None  # None for live-only frames
    text: str
    #: When the database appended the event (seconds since 1970), for the latency histogram; None for frames
    #: the hub renders itself and for replayed ones.
    appended: float | None = field(default=None, compare=False)
    wire: bytes = field(init=False, repr=False, compare=False)  # the whole WebSocket frame, header included

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", ws_text_frame(self.text.encode()))


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 5.2): what a server sends, the same for every client."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(obj: Any) -> str:
    """Compact JSON; NaN/Infinity raise ValueError here, since browsers' JSON.parse rejects the frame."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def live_event(topic: str, data: dict[str, Any]) -> Frame:
    """An event that is not persisted (sys_status, connection lost/restored): seq is null."""
    return Frame(topic, None, dumps({"type": "event", "topic": topic, "seq": None, "ts": utc_now_iso(), "data": data}))


def control(kind: str, **fields: Any) -> Frame:
    return Frame(None, None, dumps({"type": kind, **fields}))


def error(code: str, message: str) -> Frame:
    return control("error", code=code, message=message)


PONG = control("pong")
