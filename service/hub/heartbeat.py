"""The sys_status heartbeat: a psutil sample every HUB_HEARTBEAT_S seconds, broadcast live.

Owned by the app's lifespan. Sampling never blocks the loop (cpu_percent compares with the previous call);
`latest` goes to every new client right after its welcome, so nobody waits a period for a status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import psutil

from ..topics import SYS_STATUS
from .frames import Frame, live_event

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, period_s: float, *, broadcast: Callable[[Frame], object],
                 fields: Callable[[], Awaitable[dict[str, object]]]) -> None:
        self._period = period_s
        self._broadcast = broadcast
        self._fields = fields
        self._process = psutil.Process(os.getpid())
        self._started = time.monotonic()
        self.degraded = False
        self.latest: Frame | None = None
        self.latest_data: dict[str, object] | None = None
        psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless
        self._process.cpu_percent(interval=None)

    @property
    def status(self) -> str:
        return "DEGRADED" if self.degraded else "RUNNING"

    async def sample(self) -> Frame:
        data: dict[str, object] = {
            "status": self.status,
            "cpu": round(psutil.cpu_percent(interval=None)),
            "ram": round(psutil.virtual_memory().percent),
            "hub_cpu": round(self._process.cpu_percent(interval=None), 1),
            "hub_rss_mb": round(self._process.memory_info().rss / 2**20, 1),
            "uptime_s": round(time.monotonic() - self._started),
        }
        try:
            data.update(await self._fields())
        except Exception as exc:  # fields come from the database, which may be away: status still goes out
            log.debug("heartbeat fields unavailable: %s", exc)
        # Read again after the await: the listener may have gone down (or come back) meanwhile, and a sample
        # saying RUNNING must not reach clients after the "Connection Lost" notification.
        data["status"] = self.status
        self.latest_data = data
        self.latest = live_event(SYS_STATUS, data)
        return self.latest

    async def beat(self) -> None:
        self._broadcast(await self.sample())

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat sample failed")
            await asyncio.sleep(self._period)
