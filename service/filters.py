"""Row filters (the client's choice) and row scopes (the token's limit): parsing, intersection, matching.

One syntax everywhere (docs/protocol.md, "Row filters"): `<topic>.<field>` with
a set of exact values; `log_stream.level` is a minimum. Internally every
condition is a set of allowed values (a minimum level is the set of levels at
or above it), so intersecting a filter with a scope, or a scope with a
narrower one, is set intersection, and the canonical key of a filter is its
sorted conditions: clients whose keys are equal see exactly the same events,
which is what lets the fan-out evaluate a filter once per distinct key
(connections.py). Filters are evaluated in the hub on the frame the database
rendered, never in SQL (docs/adr/0014-row-filters-and-scopes.md).

A condition on a field an event lacks (null) does not match: a scoped token
sees only rows positively inside its scope.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import HubError
from .topics import LOG_STREAM, NOTIFICATION, TRADE_UPDATE

LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The fields a filter or a scope may name, per topic. sys_status has none: it is governed by topics alone.
FIELDS: dict[str, tuple[str, ...]] = {
    TRADE_UPDATE: ("side", "status", "strategy", "symbol"),
    LOG_STREAM: ("level", "source"),
    # source: a notification made from an ERROR/CRITICAL log line carries its line's source, so a scope on
    # source hides other bots' error toasts too; a hand-raised one (hub_notify) has none and is excluded.
    NOTIFICATION: ("source", "type"),
}
SCOPE_FIELDS: frozenset[str] = frozenset(f for fields in FIELDS.values() for f in fields)
MAX_VALUES = 32
MAX_VALUE_CHARS = 64


class FilterError(HubError):
    """A filter the hub cannot accept; the message names the parameter and the problem."""


#: (topic, field) -> the allowed values. Frozen so it can be shared and compared.
Conditions = frozenset[tuple[str, str, frozenset[str]]]


def _levels_from(minimum: str) -> frozenset[str]:
    return frozenset(LEVELS[LEVELS.index(minimum):])


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _values(name: str, field: str, raw: object) -> frozenset[str]:
    """Check one field's values (a list of strings) and return the allowed set."""
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise FilterError(f"{name}: values must be a list of strings")
    if not raw:
        raise FilterError(f"{name}: no value given")
    if len(raw) > MAX_VALUES:
        raise FilterError(f"{name}: {len(raw)} values, at most {MAX_VALUES} allowed")
    for value in raw:
        if not value:
            raise FilterError(f"{name}: empty value")
        if len(value) > MAX_VALUE_CHARS:
            raise FilterError(f"{name}: value {_show(value)} is longer than {MAX_VALUE_CHARS} characters")
        try:  # JSON may carry a lone surrogate ("\ud800"): no row holds one, and no frame could echo it
            value.encode()
        except UnicodeEncodeError:
            raise FilterError(f"{name}: a value is not valid Unicode text") from None
    if field == "level":
        if len(raw) != 1:
            raise FilterError(f"{name} is a minimum level: give one of {', '.join(LEVELS)}")
        if raw[0] not in LEVELS:
            raise FilterError(f"{name}: unknown level {_show(raw[0])}; one of {', '.join(LEVELS)}")
        return _levels_from(raw[0])
    return frozenset(raw)


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """The conditions on one topic: an event matches when every field's value is in its set."""

    topic: str
    conditions: tuple[tuple[str, frozenset[str]], ...]  # sorted by field: part of the canonical key
    key: str

    def matches(self, fields: Mapping[str, object]) -> bool:
        for field, allowed in self.conditions:
            value = fields.get(field)
            if not isinstance(value, str) or value not in allowed:
                return False
        return True

    def columns(self) -> dict[str, list[str]]:
        """The allowed values per column, for the snapshot's queries (a minimum level spelt out)."""
        # A NUL matches no text column (PostgreSQL's text cannot hold one) and cannot be sent as a parameter.
        return {field: sorted(v for v in values if "\x00" not in v) for field, values in self.conditions}


def _topic_filter(topic: str, conds: dict[str, frozenset[str]]) -> TopicFilter:
    ordered = tuple(sorted(conds.items()))
    # JSON, not joined text: a value may hold any separator (the JSON form allows "a,b"), and two filters
    # that share a key share one evaluation in the fan-out, so equal keys must mean equal conditions.
    key = json.dumps([topic, [[field, sorted(values)] for field, values in ordered]], separators=(",", ":"))
    return TopicFilter(topic, ordered, key)


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A client's effective filter: per topic, the conditions its events must meet (absent = all pass)."""

    topics: dict[str, TopicFilter]

    @property
    def key(self) -> str:
        """Canonical: equal keys select exactly the same events."""
        return json.dumps([self.topics[t].key for t in sorted(self.topics)])

    def on(self, topic: str) -> TopicFilter | None:
        return self.topics.get(topic)

    def as_json(self) -> dict[str, list[str]]:
        """The JSON form (`welcome`, `topics`, `refreshed`): a minimum level as its one value."""
        out: dict[str, list[str]] = {}
        for topic in sorted(self.topics):
            for field, values in self.topics[topic].conditions:
                if field == "level":
                    out[f"{topic}.level"] = [next(lv for lv in LEVELS if lv in values)] if values else []
                else:
                    out[f"{topic}.{field}"] = sorted(values)
        return out

    def matches_frame(self, topic: str, frame: str) -> bool:
        flt = self.topics.get(topic)
        return flt is None or flt.matches(event_fields(topic, frame))

    def only(self, topics: Iterable[str]) -> RowFilter | None:
        kept = {t: f for t, f in self.topics.items() if t in set(topics)}
        return RowFilter(kept) if kept else None


def parse_filters(pairs: Mapping[str, object], topics: frozenset[str]) -> RowFilter | None:
    """`{"<topic>.<field>": [values]}` -> a RowFilter, checking every rule; FilterError names the problem.

    `topics` are the client's (after this request): a filter on any other topic is an error, since it
    would silently do nothing.
    """
    per_topic: dict[str, dict[str, frozenset[str]]] = {}
    for name, raw in pairs.items():
        if not isinstance(name, str):
            raise FilterError("filter names are strings: <topic>.<field>")
        topic, dot, field = name.partition(".")
        if not dot:
            raise FilterError(f"filter {_show(name)}: write <topic>.<field>, e.g. trade_update.strategy")
        if topic not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise FilterError(f"filter {_show(name)}: unknown topic {_show(topic)}; topics with filters: {known}")
        if field not in FIELDS[topic]:
            raise FilterError(f"filter {_show(name)}: unknown field {_show(field)}; {topic} has "
                              + ", ".join(f"{topic}.{f}" for f in FIELDS[topic]))
        if topic not in topics:
            raise FilterError(f"filter {name}: topic {topic} is not subscribed")
        per_topic.setdefault(topic, {})[field] = _values(name, field, raw)
    if not per_topic:
        return None
    return RowFilter({t: _topic_filter(t, c) for t, c in per_topic.items()})


def filters_from_query(params: Iterable[tuple[str, str]]) -> dict[str, object]:
    """The URL form: one parameter per `<topic>.<field>`, values comma-separated. Any parameter with a dot
    is taken as a filter (so a misspelt one is an error, not ignored); a field given twice is an error."""
    out: dict[str, object] = {}
    for name, value in params:
        if "." not in name:
            continue
        if name in out:
            raise FilterError(f"filter {_show(name)} given twice: put its values in one, comma-separated")
        out[name] = value.split(",")
    return out


# -- scopes ------------------------------------------------------------------------------------------

Scope = dict[str, frozenset[str]]


def parse_scope(raw: object) -> Scope:
    """A token's `scope` claim: `{"strategy": ["grid"], ...}` (field names without topic). ValueError if
    malformed: the caller makes it an invalid token. `level` is a minimum, as in a filter."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("scope must be a non-empty object of field -> values")
    scope: Scope = {}
    for field, values in raw.items():
        if field not in SCOPE_FIELDS:
            raise ValueError(f"unknown scope field {field!r}")
        try:
            scope[field] = _values(f"scope {field}", field, values)
        except FilterError as exc:
            raise ValueError(str(exc)) from None
    return scope


def narrow_scope(old: Scope | None, new: Scope | None) -> Scope | None:
    """What a session may see after a refresh: never more than before (the intersection)."""
    if old is None:
        return new
    if new is None:
        return old
    merged = dict(old)
    for field, values in new.items():
        merged[field] = merged[field] & values if field in merged else values
    return merged


def scope_json(scope: Scope) -> dict[str, list[str]]:
    return {f: ([next(lv for lv in LEVELS if lv in v)] if f == "level" and v else sorted(v))
            for f, v in sorted(scope.items())}


def effective(requested: RowFilter | None, scope: Scope | None, topics: Iterable[str]) -> RowFilter | None:
    """The client's filter intersected with the token's scope, on the client's topics: what it gets."""
    per_topic: dict[str, dict[str, frozenset[str]]] = {}
    for topic in topics:
        conds: dict[str, frozenset[str]] = {}
        wanted = requested.on(topic) if requested is not None else None
        if wanted is not None:
            conds.update(wanted.conditions)
        if scope is not None:
            for field in FIELDS.get(topic, ()):
                if field in scope:
                    conds[field] = conds[field] & scope[field] if field in conds else scope[field]
            if topic == NOTIFICATION and "level" in scope:
                # A log line's notification is typed by its level and carries its message: a level scope
                # must hide it as it hides the line (a hand-raised type outside the levels is hidden too).
                typed = frozenset(level.lower() for level in scope["level"])
                conds["type"] = conds["type"] & typed if "type" in conds else typed
        if conds:
            per_topic[topic] = conds
    if not per_topic:
        return None
    return RowFilter({t: _topic_filter(t, c) for t, c in per_topic.items()})


# -- matching ----------------------------------------------------------------------------------------

def row_fields(topic: str, data: object) -> dict[str, Any]:
    """The filterable fields of an event's `data` (a trade_update's are in its `trade`)."""
    if not isinstance(data, dict):
        return {}
    if topic == TRADE_UPDATE:
        trade = data.get("trade")
        return trade if isinstance(trade, dict) else {}
    return data


def event_fields(topic: str, frame: str) -> dict[str, Any]:
    """The fields of a rendered event frame. One parse per event, whatever the number of filters."""
    try:
        parsed = json.loads(frame)
    except ValueError:
        return {}
    return row_fields(topic, parsed.get("data") if isinstance(parsed, dict) else None)
