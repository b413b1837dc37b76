"""Parse human durations such as 90s, 15m, 1h, 7d (CLI flags and HUB_RETENTION)."""

import re
from datetime import timedelta

from .errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """Return the duration, or raise ConfigError saying what a valid one looks like."""
    match = _PATTERN.match(text or "")
    if not match:
        raise ConfigError(f"invalid duration {text!r}: use a number and a unit, e.g. 90s, 15m, 1h, 7d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 or seconds > 3650 * 86400:
        raise ConfigError(f"invalid duration {text!r}: must be more than 0 and at most 10 years")
    return timedelta(seconds=seconds)
