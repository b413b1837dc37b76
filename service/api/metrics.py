"""Prometheus metrics of one hub process, in a registry owned by its app (not the global one).

Under `serve --workers N` every worker writes to a private PROMETHEUS_MULTIPROC_DIR and /metrics, whichever
worker answers, adds them up; each gauge says how (`livesum`, `liveall`, `max`/`min`) (docs/adr/0010-worker-metrics.md).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from ..protocol import LABELLED_CLOSE_CODES

#: Set by the worker supervisor (service/api/server.py); unset, /metrics is this process's registry.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Why a connection was turned away (or, write_stalled, dropped) at the front door: docs/protocol.md, "Refusals".
REFUSAL_REASONS = ("subject_limit", "connection_limit", "header_too_large", "header_timeout", "write_stalled")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge("zepix_hub_connections", "Open WebSocket connections", registry=r,
                                 multiprocess_mode="livesum")
        self.events = Counter("zepix_hub_events_dispatched_total", "Events dispatched by the listener",
                              ["topic"], registry=r)
        self.frames = Counter("zepix_hub_frames_queued_total", "Frames queued to clients (fan-out)", registry=r)
        self.latency = Histogram(
            "zepix_hub_commit_to_send_seconds", "From the event's append (commit) to its hand-off to the sockets",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.listener_lag = Gauge("zepix_hub_listener_lag_events", "Head seq in the database minus last dispatched",
                                  registry=r, multiprocess_mode="liveall")
        self.listener_up = Gauge("zepix_hub_listener_up", "1 while the LISTEN connection is up", registry=r,
                                 multiprocess_mode="liveall")
        self.reconnects = Counter("zepix_hub_listener_reconnects_total", "Listener reconnects", registry=r)
        self.disconnects = Counter("zepix_hub_disconnects_total",
                                   "Closes by close code (codes the protocol does not define: other)", ["code"],
                                   registry=r)
        self.refused = Counter("zepix_hub_refused_total", "Connections turned away, by reason", ["reason"],
                               registry=r)
        for reason in REFUSAL_REASONS:  # present from the first scrape, so rate() sees the first refusal
            self.refused.labels(reason=reason)
        self.resumes = Counter("zepix_hub_resumes_total", "Resumes by outcome", ["recovered"], registry=r)
        self.replayed = Counter("zepix_hub_replayed_events_total", "Events sent by resume replays", registry=r)
        self.queue_peak = Gauge("zepix_hub_queue_depth_peak", "Highest client queue depth seen", registry=r,
                                multiprocess_mode="max")
        # The fast path (service/api/asgi.py) writes to uvicorn's transport directly; a uvicorn release that
        # renames what it relies on sends every client down the slower ASGI path, which this shows.
        self.writers = Counter("zepix_hub_connections_by_writer_total",
                               "Connections accepted, by how frames reach the socket: direct (the transport) or asgi",
                               ["writer"], registry=r)
        for writer in ("direct", "asgi"):
            self.writers.labels(writer=writer)
        self.direct_path = Gauge("zepix_hub_direct_write_path",
                                 "1: frames go straight to uvicorn's transport; 0: the slower ASGI path (see the log)",
                                 registry=r, multiprocess_mode="livemin")
        self.notify_queue = Gauge("zepix_hub_notify_queue_usage", "pg_notification_queue_usage()", registry=r,
                                  multiprocess_mode="livemax")
        self.worker_restarts = Counter("zepix_hub_worker_restarts_total",
                                       "Workers started by `serve --workers N` in place of one that died", registry=r)

    def closed(self, code: int) -> None:
        self.disconnects.labels(code=close_label(code)).inc()

    def closes(self, code: int | str) -> int:
        """How many connections closed with `code` ("other" for the rest) so far: the hub's code, else the client's."""
        value = self.registry.get_sample_value("zepix_hub_disconnects_total", {"code": str(code)})
        return int(value or 0)

    def refusal(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()

    def resumed(self, recovered: bool, count: int) -> None:
        self.resumes.labels(recovered=str(recovered).lower()).inc()
        self.replayed.inc(count)

    def render(self) -> bytes:
        """This process's metrics; under the worker supervisor, every live worker's (and the dead ones' counters)."""
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(merged)


def close_label(code: int) -> str:
    return str(code) if code in LABELLED_CLOSE_CODES else "other"
