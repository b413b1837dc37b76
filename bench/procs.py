"""The coordinator's side of the benchmark processes: start, talk to, measure and stop them.

Every process is started here and stopped here (SIGTERM, then SIGKILL after a
bounded wait), by its own pid; `Processes` remembers them all so that a
failing run still leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psutil

ROOT = Path(__file__).resolve().parent.parent


class HarnessError(RuntimeError):
    """The benchmark itself failed (a process died, a command timed out): exit non-zero."""


@dataclass(frozen=True, slots=True)
class Usage:
    cpu: float  # user + system seconds
    rss: int  # bytes, now
    hwm: int  # bytes, peak since the process started


def usage(pid: int) -> Usage:
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        rss = proc.memory_info().rss
    except psutil.Error:
        return Usage(0.0, 0, 0)
    hwm = rss
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return Usage(times.user + times.system, rss, hwm)


def busy_cpu() -> float:
    """Seconds all cores spent not idle since boot: the machine's load, ours and everybody else's."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usage(self) -> Usage:
        return usage(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self, wait_s: float = 10) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), wait_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class Worker(Child):
    """A fleet or writer process answering one JSON line per command."""

    async def call(self, cmd: dict[str, Any], wait_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        except TimeoutError:
            raise HarnessError(f"{self.name}: no answer to {cmd['cmd']!r} in {wait_s:.0f} s") from None
        if not line:
            raise HarnessError(f"{self.name} exited during {cmd['cmd']!r}:\n{self.log_tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise HarnessError(f"{self.name}: {cmd['cmd']!r} failed: {answer['error']}\n{self.log_tail()}")
        return answer

    async def stop(self, wait_s: float = 5) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(b'{"cmd": "exit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), wait_s)
        await super().stop(wait_s)


class Server(Child):
    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path, port: int) -> None:
        super().__init__(name, proc, log_path)
        self.port = port


class Processes:
    """Starts every benchmark process and remembers it, so `stop_all` can clean up after any failure."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self._n = 0

    def _log(self, name: str) -> Path:
        self._n += 1
        return self.workdir / f"{self._n:02d}-{name}.log"

    async def worker(self, module: str, name: str) -> Worker:
        log_path = self._log(name)
        with _open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"bench.{module}", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(ROOT), env=_env())
        worker = Worker(name, proc, log_path)
        self.children.append(worker)
        return worker

    async def hub(self, dsn: str, secret: str, extra_env: dict[str, str] | None = None) -> Server:
        log_path = self._log("hub")
        env = _env(HUB_DATABASE_URL=dsn, HUB_JWT_SECRET=secret, HUB_DEV="false", HUB_AUTO_MIGRATE="false",
                   HUB_LOG_LEVEL="INFO", HUB_RESUME_CAP="1000000", HUB_HOST="127.0.0.1",
                   # The fleet shares one token and opens thousands of sockets: lift the front-door caps.
                   HUB_MAX_CONNECTIONS="1000000", HUB_MAX_CONNECTIONS_PER_SUBJECT="1000000", **(extra_env or {}))
        argv = ["-m", "service.cli", "serve", "--port", "0"]
        if os.environ.get("HUB_BENCH_UVLOOP_HUB", "").lower() in ("1", "true", "yes"):
            # Experiment: the same hub with uvloop as asyncio's policy (what `serve` gets if it picks uvloop).
            argv = ["-c", "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
                          "from service.cli import main; sys.exit(main(['serve', '--port', '0']))"]
        with _open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *argv, stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL, cwd=str(ROOT), env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            found = re.findall(r"live at http://[\d.]+:(\d+)/", text)
            if found:
                server = Server("hub", proc, log_path, int(found[-1]))
                self.children.append(server)
                return server
            if proc.returncode is not None:
                raise HarnessError(f"the hub exited with {proc.returncode}:\n{text[-3000:]}")
            await asyncio.sleep(0.05)
        proc.kill()
        await proc.wait()
        raise HarnessError(f"the hub did not start in 60 s:\n{log_path.read_text(errors='replace')[-3000:]}")

    async def reference(self, module: str, dsn: str) -> Server:
        """The naive baseline or the ceiling reference; they print `READY <port>` once listening."""
        log_path = self._log(module)
        with _open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"bench.{module}", "--dsn", dsn, "--port", "0",
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                cwd=str(ROOT), env=_env())
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise HarnessError(f"{module} did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        server = Server(module, proc, log_path, int(line.split()[1]))
        self.children.append(server)
        return server

    async def stop(self, child: Child) -> None:
        await child.stop()
        if child in self.children:
            self.children.remove(child)

    async def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                await child.stop()
        self.children.clear()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")  # the caller closes it once the child holds its own copy


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") or k.startswith("HUB_BENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Profiler:
    """py-spy on a server during a measurement window, when HUB_BENCH_PROFILE names an output directory.

    Diagnosis only: sampling slows the server, so profiled runs are not comparable with unprofiled ones.
    Writes raw collapsed stacks (one `frame;frame;... count` line per stack) to DIR/<name>.txt.
    """

    def __init__(self, out: str | None) -> None:
        self.out = Path(out) if out else None
        self.spy: asyncio.subprocess.Process | None = None
        self.warned = False

    async def start(self, pid: int, name: str) -> None:
        if self.out is None:
            return
        exe = shutil.which("py-spy")
        if exe is None:
            if not self.warned:
                print("  .. HUB_BENCH_PROFILE is set but py-spy is not on PATH: not profiling", flush=True)
                self.warned = True
            return
        path = _mkdir(self.out) / f"{name}.txt"
        self.spy = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
            "--output", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def stop(self) -> None:
        spy, self.spy = self.spy, None
        if spy is None or spy.returncode is not None:
            return
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            await asyncio.wait_for(spy.wait(), 30)
        except TimeoutError:
            spy.kill()
            await spy.wait()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
