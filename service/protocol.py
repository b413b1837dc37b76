"""The /ws/live protocol's vocabulary shared by the hub and its clients: close codes and the `since`/`epoch` forms.

Standard library only, so HubClient imports it without the server's dependencies; the meaning of each code
is in docs/protocol.md, the layering in docs/adr/0012-concern-packages.md.
"""

from __future__ import annotations

import re

# Close codes. 1000-range ones are the standard's; 4000-range ones are ours.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # hub shutting down: reconnect (elsewhere) and resume with since
CLOSE_POLICY = 1008  # rate limit exceeded
CLOSE_TOO_BIG = 1009  # client frame over the size limit
CLOSE_INTERNAL_ERROR = 1011  # a bug in the hub's sender for this client: reconnect with since=<last seq>
CLOSE_TRY_AGAIN = 1013  # database unavailable during a resume, or too many connections for the token's subject
CLOSE_UNAUTHORIZED = 4001  # token missing, invalid or expired: get a new token
CLOSE_FORBIDDEN = 4003  # origin not allowed, or topics the token does not allow
CLOSE_TOO_SLOW = 4008  # the client fell behind: reconnect with since=<last seq>
CLOSE_BAD_REQUEST = 4400  # bad query parameters at connect (topics, since)
CLOSE_LOG_RESET = 4410  # the event log was restored to an earlier point: reload from a snapshot
#: What uvicorn reports for a client that closed without a code (1005) or vanished without a close (1006).
PEER_NO_STATUS = 1005
PEER_ABNORMAL = 1006

#: The close codes that get their own metric label; any other code (a client may send any of 1000-4999)
#: is counted as "other", so a client cannot mint thousands of time series.
LABELLED_CLOSE_CODES: frozenset[int] = frozenset({
    CLOSE_NORMAL, CLOSE_GOING_AWAY, PEER_NO_STATUS, PEER_ABNORMAL, CLOSE_POLICY, CLOSE_TOO_BIG,
    CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_TOO_SLOW,
    CLOSE_BAD_REQUEST, CLOSE_LOG_RESET,
})


#: The largest seq a client may send (`since`): PostgreSQL's bigint.
MAX_SEQ = 2**63 - 1


def parse_seq(text: str) -> int:
    """A seq given as text (`since` in a URL or on the command line); ValueError if it is not one.

    ASCII digits only: str.isdigit also takes '١' and '²', which int() reads differently or not at all.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_SEQ:
        raise ValueError(f"since must be a non-negative integer (a seq), not {text[:40]!r}")
    return int(text)


_EPOCH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_epoch(text: str) -> str:
    """The log's epoch as a client sends it back (`epoch` in a URL or on the command line); ValueError if it
    is not one. A UUID in its usual 36-character form, either case; returned in lower case, as the hub sends it.
    """
    if len(text) != 36 or not text.isascii() or not _EPOCH.fullmatch(text.lower()):
        raise ValueError(f"epoch must be the log's epoch as the hub sent it (a UUID such as "
                         f"'3f2c8a9e-1b7d-4c52-9a1e-6d0f4b8e2c71'), not {text[:40]!r}")
    return text.lower()
