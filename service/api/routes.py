"""HTTP and WebSocket endpoints: thin, each hands off to the store, the session or the metrics.

Client mistakes get a 4xx with a reason, never a 500: 401 for a missing or bad
token, 403 for a topic the token does not allow, 410 for a `since` that is no
longer retained or an `epoch` that is not the log's, 422 for malformed parameters.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, Field

from ..errors import AuthError, ResumeGone, UnknownTopicError
from ..filters import (
    FIELDS,
    LEVELS,
    MAX_VALUE_CHARS,
    MAX_VALUES,
    FilterError,
    RowFilter,
    effective,
    filters_from_query,
    parse_filters,
)
from ..protocol import MAX_SEQ, parse_epoch
from ..store import migrate
from ..store.events import QUERIES
from ..topics import ALL_TOPICS, LOG_STREAM, PERSISTED_TOPICS, SYS_STATUS, TRADE_UPDATE, parse_topics
from .assets import STATIC_DIR, index_html
from .auth import TOPIC_ERRORS, Principal, topic_refusal
from .runtime import Hub
from .session import Session

router = APIRouter()
ASYNCAPI_FILE = STATIC_DIR.parent / "asyncapi.json"


class ErrorBody(BaseModel):
    detail: str


EPOCH_DOC = "The event log's epoch: a seq names an event only within it (docs/protocol.md, Resume)."


class GoneBody(BaseModel):
    detail: str
    oldest: int
    head: int
    epoch: str = Field(description=EPOCH_DOC)


class EventFrame(BaseModel):
    type: str
    topic: str
    seq: int
    ts: str
    data: dict[str, Any]


class EventsPage(BaseModel):
    events: list[EventFrame]
    next_since: int
    head: int
    oldest: int
    epoch: str = Field(description=EPOCH_DOC)


class SnapshotBody(BaseModel):
    head: int
    oldest: int
    epoch: str = Field(description=EPOCH_DOC)
    open_trades: list[dict[str, Any]]
    closed_trades: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    status: dict[str, Any] | None


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


# A security scheme, not a header parameter: /openapi.json then says what the header holds, and a schema-driven
# client sends a token instead of inventing header values.
bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="A JWT signed with the hub's key (README)")


def principal(hub: HubDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Principal:
    if credentials is None:
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <JWT>)",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return hub.verifier.verify(credentials.credentials.strip())
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


PrincipalDep = Annotated[Principal, Depends(principal)]
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, invalid or expired token"},
    403: {"model": ErrorBody, "description": "The token does not allow a requested topic"},
    422: {"description": "Malformed parameters"},
}


def _digits_only(value: object) -> object:
    """A number in a URL is ASCII digits, as `since` on /ws/live: not '+5', ' 5', '5.0' or '٥'.

    A leading '-' passes on to the range check, whose message ("greater than or equal to 0") says more.
    """
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError("must be an integer written in ASCII digits")
    return value


Digits = BeforeValidator(_digits_only)
_TOPIC = "|".join(sorted(ALL_TOPICS))
#: The `topics` parameter /openapi.json promises and the route enforces: known names, comma-separated, no
#: spaces or empty items. parse_topics checks first, for its clearer messages; it is more lenient (it strips).
TOPICS_PATTERN = f"^(?:{_TOPIC})(?:,(?:{_TOPIC}))*$"
_TOPICS_FORM = re.compile(TOPICS_PATTERN.rstrip("$") + r"\Z")
#: The `epoch` /openapi.json promises; parse_epoch enforces the same (a UUID in its 36-character form, any case).
EPOCH_PATTERN = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"


#: Row filters in the URL form (docs/protocol.md, "Row filters"), stated in /openapi.json. One rule JSON
#: Schema cannot state: a filter's topic must be among the request's topics.
_VALUES_PATTERN = f"^[^,]{{1,{MAX_VALUE_CHARS}}}(?:,[^,]{{1,{MAX_VALUE_CHARS}}}){{0,{MAX_VALUES - 1}}}$"
FILTER_PARAMETERS: list[dict[str, Any]] = [
    {"name": f"{topic}.{field}", "in": "query", "required": False,
     "description": (f"Row filter: only events whose {field} is at least this level" if field == "level" else
                     f"Row filter: only events whose {field} is one of these (comma-separated, exact)")
     + "; the topic must be among the requested topics. Intersected with the token's scope.",
     "schema": ({"type": "string", "enum": list(LEVELS)} if field == "level" else
                {"type": "string", "pattern": _VALUES_PATTERN})}
    for topic, fields in sorted(FIELDS.items()) for field in fields
]


def row_filter(request: Request, caller: Principal, topics: frozenset[str]) -> RowFilter | None:
    """The request's filters intersected with the token's scope; 422 naming the problem."""
    try:
        requested = parse_filters(filters_from_query(request.query_params.multi_items()), topics)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None
    return effective(requested, caller.scope, topics)


@router.get("/api/events", response_model=EventsPage, openapi_extra={"parameters": FILTER_PARAMETERS},
            responses={**AUTH_ERRORS, 410: {"model": GoneBody, "description": (
                "since is no longer retained, or epoch is not the log's: reload from /api/snapshot")}})
async def replay(
    request: Request,
    hub: HubDep,
    caller: PrincipalDep,
    since: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Return events with seq > since"), Digits],
    topics: Annotated[str | None, Query(max_length=200, json_schema_extra={"pattern": TOPICS_PATTERN},
                                        description="Comma-separated topics (default: every persisted "
                                                    "topic the token allows)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many events"), Digits] = 500,
    epoch: Annotated[str | None, Query(json_schema_extra={"pattern": EPOCH_PATTERN}, description=(
        "The epoch that goes with since (from a snapshot, a page, welcome or replayed); another log's epoch "
        "is answered 410. Without it since is taken at its word (clients before epochs)."))] = None,
) -> Response:
    """Events after `since`, in seq order, shaped like the live frames, with the log's `epoch`.

    With row filters (or a scoped token) a page may hold fewer than `limit` events, even none, while
    `next_since` moves past the rows it scanned: page on until `next_since` reaches `head`."""
    try:
        wanted_epoch = parse_epoch(epoch) if epoch is not None else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        wanted = parse_topics(topics) if topics is not None else caller.topics & PERSISTED_TOPICS
        if topics is not None and not _TOPICS_FORM.match(topics):
            raise UnknownTopicError("topics must be topic names separated by commas, without spaces or empty items")
        caller.check_topics(wanted)
    except TOPIC_ERRORS as exc:
        raise HTTPException(topic_refusal(exc).status, str(exc)) from None
    flt = row_filter(request, caller, wanted)
    try:
        if flt is None:
            page = await hub.store.read_page(since, wanted & PERSISTED_TOPICS, limit, wanted_epoch)
        else:
            page = await hub.store.read_filtered_page(since, wanted & PERSISTED_TOPICS, limit, wanted_epoch, flt)
    except ResumeGone as exc:
        return JSONResponse({"detail": str(exc), "oldest": exc.oldest, "head": exc.head, "epoch": exc.epoch},
                            status_code=410)
    # Frames are JSON already (rendered by the database): splice, don't re-encode. The epoch is a UUID.
    body = (f'{{"events":[{",".join(e.frame for e in page.events)}],"next_since":{page.next_since},'
            f'"head":{page.position.head},"oldest":{page.position.oldest},"epoch":"{page.position.epoch}"}}')
    return Response(body, media_type="application/json")


# The snapshot's filters are stated in its description, not as parameters: with no required parameter, a
# schema-invalid request would be one with unknown parameters, which every endpoint here ignores.
@router.get("/api/snapshot", response_model=SnapshotBody, responses=AUTH_ERRORS)
async def snapshot(request: Request, hub: HubDep, caller: PrincipalDep) -> Response:
    """Open trades, recent closed trades and log lines, with the `head` seq of the same database snapshot.

    Render this, then connect with since=head&epoch=epoch (and the same filters): no gap, no double, no
    other log. Row filters take the URL form of /api/events (`trade_update.strategy=grid,momentum`,
    `log_stream.level=WARNING`, ...) and apply to the trade lists and the log lines as on the stream; the
    token's `scope` claim always applies.
    """
    flt = row_filter(request, caller, caller.topics)
    trades_on = flt.on(TRADE_UPDATE) if flt is not None else None
    logs_on = flt.on(LOG_STREAM) if flt is not None else None
    snap = await hub.store.snapshot(hub.settings.snapshot_logs,
                                    trades_where=trades_on.columns() if trades_on is not None else None,
                                    logs_where=logs_on.columns() if logs_on is not None else None)
    trades_ok, logs_ok = TRADE_UPDATE in caller.topics, LOG_STREAM in caller.topics
    status = hub.heartbeat.latest_data if SYS_STATUS in caller.topics else None
    body = (
        f'{{"head":{snap.head},"oldest":{snap.oldest},"epoch":"{snap.epoch}",'
        f'"open_trades":[{",".join(snap.open_trades) if trades_ok else ""}],'
        f'"closed_trades":[{",".join(snap.closed_trades) if trades_ok else ""}],'
        f'"logs":[{",".join(snap.logs) if logs_ok else ""}],'
        f'"status":{json.dumps(status)}}}'
    )
    return Response(body, media_type="application/json")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; the body says why"}})
async def readyz(hub: HubDep) -> JSONResponse:
    """Ready when the database answers, migrations are at head and the listener is connected and not lagging."""
    problems: list[str] = []
    checks: dict[str, Any] = {"listener": hub.listener.up}
    if not hub.listener.up:
        problems.append("listener is not connected to the database")
    try:
        async with hub.pool.acquire(timeout=2) as conn:
            current = await migrate.current_revision(conn)
            head = int(await conn.fetchval(QUERIES["log_head"], timeout=2))
        expected = migrate.head_revision()
        checks.update(migration=current, expected_migration=expected, head=head,
                      last_dispatched=hub.listener.last_seq)
        if current != expected:
            problems.append(f"database is at migration {current}, expected {expected}: run zepix-hub migrate")
        lag = head - hub.listener.last_seq
        if lag > 1000:
            problems.append(f"listener lags {lag} events behind the database")
    except Exception as exc:
        problems.append(f"database unavailable: {type(exc).__name__}")
    body = {"status": "ready" if not problems else "not ready", "problems": problems, "checks": checks}
    return JSONResponse(body, status_code=200 if not problems else 503)


@router.get("/metrics", response_class=Response)
async def metrics(hub: HubDep) -> Response:
    """Prometheus text format, this process only."""
    return Response(hub.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi() -> FileResponse:
    """The AsyncAPI 3 description of /ws/live (docs/protocol.md is the one for people)."""
    return FileResponse(ASYNCAPI_FILE, media_type="application/json")


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    # The page itself is revalidated on every load; the files it links carry their content hash.
    return HTMLResponse(index_html(), headers={"Cache-Control": "no-cache"})


@router.websocket("/ws/live")
async def live(websocket: WebSocket) -> None:
    """The live stream; protocol in docs/protocol.md."""
    await Session(websocket, websocket.app.state.hub).run()
