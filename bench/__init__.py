"""`zepix-hub bench` / `python -m bench`: the fan-out and write-path benchmark (docs/benchmarks.md).

Every worker here runs in its own process: the coordinator (run.py), the hub
under test, the naive baseline (naive.py), the ceiling reference (ceiling.py),
the load generator (writer.py) and the WebSocket client fleets (fleet.py).
It lives beside `service/`, not in it: the wheel does not carry it (ADR 0013).
"""
