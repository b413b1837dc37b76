"""Logging: text or JSON lines, and a filter that keeps tokens out of every line.

The filter sits on the handlers, so it sees every record, uvicorn's access log (query strings) included.
A record is one line: control characters are escaped, so no value can start a line that looks like another
record; traceback lines are indented under their record (docs/adr/0012-concern-packages.md).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, unquote_plus

_PATTERNS = (
    (re.compile(r"(?i)([?&]token=)[^&\s\"']*"), r"\1[REDACTED]"),
    (re.compile(r"(?i)(bearer[ ,]+)[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), r"\1[REDACTED]"),
    # A JWT anywhere (its first part an encoded JSON header), whole or cut short by a truncating logger.
    (re.compile(r"eyJ[A-Za-z0-9_\-]{6,}(?:\.[A-Za-z0-9_\-]*){0,2}"), "[REDACTED-JWT]"),
)
# websockets' DEBUG wire trace (on uvicorn.error) logs each received frame as "< %s" with the Frame as
# argument, cut to 75 characters: a refresh token's tail survives the cut with nothing left to
# recognise it by. Those records keep the frame's kind and size only.
_WIRE_IN = "< %s"


# Percent-encoding hides a token from the patterns above but not from the hub, which decodes query keys and
# values: `?tok%65n=%65yJ...` is a token= parameter. Encoded keys and runs are decoded before matching.
_QUERY_PARAM = re.compile(r"([?&])((?:[A-Za-z0-9_.~+\-]|%[0-9A-Fa-f]{2})+)=([^&\s\"'#]*)")
_ENCODED_RUN = re.compile(r"[A-Za-z0-9_.~\-]*(?:%[0-9A-Fa-f]{2}[A-Za-z0-9_.~\-]*)+")
_JWT = _PATTERNS[2][0]

# C0 (newline, carriage return, tab and ESC included), DEL, C1 (NEL among them), the Unicode line and
# paragraph separators, and the bidi overrides and isolates that reorder what a terminal shows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """The text on one line: every control character as a visible escape (\\n, \\x1b, \\u2028).

    Backslashes are left alone, so escaping twice changes nothing; a literal `\\n` typed by a client
    reads like an escaped newline, but cannot start a line.
    """
    return _CONTROL.sub(_escaped, text)


def _continuation(text: str) -> str:
    """Traceback or stack text under a record: lines kept, each indented, other controls escaped."""
    return "\n".join("    " + _CONTROL_BUT_NEWLINE.sub(_escaped, line) for line in text.split("\n"))


def _encoded_token_param(match: re.Match[str]) -> str:
    if unquote_plus(match.group(2)).lower() == "token":
        return f"{match.group(1)}{match.group(2)}=[REDACTED]"
    return match.group(0)


def _encoded_jwt(match: re.Match[str]) -> str:
    return "[REDACTED-JWT]" if _JWT.search(unquote(match.group(0))) else match.group(0)


def redact(text: str) -> str:
    """The text with every token-shaped part replaced, plain or percent-encoded."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    if "%" in text:
        text = _QUERY_PARAM.sub(_encoded_token_param, text)
        text = _ENCODED_RUN.sub(_encoded_jwt, text)
    return text


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (record.msg == _WIRE_IN and isinstance(args, tuple) and len(args) == 1
                and type(args[0]).__module__.startswith("websockets")):
            frame: Any = args[0]
            record.msg, record.args = f"< {frame.opcode.name} [{len(frame.data)} bytes]", None
            return True
        message = record.getMessage()
        cleaned = escape_controls(redact(message))
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class Retrying(logging.Filter):
    """asyncpg's pool logs "Failed to restore the pool connection floor; retrying" with a full traceback
    every second while PostgreSQL is away. The hub already says so (listener DOWN, sys_status DEGRADED):
    keep the line, with the error's one-line summary, and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.ERROR:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class TextFormatter(logging.Formatter):
    """The text format, redacting the whole line: tracebacks and stacks never pass the filter."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)  # also without the filter (pytest's handlers)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _continuation(redact(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(redact(super().formatStack(stack_info)))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        conn = getattr(record, "conn", None)
        if conn is not None:
            entry["conn"] = conn
        if record.exc_info:
            entry["exc"] = _CONTROL_BUT_NEWLINE.sub(_escaped, redact(self.formatException(record.exc_info)))
        if record.stack_info:
            entry["stack"] = _CONTROL_BUT_NEWLINE.sub(_escaped, redact(self.formatStack(record.stack_info)))
        # json.dumps escapes C0 only; DEL, C1, U+2028/9 and bidi controls would pass raw.
        entry["msg"] = escape_controls(redact(entry["msg"]))
        return json.dumps(entry, ensure_ascii=False)


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A dictConfig for the hub and uvicorn, every handler behind RedactTokens."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {
        "()": TextFormatter, "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactTokens}, "retrying": {"()": Retrying}},
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "filters": ["redact"], "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "service": {"handlers": ["default"], "level": level, "propagate": False},
            "asyncpg.pool": {"handlers": ["default"], "level": "WARNING", "propagate": False,
                             "filters": ["retrying"]},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
