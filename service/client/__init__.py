"""HubClient, a resuming /ws/live client: it imports without fastapi, starlette, uvicorn or asyncpg installed.

It shares only the protocol's vocabulary (service/topics.py, service/protocol.py), the error base and the
backoff rule with the server; tests/test_layers.py holds it to that (docs/adr/0012-concern-packages.md).
"""

from .hub_client import (
    Connected,
    Event,
    HubClient,
    HubClientError,
    HubItem,
    HubRejected,
    HubUnavailable,
    Reconnecting,
    Resumed,
    backoff_delay,
    live_url,
)

__all__ = [
    "Connected", "Event", "HubClient", "HubClientError", "HubItem", "HubRejected", "HubUnavailable",
    "Reconnecting", "Resumed", "backoff_delay", "live_url",
]
