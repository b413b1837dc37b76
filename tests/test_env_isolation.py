"""HUB_* variables in the environment of whoever runs the suite never reach the hubs the tests start."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from service.settings import Settings
from tests.env_probe import POISON
from tests.hubs import SUITE_KNOBS, hub_variable
from tests.pg import PgServer

ROOT = Path(__file__).resolve().parent.parent


def test_no_suite_knob_is_a_hub_setting() -> None:
    settings = {f"HUB_{name.upper()}" for name in Settings.model_fields}
    assert not SUITE_KNOBS & settings
    assert all(hub_variable(name) for name in settings | {"DATABASE_URL", "HUB_TOKEN", "HUB_BENCH_JSON"})
    assert not hub_variable("HUB_TEST_DATABASE_URL")


async def test_hubs_started_by_the_suite_ignore_the_callers_hub_variables(pg: PgServer, tmp_path: Path) -> None:
    """A pytest run with poisonous HUB_* variables in its environment: its in-process hub, its hub process
    and its CLI run all behave as the tests configured them (tests/env_probe.py shows it from outside)."""
    env = {k: v for k, v in os.environ.items() if not hub_variable(k)}
    env.update(POISON, HUB_TEST_DATABASE_URL=pg.admin_dsn)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "probe"),
        "tests/env_probe.py", cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)  # hang guard
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"a hub started by the suite read the caller's HUB_* variables:\n{text[-4000:]}"
    assert re.search(r"\b4 passed\b", text), text[-2000:]
    assert "ignored from the environment" in text and "HUB_JWT_AUDIENCE" in text, text[-3000:]
