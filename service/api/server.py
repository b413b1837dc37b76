"""HubServer: uvicorn's Server, with the hub's close codes on shutdown, and the worker supervisor.

uvicorn closes open WebSockets with 1012 at shutdown; the protocol promises 1001 ("going away": reconnect and
resume), so HubServer closes every client 1001 first and waits for them, bounded
(docs/adr/0003-close-codes.md, docs/adr/0010-worker-metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from prometheus_client import multiprocess

from ..backoff import backoff_delay
from ..errors import HubError
from ..logconfig import logging_config
from ..settings import Settings
from .limits import FrontDoorLimits, fit_open_file_limit
from .metrics import MULTIPROC_ENV
from .runtime import hub_behind
from .uvicorn_internals import HANDLED_SIGNALS, GuardedHttpToolsProtocol, get_subprocess, startup_problem

log = logging.getLogger(__name__)

#: A worker that died is restarted at once; if it dies again within HEALTHY_AFTER_S of its start, after
#: RESTART_MIN_S, doubling with every further quick death up to RESTART_MAX_S (a crash loop must not spin).
HEALTHY_AFTER_S = 10.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
#: A worker slot whose process died this many times in a row, each soon after its start, is a crash loop
#: (a bad deployment, a database that refuses the hub): the supervisor stops and exits non-zero, so that
#: systemd (Restart=) or whatever runs it sees the failure instead of a hub that never serves.
CRASH_LOOP_DEATHS = 5


class HubConfig(uvicorn.Config):
    """uvicorn's Config plus the front-door limits, which GuardedHttpToolsProtocol reads from it.

    The limits travel with the config (it is pickled to `--workers` processes), not in a global.
    """

    def __init__(self, app: Any, *, front_door: FrontDoorLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.front_door = front_door


def count_refusal(app: Any, reason: str) -> None:
    """The front door's refusal counter (FrontDoorLimits.on_refusal): zepix_hub_refused_total{reason}."""
    hub = hub_behind(app)
    if hub is not None:
        hub.metrics.refusal(reason)


def uvicorn_config(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None,
                   **kwargs: Any) -> uvicorn.Config:
    return HubConfig(
        app,
        front_door=FrontDoorLimits(max_connections=settings.max_connections,
                                   max_header_bytes=settings.max_header_bytes,
                                   header_timeout_s=settings.header_timeout_s,
                                   send_timeout_s=settings.send_timeout_s, on_refusal=count_refusal),
        # httptools, as uvicorn[standard] would pick, with the limits uvicorn lacks (service/api/uvicorn_internals.py).
        http=GuardedHttpToolsProtocol,
        host=host or settings.host,
        port=settings.port if port is None else port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,  # bigger client frames: close 1009, enforced by the protocol layer
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        # Browsers offer permessage-deflate; accepting it means compressing every frame once per client
        # (zepix-hub bench S2D), and such clients cannot share the pre-built frame bytes.
        ws_per_message_deflate=False,
        log_config=logging_config(settings.log_level, settings.log_format),
        # Checked (service/api/tls.py) before this runs; uvicorn loads the pair again in every worker.
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        # X-Forwarded-For/-Proto only from the proxy (HUB_FORWARDED_ALLOW_IPS), never from uvicorn's own
        # FORWARDED_ALLOW_IPS, which a hub must not pick up from whatever environment it runs in.
        proxy_headers=True,
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
        lifespan="on",
        timeout_graceful_shutdown=10,
        **kwargs,
    )


class HubServer(uvicorn.Server):
    #: Set by the worker supervisor on a worker started in place of one that died (it travels with the
    #: pickled server to the new process), counted in zepix_hub_worker_restarts_total.
    replacement = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        front_door = getattr(self.config, "front_door", None)
        if isinstance(front_door, FrontDoorLimits):
            fit_open_file_limit(front_door.max_connections)
        await super().startup(sockets)  # the app's lifespan first: then the hub exists
        hub = hub_behind(self.config.loaded_app)
        if hub is not None:
            hub.note_direct_path(startup_problem(self.config.ws_protocol_class))
            if self.replacement:
                hub.metrics.worker_restarts.inc()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first: a client told 1001 reconnects within a second and must land on another
        # process (or wait for the restart), not on this one, whose uvicorn would then close it 1012.
        for server in self.servers:
            server.close()
        hub = hub_behind(self.config.loaded_app)
        if hub is not None:
            try:
                await asyncio.wait_for(hub.going_away(), timeout=8)
            except Exception:
                pass  # uvicorn's own shutdown still closes whatever is left
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without sending the signal to the process again after the graceful shutdown.

        uvicorn re-raises a SIGTERM it has handled, so `zepix-hub serve` died by
        it (exit -15) and skipped its own cleanup (the demo feed, the event
        loop). The hub has finished its shutdown by then: the process exits 0.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("server is not listening")


def run_workers(config: uvicorn.Config, workers: int, on_bound: Callable[[int], None] | None = None) -> None:
    """Run `workers` HubServer processes on one listening socket until SIGINT/SIGTERM.

    uvicorn's own supervisor would start plain uvicorn Servers (1012 on shutdown
    instead of the hub's 1001), so this small one starts HubServers. Each worker
    runs its own listener on the shared database. A worker that dies (killed,
    out of memory) is started again; its clients were cut off and resume with
    `since`, on whichever worker accepts them. A worker that keeps dying soon
    after its start is restarted with a growing delay, up to RESTART_MAX_S; after CRASH_LOOP_DEATHS such
    deaths in a row the supervisor stops every worker and raises HubError (exit 1). Restarts are logged and
    counted (zepix_hub_worker_restarts_total). On SIGINT/SIGTERM every worker gets SIGTERM (its clients
    get 1001).

    The workers share a private PROMETHEUS_MULTIPROC_DIR, created here and deleted at exit, so that any
    worker's /metrics reports them all (service/api/metrics.py, docs/adr/0010-worker-metrics.md).
    """
    metrics_dir = tempfile.mkdtemp(prefix="zepix-hub-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by every worker started below

    def dead(pid: int) -> None:
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream

    try:
        _supervise(config, workers, on_bound, on_death=dead)
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(config: uvicorn.Config, workers: int, on_bound: Callable[[int], None] | None,
               on_death: Callable[[int], None]) -> None:
    sock = config.bind_socket()
    if on_bound is not None:
        on_bound(int(sock.getsockname()[1]))

    def spawn(replacement: bool = False) -> BaseProcess:
        server = HubServer(config)
        server.replacement = replacement
        process = get_subprocess(config, target=server.run, sockets=[sock])
        process.start()
        return process

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before any worker exists: a signal then stops them all
        signal.signal(sig, on_signal)
    processes: list[BaseProcess] = []
    try:
        for _ in range(workers):
            processes.append(spawn())
        started = [time.monotonic()] * workers
        delay = [0.0] * workers  # before the next start of each slot
        quick_deaths = [0] * workers
        due: list[float | None] = [None] * workers
        while not stop.wait(0.1):
            now = time.monotonic()
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                restart_at = due[i]
                if restart_at is None:
                    if process.pid is not None:
                        on_death(process.pid)  # its live gauges leave /metrics; its counters stay in the sums
                    quick = now - started[i] < HEALTHY_AFTER_S
                    quick_deaths[i] = quick_deaths[i] + 1 if quick else 0
                    if quick_deaths[i] >= CRASH_LOOP_DEATHS:
                        log.error("worker %d (pid %s) exited with %s, %d times in a row within %.0f s of its "
                                  "start; stopping", i, process.pid, process.exitcode, quick_deaths[i],
                                  HEALTHY_AFTER_S)
                        raise HubError(f"workers keep dying ({quick_deaths[i]} times in a row within "
                                       f"{HEALTHY_AFTER_S:.0f} s of starting): see the log above")
                    # The first death is restarted at once (clients are waiting); a repeat waits, doubling.
                    delay[i] = (0.0 if quick_deaths[i] <= 1 else
                                backoff_delay(quick_deaths[i] - 2, RESTART_MIN_S, RESTART_MAX_S))
                    due[i] = now + delay[i]
                    log.warning("worker %d (pid %s) exited with %s; starting a new one in %.1f s",
                                i, process.pid, process.exitcode, delay[i])
                elif now >= restart_at:
                    process.join(0)  # reap it
                    processes[i], started[i], due[i] = spawn(replacement=True), now, None
                    log.info("worker %d restarted (pid %s)", i, processes[i].pid)
    finally:
        # Also when spawning failed: the workers already running must not outlive the supervisor.
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(30)
            if process.is_alive():
                log.warning("worker pid %s did not stop within 30 s; killing it", process.pid)
                process.kill()
                process.join(5)
        sock.close()
