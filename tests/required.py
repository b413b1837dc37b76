"""A tool a test module needs from the machine (Chromium, nginx): skipped loudly on a developer's machine
without it, a failure of every test under CI=true (a green CI must have run them)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest


def require(kind: str, missing: str | None) -> Callable[[], None]:
    """Call at the top of the module; assign the result to a module global so pytest finds the fixture.

    `missing` says what is absent and how to install it (None: all there). Outside CI the module is skipped
    at import; under CI=true it loads, and the returned autouse fixture fails each test before any database
    starts."""
    if missing is not None and os.environ.get("CI") != "true":
        pytest.skip(f"{kind.upper()} TESTS SKIPPED: {missing}", allow_module_level=True)

    @pytest.fixture(scope="session", autouse=True)
    def installed() -> None:
        if missing is not None:
            pytest.fail(f"CI=true and the {kind} tests cannot run: {missing}", pytrace=False)

    return installed
