"""Capped exponential backoff: the one rule every retry loop of the hub and its client waits by.

Standard library only (HubClient uses it). Used by the listener's reconnect, the demo feed, the worker
supervisor's restarts and HubClient (docs/adr/0012-concern-packages.md).
"""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` consecutive failures (0 = the first retry).

    The step doubles from `base` up to `cap`. With `rng`, equal jitter: half of the step is fixed (so retries
    never hammer) and half random (so a fleet of clients does not reconnect in lockstep); without, the step.
    """
    step = min(cap, base * 2.0 ** min(failures, 32))
    return step if rng is None else step / 2 + rng.uniform(0, step / 2)
