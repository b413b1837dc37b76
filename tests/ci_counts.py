"""What each backend's pytest pass ran, and whether the passes agree (`.ci/run` ends with this).

Each pass writes a summary (HUB_TEST_SUMMARY=path, see conftest.py). The passes must run the same tests: a
backend that passed fewer than another fails the check unless the difference is exactly the tests marked
`@pytest.mark.backend(NAME, reason=...)` for the other backend, which are listed with their reasons.

    python -m tests.ci_counts SUMMARY.json [SUMMARY.json ...]    exit 1 when the passes disagree
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BACKENDS = ("server", "embedded")


def record(backend: str, passed: list[str], failed: list[str], skipped: dict[str, str],
           backend_only: dict[str, str]) -> dict[str, Any]:
    """The summary of one pass: node ids, and for skipped ones their reasons."""
    return {"backend": backend, "passed": sorted(passed), "failed": sorted(failed), "skipped": skipped,
            "backend_only": backend_only}


def verdict(summaries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(lines to print, problems): problems is empty when the passes agree."""
    lines: list[str] = []
    problems: list[str] = []
    for s in summaries:
        other = {k: v for k, v in s["skipped"].items() if k not in s["backend_only"]}
        lines.append(f"{s['backend']}: {len(s['passed'])} passed, {len(s['failed'])} failed, "
                     f"{len(s['backend_only'])} skipped as backend-only, {len(other)} skipped otherwise")
        for node, reason in sorted(s["backend_only"].items()):
            lines.append(f"   not on {s['backend']}: {node}: {reason}")
        for node, reason in sorted(other.items()):
            lines.append(f"   skipped on {s['backend']}: {node}: {reason}")
    for a in summaries:
        for b in summaries:
            if a is b:
                continue
            # What passed on b and did not pass on a must be b-only (skipped on a with a stated reason).
            missing = set(b["passed"]) - set(a["passed"]) - set(a["backend_only"])
            if missing:
                shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
                problems.append(f"{a['backend']} passed {len(missing)} test(s) fewer than {b['backend']} without a "
                                f"stated reason: {shown}")
    return lines, problems


def main(paths: list[str]) -> int:
    summaries: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in paths:
        try:
            summaries.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            problems.append(f"no test summary at {path} ({type(exc).__name__}): that pass did not finish")
    lines, disagreements = verdict(summaries)
    for line in lines:
        print(line)
    for problem in problems + disagreements:
        print(f"!! {problem}")
    return 1 if problems or disagreements else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
