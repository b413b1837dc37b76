"""Pieces every benchmark process shares: the event loop, the fd limit and the JSON-lines control channel.

Workers (fleet.py, writer.py) take one JSON command per line on stdin and answer
with one JSON line on stdout; the coordinator drives them with `WorkerProcess`
(procs.py). Anything a worker wants to say to a human goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

# Re-exported (naive.py, ceiling.py, scenarios.py): the baselines and the ceiling LISTEN where the hub does.
from service.hub.listener import CHANNEL as CHANNEL

T_KEY = "bench_t"  # key of the writer's timestamp in logs.context
#: Since migration 0006 the NOTIFY payload is the seq alone (LISTEN needs no privilege, so it carries no
#: data): the baseline and the ceiling read the frames of the seqs they were told about, as the hub does.
FRAMES_OF = ("SELECT hub_event_frame_v1(seq, topic, created_at, payload) FROM events "
             "WHERE seq = ANY($1::bigint[]) ORDER BY seq")

Command = dict[str, Any]
Handler = Callable[[Command], Awaitable[dict[str, Any]]]


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as the hard limit allows (2,000 sockets need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on uvloop when it is installed (the hub runs on it through uvicorn), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(main)
    return uvloop.run(main)


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve_commands(handle: Handler) -> None:
    """Answer commands from stdin until {"cmd": "exit"} or EOF. A failing command answers {"error": ...}."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        try:
            cmd: Command = json.loads(line)
        except ValueError:
            reply({"error": f"bad command line: {line[:80]!r}"})
            continue
        if cmd.get("cmd") == "exit":
            reply({"ok": True})
            return
        try:
            reply(await handle(cmd))
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100); nan when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def server_main(serve: Callable[[str, int], Coroutine[Any, Any, Any]]) -> None:
    """The command line both reference servers share: --dsn, --port, a high fd limit, then serve."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_nofile()
    run_async(serve(args.dsn, args.port))
