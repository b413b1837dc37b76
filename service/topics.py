"""The closed set of topics and the parsing of topic lists from clients and tokens."""

from collections.abc import Iterable

from .errors import UnknownTopicError

SYS_STATUS = "sys_status"
TRADE_UPDATE = "trade_update"
LOG_STREAM = "log_stream"
NOTIFICATION = "notification"

ALL_TOPICS: frozenset[str] = frozenset({SYS_STATUS, TRADE_UPDATE, LOG_STREAM, NOTIFICATION})
#: Topics stored in the event log; sys_status is live-only.
PERSISTED_TOPICS: frozenset[str] = frozenset({TRADE_UPDATE, LOG_STREAM, NOTIFICATION})


def parse_topics(raw: str | Iterable[str]) -> frozenset[str]:
    """Parse "a,b" or an iterable of names; raise UnknownTopicError naming the first unknown one.

    An empty list is an error too: a client that wants nothing should not connect.
    """
    if isinstance(raw, str):
        names = raw.split(",")
    else:
        names = list(raw)
        if not all(isinstance(n, str) for n in names):
            raise UnknownTopicError("topics must be a list of strings")
    cleaned = [n.strip() for n in names if n.strip()]
    if not cleaned:
        raise UnknownTopicError("no topic given; known topics: " + ", ".join(sorted(ALL_TOPICS)))
    for name in cleaned:
        if name not in ALL_TOPICS:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise UnknownTopicError(f"unknown topic {shown!r}; known topics: " + ", ".join(sorted(ALL_TOPICS)))
    return frozenset(cleaned)
