"""CI cannot go green with parts missing: the checks that stop it, each run as CI would run it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import ci_counts
from tests.hubs import nested_pytest


@pytest.mark.parametrize("module, variable, kind", [
    ("tests/test_browser.py", "HUB_TEST_CHROMIUM", "browser"),
    ("tests/test_proxy.py", "HUB_TEST_NGINX", "proxy"),
], ids=["without chromium", "without nginx"])
async def test_without_a_required_tool_its_tests_fail_under_ci_and_skip_elsewhere(
        tmp_path: Path, module: str, variable: str, kind: str) -> None:
    missing = str(tmp_path / "no-such-tool")
    code, out = await nested_pytest(tmp_path / "nested", module, CI="true", **{variable: missing})
    assert code == 1, f"CI=true went green without the {kind} tool:\n{out[-3000:]}"
    assert f"CI=true and the {kind} tests cannot run: {missing} is missing" in out, out[-3000:]
    assert not re.search(r"\d+ (passed|skipped)", out), out[-3000:]
    code, out = await nested_pytest(tmp_path / "nested", module, **{variable: missing})
    # Outside CI: skipped loudly (5: pytest collected nothing else in this run).
    assert code == 5 and f"{kind.upper()} TESTS SKIPPED" in out and re.search(r"\b1 skipped\b", out), out[-3000:]


async def test_backend_only_tests_are_skipped_with_their_reason_and_counted(tmp_path: Path) -> None:
    summary = tmp_path / "embedded.json"
    code, out = await nested_pytest(tmp_path / "nested", "tests/backend_probe.py", HUB_TEST_SUMMARY=str(summary),
                                    HUB_TEST_DATABASE_URL="")  # the embedded backend, whichever this pass is
    assert code == 0, out[-3000:]
    embedded = json.loads(summary.read_text())
    assert embedded["backend"] == "embedded"
    probe = "tests/backend_probe.py::"
    assert embedded["passed"] == [f"{probe}test_embedded_only", f"{probe}test_everywhere"]
    assert embedded["backend_only"] == {f"{probe}test_server_only": "server only: probe: needs the server"}
    # The other backend, as its pass would record it: the difference is explained, so the passes agree.
    server = ci_counts.record("server", ["tests/backend_probe.py::test_server_only",
                                         "tests/backend_probe.py::test_everywhere"], [],
                              {"tests/backend_probe.py::test_embedded_only": "embedded only: why"},
                              {"tests/backend_probe.py::test_embedded_only": "embedded only: why"})
    lines, problems = ci_counts.verdict([server, embedded])
    assert problems == [], problems
    assert "server: 2 passed, 0 failed, 1 skipped as backend-only, 0 skipped otherwise" in lines
    assert any("not on embedded: tests/backend_probe.py::test_server_only: server only" in line for line in lines)


def test_a_backend_that_passed_fewer_without_a_reason_fails_the_check() -> None:
    both = ["t.py::a", "t.py::b", "t.py::c"]
    server = ci_counts.record("server", both, [], {}, {})
    assert ci_counts.verdict([server, ci_counts.record("embedded", both, [], {}, {})])[1] == []
    # Browser tests skipped on one backend only: a skip, but not a backend-only one.
    skipped = ci_counts.record("embedded", both[:1], [], {"t.py::b": "no chromium"}, {})
    problems = ci_counts.verdict([server, skipped])[1]
    assert problems == ["embedded passed 2 test(s) fewer than server without a stated reason: t.py::b, t.py::c"]
    failed = ci_counts.record("embedded", both[:2], ["t.py::c"], {}, {})
    assert ci_counts.verdict([server, failed])[1] != []
