"""CI cannot go green with parts missing: the checks that stop it, each run as CI would run it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.hubs import hub_variable

ROOT = Path(__file__).resolve().parent.parent


async def nested_pytest(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """pytest in a subprocess (its own session, its own environment); returns (exit code, output)."""
    base = {k: v for k, v in os.environ.items() if not hub_variable(k) and k != "CI"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "nested"), *args,
        cwd=str(ROOT), env={**base, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)  # hang guard
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_without_chromium_browser_tests_fail_under_ci_and_skip_elsewhere(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-chromium")
    code, out = await nested_pytest(tmp_path, "tests/test_browser.py", CI="true", HUB_TEST_CHROMIUM=missing)
    assert code == 1, f"CI=true went green without Chromium:\n{out[-3000:]}"
    assert f"CI=true and the browser tests cannot run: {missing} is missing" in out, out[-3000:]
    assert not re.search(r"\d+ (passed|skipped)", out), out[-3000:]
    code, out = await nested_pytest(tmp_path, "tests/test_browser.py", HUB_TEST_CHROMIUM=missing)
    # Outside CI: skipped loudly (5: pytest collected nothing else in this run).
    assert code == 5 and "BROWSER TESTS SKIPPED" in out and re.search(r"\b1 skipped\b", out), out[-3000:]
