"""Per-subject connection slots: one token (or one leaked token) cannot hold the hub's sockets.

Counted in the process, like every other limit of the hub: with several workers each has its own count.
"""

from __future__ import annotations


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
