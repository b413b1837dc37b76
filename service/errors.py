"""The hub's exception hierarchy: one base class, one clear message per case."""


class HubError(Exception):
    """Base class of every error the hub raises on purpose."""


class ConfigError(HubError):
    """The configuration is missing or contradictory; the message says which setting and how to fix it."""


class AuthError(HubError):
    """A token was missing, malformed, wrongly signed, expired or otherwise unacceptable.

    The message is short and safe to show to the client: it never contains the token.
    """


class ForbiddenTopicError(HubError):
    """A valid token asked for a topic its `topics` claim does not allow."""


class UnknownTopicError(HubError):
    """A topic name that the hub does not know."""


class ResumeGone(HubError):
    """A client asked to resume from before the retention floor, after the head of a reset log, or with the
    epoch of another log (`replaced`). `epoch` is the log's own: the one a reloaded client resumes with."""

    def __init__(self, message: str, *, oldest: int, head: int, epoch: str, replaced: bool = False) -> None:
        super().__init__(message)
        self.oldest = oldest
        self.head = head
        self.epoch = epoch
        self.replaced = replaced


class DatabaseSetupError(HubError):
    """The database could not be reached, started or migrated."""
