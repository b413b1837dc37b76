"""The hub's connection limits: the front door's (FrontDoorLimits, enforced by the HTTP protocol in
service/api/uvicorn_internals.py) and the per-subject WebSocket slots.

Counted in the process, like every other limit of the hub: with several workers each has its own count.
Why these limits and where each bites: docs/adr/0009-front-door-limits.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    send_timeout_s: float = 2.0
    #: Called with (the ASGI app, a REFUSAL_REASONS entry) for every connection turned away; a module-level
    #: function, since the limits travel pickled to `--workers` processes.
    on_refusal: Callable[[Any, str], None] | None = None


#: Descriptors beyond the connections: the database pool and listener, logs, the embedded server's pipes.
SPARE_FILES = 100


def fit_open_file_limit(max_connections: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards its hard limit so `max_connections` sockets fit.

    A soft limit of 1024 (systemd's default) would otherwise make accept() fail with EMFILE long before the
    connection limit, and the hub could not open a database connection either. Warns when the hard limit is
    too low; never lowers a limit.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return
    if target < wanted:
        log.warning("the open-file limit (hard %d) is below HUB_MAX_CONNECTIONS (%d) + %d: raise it "
                    "(LimitNOFILE=, ulimit -n) or lower HUB_MAX_CONNECTIONS", hard, max_connections, SPARE_FILES)



class SubjectSlots:
    """Live WebSocket clients per token subject, at most `cap` each.

    `take` and `give_back` never await, so a session that takes a slot and registers its client without
    an await in between cannot be overtaken: the count is exact, not a race.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}

    def take(self, subject: str) -> bool:
        """Reserve a slot for `subject`; False when it already holds `cap` (the caller refuses the client)."""
        held = self._held.get(subject, 0)
        if held >= self.cap:
            return False
        self._held[subject] = held + 1
        return True

    def give_back(self, subject: str) -> None:
        held = self._held.get(subject, 0) - 1
        if held > 0:
            self._held[subject] = held
        else:
            self._held.pop(subject, None)  # an idle subject costs nothing: the dict holds live subjects only

    def count(self, subject: str) -> int:
        return self._held.get(subject, 0)
