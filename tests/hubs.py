"""Run real hubs for tests: in-process (uvicorn in the test's loop, port 0) or as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import websockets

from service.api.app import create_app
from service.api.auth import mint
from service.api.runtime import Hub, hub_behind
from service.api.server import HubServer, uvicorn_config
from service.settings import Settings, load_settings

SECRET = "test-secret-" + "x" * 40
ROOT = Path(__file__).resolve().parent.parent

#: The suite's own knobs: read by the tests, never by a hub (none is a setting's name, see test_env_isolation).
SUITE_KNOBS = frozenset({"HUB_CHAOS_SECONDS", "HUB_CHAOS_SEED", "HUB_FUZZ_EXAMPLES"})


def hub_variable(name: str) -> bool:
    """Would a hub, the CLI or the bench read this variable? Every HUB_* (and DATABASE_URL) except the suite's
    own knobs (SUITE_KNOBS and HUB_TEST_*). Settings match names case-insensitively, so this does too."""
    upper = name.upper()
    if upper == "DATABASE_URL":
        return True
    return upper.startswith("HUB_") and not upper.startswith("HUB_TEST_") and upper not in SUITE_KNOBS


def hub_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(database_url=dsn, jwt_secret=SECRET, auto_migrate=False, dev=False,
                                  heartbeat_s=0.5, listener_poll_s=0.5, listener_health_s=1.0,
                                  reconnect_max_s=0.5, port=0, log_level="WARNING")
    values.update(overrides)
    return load_settings(**values)


@dataclass
class RunningHub:
    settings: Settings
    server: HubServer
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/live"

    @property
    def hub(self) -> Hub:
        hub = hub_behind(self.server.config.loaded_app)
        assert hub is not None
        return hub

    def token(self, sub: str = "tester", ttl: float = 600, topics: list[str] | None = None, **extra: Any) -> str:
        return mint(self.settings, SECRET, subject=sub, ttl_s=ttl,
                    topics=frozenset(topics) if topics is not None else None, extra=extra or None)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


@contextlib.asynccontextmanager
async def running_hub(dsn: str, **overrides: Any) -> AsyncIterator[RunningHub]:
    settings = hub_settings(dsn, **overrides)
    app = create_app(settings)
    server = HubServer(uvicorn_config(app, settings, port=0))
    server.config.log_config = None  # keep pytest's logging setup (caplog) in charge
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("hub did not start")
        if time.monotonic() > deadline:
            raise TimeoutError("hub did not start in 30 s")
        await asyncio.sleep(0.02)
    running = RunningHub(settings, server, task)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()


class HubProcess:
    """A hub in its own process (`zepix-hub serve`), for SIGKILL and multi-process tests."""

    def __init__(self, dsn: str, log_path: Path, port: int = 0, args: tuple[str, ...] = (), **env: str) -> None:
        self.dsn, self.log_path, self.requested_port = dsn, log_path, port
        self.args, self.env = args, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.scheme = "http"  # "https" when the hub serves TLS (it says so in its "live at" line)

    def start(self, timeout: float = 30) -> HubProcess:
        # Only what this hub is given: nothing the test process's environment says about hubs.
        inherited = {k: v for k, v in os.environ.items() if not hub_variable(k)}
        env = {**inherited, "HUB_DATABASE_URL": self.dsn, "HUB_JWT_SECRET": SECRET, "HUB_DEV": "false",
               "HUB_AUTO_MIGRATE": "false", "HUB_HEARTBEAT_S": "0.5", "HUB_LISTENER_POLL_S": "0.5",
               "HUB_LISTENER_HEALTH_S": "1", "HUB_RECONNECT_MAX_S": "0.5", "HUB_LOG_LEVEL": "INFO", **self.env}
        # A restart appends to the same log: look for "live at" only in what this run writes.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.requested_port or 0), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(Path(__file__).resolve().parent.parent))
        log.close()
        try:
            return self._wait_live(offset, timeout)
        except BaseException:
            self.kill()  # callers start hubs outside their try: a hub that did not come up must not outlive this
            raise

    def _wait_live(self, offset: int, timeout: float) -> HubProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            found = re.findall(r"live at (https?)://[\d.]+:(\d+)/", text)
            if found:
                self.scheme, port = found[-1]
                self.port = int(port)
                self.requested_port = self.port  # a restart comes back on the same port
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"hub did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    @property
    def ws(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/ws/live"

    @property
    def http(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the hub and everything it started: `--workers N` workers would outlive their supervisor."""
        if self.proc and self.proc.poll() is None:
            try:
                family = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                family = []
            self.proc.send_signal(signal.SIGKILL)  # first, so that it cannot replace the workers killed below
            self.proc.wait(10)
            kill_all(family)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; a hub still running after `timeout` is killed (its exit code then says -9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)


async def nested_pytest(base_temp: Path, *args: str, within: float = 120, **env: str) -> tuple[int, str]:
    """pytest in a subprocess (its own session; the environment of this one without hub variables or CI, plus
    `env`); returns (exit code, output). Past `within` it gets SIGINT, so that its session fixtures still drop
    what they created, and is killed only if that does not end it."""
    base = {k: v for k, v in os.environ.items() if not hub_variable(k) and k != "CI"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(base_temp), *args,
        cwd=str(ROOT), env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)  # hang guard
    except TimeoutError:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def kill_all(processes: list[psutil.Process], timeout: float = 10) -> None:
    """SIGKILL these processes (gone ones are skipped) and wait until none is left running."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.02)


def _running(process: psutil.Process) -> bool:
    # An orphan's zombie waits for whoever adopted it to reap it: dead is enough here.
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def recv_json(ws: websockets.ClientConnection, timeout: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str)
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


async def recv_until(ws: websockets.ClientConnection, pred: Any, timeout: float = 10) -> dict[str, Any]:
    """Receive frames until one satisfies `pred`; hang guard `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if pred(frame):
            return frame


async def connect(url: str, **kwargs: Any) -> websockets.ClientConnection:
    return await websockets.connect(url, open_timeout=10, close_timeout=2, max_size=None, **kwargs)


async def refused(url: str, deadline: float = 10, **kwargs: Any) -> tuple[int, str]:
    """Connect and expect a refusal: (close code, reason). An error frame may come first, `welcome` may not:
    a hub that lets the client in and closes it later (an expiry timer, a heartbeat-fed wait) fails here
    at once, not at the suite's timeout."""
    async with await connect(url, **kwargs) as ws:
        try:
            async with asyncio.timeout(deadline):
                while True:
                    frame = await recv_json(ws, deadline)
                    assert frame.get("type") != "welcome", f"the hub let the connection in (sent welcome): {frame}"
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "the connection dropped without a close frame"
            return exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            raise AssertionError(f"the hub neither refused nor welcomed the connection within {deadline} s") from None


@contextlib.asynccontextmanager
async def listener_cut_off(admin_dsn: str, db: asyncpg.Connection) -> AsyncIterator[None]:
    """What a restore looks like to a running hub: its listener's connection ends and cannot come back
    until the block is done (the database refuses new connections; `db`, already open, goes on)."""
    name = await db.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'zepix-hub-listener' AND datname = current_database()")
            yield
        finally:
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    finally:
        await admin.close()


async def raw_handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket handshake on a plain socket that will read nothing more unless told (a client that stops
    reading, or one dropped right after the 101); returns it once the 101 is read. The caller owns it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.to_thread(sock.recv, 1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
    except BaseException:
        sock.close()
        raise
    return sock


def alive(process: psutil.Process) -> bool:
    """The process exists and is not a zombie."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
