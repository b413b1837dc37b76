"""Break the hub on purpose and check that the suite notices: `python -m tests.mutants`.

Each mutation is data: a file, an exact piece of its text, and what replaces it. For each one the
runner copies the tree to a temporary directory (the checkout itself is never touched: no edits in
place, no git stash), applies the mutation there, runs the tests that should catch it by node id with
a per-test timeout, and prints one row: caught by an assertion, only by a timeout, by some other
error, or not at all, and how long the catching test ran.

A mutation whose old text is no longer found exactly once in its file stops the runner before it runs
anything: a mutation that silently applies to nothing would report "not caught" forever, or worse,
look fine. Update the mutation with the code.

Not part of CI (it runs the selected tests once per mutation, about a minute in all per mutation on a
busy machine); run it after changing a behaviour the table below covers. Tests run against the
embedded PostgreSQL unless HUB_TEST_DATABASE_URL is set, like the suite.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: pytest-timeout also bounds a test's setup: cut short, the suite's database would be left half-started.
MIN_TIMEOUT_S = 20.0
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "test-artifacts", ".zepix-hub", "__pycache__", "*.egg-info",
                                     ".mypy_cache", ".ruff_cache", ".pytest_cache")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail
    what: str  # the behaviour it breaks, for --list


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "expired-token-welcomed", "service/api/session.py",
        old="""            principal = hub.verifier.verify(token)
        except AuthError as exc:
            return await self._refuse(CLOSE_UNAUTHORIZED, str(exc))
""",
        new="""            principal = hub.verifier.verify(token)
        except AuthError as exc:
            if str(exc) != "token expired":
                return await self._refuse(CLOSE_UNAUTHORIZED, str(exc))
            principal = Principal(subject="expired", topics=PERSISTED_TOPICS | {SYS_STATUS}, expires_at=time.time())
""",
        tests=("tests/test_auth.py::test_bad_token_closes_4001_and_http_401[expired]",),
        what="the WebSocket handshake lets an expired token in; the expiry timer closes it 4001 later",
    ),
    Mutation(
        "snapshot-logs-without-log_stream", "service/api/routes.py",
        old="trades_ok, logs_ok = TRADE_UPDATE in caller.topics, LOG_STREAM in caller.topics",
        new="trades_ok, logs_ok = TRADE_UPDATE in caller.topics, True",
        tests=("tests/test_replay_api.py::test_snapshot_is_consistent_with_its_head",),
        what="/api/snapshot returns log lines to a token without log_stream",
    ),
    Mutation(
        "queue-max-bytes-ignored", "service/hub/connections.py",
        old="if depth > self._settings.queue_max_frames or self.queued_bytes > self._settings.queue_max_bytes:",
        new="if depth > self._settings.queue_max_frames:",
        tests=("tests/test_live.py::test_a_client_whose_queue_passes_max_bytes_is_closed_4008",),
        what="the HUB_QUEUE_MAX_BYTES limit removed (only the frame count closes a slow client)",
    ),
    Mutation(
        "listener-probe-removed", "service/hub/listener.py",
        old='await conn.fetchval("SELECT 1", timeout=min(5.0, health_every))',
        new="pass",
        tests=("tests/test_blackhole.py::test_listener_notices_blackholed_connection",),
        what="the listener's SELECT 1 liveness probe removed (a silently dead connection goes unnoticed)",
    ),
    Mutation(
        "readyz-lag-ignored", "service/api/routes.py",
        old="        if lag > 1000:\n",
        new="        if False:\n",
        tests=("tests/test_blackhole.py::test_readyz_reports_listener_lag",),
        what="/readyz no longer reports a listener that lags behind the database",
    ),
    Mutation(
        "notification-body-uncut", "sql/v6/04_hub_logs_event_v3.sql",
        old="'body', pg_catalog.left(NEW.msg, 500),",
        new="'body', NEW.msg,",
        tests=("tests/test_triggers.py::test_error_notification_body_is_cut_to_500_characters",),
        what="the notification body of an ERROR log line is no longer cut to 500 characters",
    ),
    Mutation(
        "expiry-timer-disabled", "service/api/session.py",
        old='self._expiry = asyncio.create_task(self._expire_at(principal.expires_at), name="hub-token-expiry")',
        new="self._expiry = None",
        tests=("tests/test_auth.py::test_token_expiring_mid_session_closes_4001",),
        what="the token-expiry timer disabled: a session outlives its token",
    ),
    Mutation(
        "origin-check-removed", "service/api/session.py",
        old='if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins):',
        new="if False:",
        tests=("tests/test_auth.py::test_foreign_origin_is_refused_4003_but_own_and_scripts_are_fine",
               "tests/test_auth.py::test_allowed_origins_setting"),
        what="the Origin check removed from the WebSocket handshake",
    ),
    Mutation(
        "refresh-does-not-narrow", "service/api/session.py",
        old="        self.hub.manager.set_topics(client, narrowed, row_filter)\n",
        new="",
        tests=("tests/test_auth.py::test_refresh_narrows_the_topics_actually_delivered",
               "tests/test_filters.py::test_a_narrower_refresh_narrows_the_live_stream_at_once"),
        what="refresh answers with the narrowed topics and scope but keeps delivering the old ones",
    ),
    Mutation(
        "refresh-widens-scope", "service/api/session.py",
        old="        self.scope = narrow_scope(self.scope, fresh.scope)\n",
        new="        self.scope = fresh.scope\n",
        tests=("tests/test_filters.py::test_a_scoped_token_never_sees_a_row_outside_its_scope"
               "[refresh to a wider scope]",),
        what="refresh takes the new token's scope as it is: a wider (or no) scope widens the session",
    ),
    Mutation(
        "scope-ignored", "service/filters.py",
        old="        if scope is not None:\n            for field in FIELDS.get(topic, ()):\n",
        new="        if False:\n            for field in FIELDS.get(topic, ()):\n",
        tests=("tests/test_filters.py::test_a_scoped_token_never_sees_a_row_outside_its_scope[resume from 0]",
               "tests/test_filters.py::test_a_scoped_token_never_sees_a_row_outside_its_scope[http replay]"),
        what="the token's scope is never intersected with the client's filters",
    ),
    Mutation(
        "replay-unfiltered", "service/api/session.py",
        old="if flt is not None and not flt.matches_frame(ev.topic, ev.frame):",
        new="if False:",
        tests=("tests/test_filters.py::test_live_and_resume_deliver_exactly_the_matching_events[strategy]",),
        what="a resume replays every event of the topics, whatever the filter",
    ),
    Mutation(
        "filter-per-client", "service/hub/connections.py",
        old="self._groups[topic].setdefault(on.key, (on, set()))[1].add(client)",
        new="self._groups[topic].setdefault(client.id, (on, set()))[1].add(client)",
        tests=("tests/test_filters.py::test_the_fan_out_evaluates_each_distinct_filter_once_per_event",),
        what="the fan-out evaluates a filter once per client instead of once per distinct filter",
    ),
    Mutation(
        "replay-keeps-dropped-topics", "service/api/session.py",
        old="                    if ev.topic not in client.topics:\n                        continue\n",
        new="",
        tests=("tests/test_filters.py::test_a_topic_change_during_a_resume_does_not_lift_the_scope_from_the_replay"
               "[unsubscribe]",),
        what="a resume keeps replaying a topic the client dropped meanwhile, outside the scope's filter",
    ),
    Mutation(
        "level-scope-skips-notifications", "service/filters.py",
        old='            if topic == NOTIFICATION and "level" in scope:\n',
        new='            if False:\n',
        tests=("tests/test_filters.py::test_a_level_scope_also_hides_the_notifications_of_lines_below_it",),
        what="a level scope hides log lines but not their notifications, which carry the same message",
    ),
    Mutation(
        "filter-key-ambiguous", "service/filters.py",
        old=("    key = json.dumps([topic, [[field, sorted(values)] for field, values in ordered]], "
             'separators=(",", ":"))\n'),
        new='    key = topic + ":" + ";".join(f"{field}={\',\'.join(sorted(values))}" for field, values in ordered)\n',
        tests=("tests/test_filters.py::test_filters_whose_values_hold_separators_are_never_grouped_together",),
        what="the canonical key joins values with ',': {'a,b'} and {'a','b'} share a group and one's events",
    ),
    Mutation(
        "queue-unbounded", "service/hub/connections.py",
        old="            self.request_close(CLOSE_TOO_SLOW, self.too_slow_reason())\n",
        new="            pass\n",
        tests=("tests/test_live.py::test_a_client_that_falls_behind_is_closed_4008_naming_its_last_seq",
               "tests/test_live.py::test_a_client_whose_queue_passes_max_bytes_is_closed_4008"),
        what="an unbounded client queue: a slow client is never closed 4008",
    ),
    Mutation(
        "refresh-keeps-old-expiry", "service/api/session.py",
        old="        self._arm_expiry(fresh)\n",
        new="",
        tests=("tests/test_auth.py::test_refresh_in_band_keeps_the_session",),
        what="an accepted refresh does not move the expiry timer: the session ends at the old token's exp",
    ),
    Mutation(
        "resume-duplicates-sent", "service/hub/connections.py",
        old="    return frame.seq if frame.seq > delivered else None\n",
        new="    return frame.seq\n",
        tests=("tests/test_live.py::test_resume_while_writers_write_has_no_gap_and_no_duplicate",),
        what="live frames already sent by the resume replay are sent again (the sender's duplicate filter)",
    ),
    Mutation(
        "subscribe-topic-unchecked", "service/api/session.py",
        old="""            if kind == "subscribe":
                principal.check_topics(wanted)
""",
        new="""            if False:
                principal.check_topics(wanted)
""",
        tests=("tests/test_live.py::test_narrow_token_topics",),
        what="subscribe adds topics the token does not allow",
    ),
    Mutation(
        "rate-limit-disabled", "service/api/session.py",
        old="            if not self._limit.allow():\n",
        new="            if False:\n",
        tests=("tests/test_live.py::test_oversized_frame_closes_1009_and_flood_closes_1008",),
        what="a client flooding messages is never closed 1008",
    ),
    Mutation(
        "resume-cap-ignored", "service/api/session.py",
        old="""            too_many = (not gone and bool(persisted)
                        and await hub.store.count_after(since, persisted, cap + 1) > cap)
""",
        new="""            too_many = False
""",
        tests=("tests/test_live.py::test_resume_past_the_cap_or_retention_is_not_recovered",),
        what="a resume past HUB_RESUME_CAP replays everything instead of answering recovered: false",
    ),
    Mutation(
        "commit-order-lock-removed", "sql/v6/04_hub_logs_event_v3.sql",
        old="    LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;\n",
        new="",
        tests=("tests/test_ordering.py::test_commit_order_lock_holds_a_later_commit_back",),
        what="the capture path no longer serialises commits: seq order is no longer commit order",
    ),
)


@dataclass
class Outcome:
    caught: str  # "yes", "no", "test missing", "baseline fails"
    how: str
    seconds: float
    detail: str = ""


def stale(mutations: tuple[Mutation, ...]) -> list[str]:
    """Mutations whose old text is not found exactly once: each one a line naming it."""
    problems = []
    for m in mutations:
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.old)
        if count != 1:
            problems.append(f"{m.name}: its old text occurs {count} times in {m.file} (must be exactly once)")
    return problems


def copy_tree(dest: Path) -> Path:
    tree = dest / "tree"
    shutil.copytree(ROOT, tree, ignore=COPY_IGNORE)
    return tree


def apply(m: Mutation, tree: Path) -> None:
    path = tree / m.file
    text = path.read_text()
    assert text.count(m.old) == 1, f"{m.name}: old text not found exactly once in {m.file}"
    path.write_text(text.replace(m.old, m.new))


def node_exists(tree: Path, node: str) -> bool:
    file, _, name = node.partition("::")
    assert name, f"{node}: name a test (path::function), not a file: each node id gets its own row in junit"
    path = tree / file
    function = name.split("[", 1)[0]
    return path.is_file() and re.search(rf"^(async )?def {re.escape(function)}\(", path.read_text(), re.M) is not None


def _junit_name(node: str) -> tuple[str, str]:
    file, _, name = node.partition("::")
    return file.removesuffix(".py").replace("/", "."), name


def classify(text: str) -> str:
    """How a failing test failed, from its junit failure message and text."""
    head = text.strip().splitlines()[0] if text.strip() else ""
    if "Failed: Timeout" in head:  # pytest-timeout: "Failed: Timeout (>60.0s) from pytest-timeout."
        return "timeout"
    if head.startswith(("TimeoutError", "asyncio.exceptions.TimeoutError")) or re.search(r"^E\s+TimeoutError", text,
                                                                                      re.M):
        return "timeout"
    if head.startswith(("AssertionError", "assert ")) or re.search(r"^E\s+(AssertionError|assert )", text, re.M):
        return "assertion"
    match = re.search(r"^E\s+([\w.]+(Error|Exception|Closed\w*))", text, re.M)
    return f"error ({match.group(1) if match else head[:60]})"


Result = tuple[str, float, str]  # (outcome, seconds, the failure's first line)


def run_tests(tree: Path, nodes: list[str], timeout: float, junit: Path) -> tuple[dict[str, Result], str]:
    """Run `nodes` in `tree`; returns ({node: (outcome, seconds, message)}, pytest's tail). outcome: passed,
    skipped, assertion, timeout, error (...), or missing when pytest did not report the node."""
    # junit_duration_report=call: a test's seconds from its start, not counting the database the first
    # test's setup starts.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={timeout:g}",
           f"--junitxml={junit}", "-o", "junit_duration_report=call", *nodes]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout * len(nodes) + 120)
    except subprocess.TimeoutExpired:
        # pytest-timeout should have ended each test long before. Interrupt pytest rather than kill it, so
        # its fixtures stop the hubs and the database they started; kill only if that hangs too.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return {n: ("timeout", timeout, "pytest did not finish") for n in nodes}, "pytest did not finish"
    tail = out[-2000:]
    results: dict[str, Result] = {}
    cases = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            cases[(case.get("classname", ""), case.get("name", ""))] = case
    for node in nodes:
        case = cases.get(_junit_name(node))
        if case is None:
            results[node] = ("missing", 0.0, "")
            continue
        seconds = float(case.get("time", "0"))
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            message = bad.get("message") or ""
            results[node] = (classify(message + "\n" + (bad.text or "")), seconds, message.split("\n")[0][:300])
        elif case.find("skipped") is not None:
            results[node] = ("skipped", seconds, "")
        else:
            results[node] = ("passed", seconds, "")
    return results, tail


def check_imports_from(tree: Path) -> None:
    """The copy's `service` must be the one imported there, not the editable install's checkout."""
    out = subprocess.run([sys.executable, "-c", "import service; print(service.__file__)"], cwd=tree,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"mutants: in the copy, `import service` loads {out}, not the copy: mutations would not "
                         "apply")


def run_one(m: Mutation, timeout: float, baseline: bool) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"zepix-mutant-{m.name}-") as tmp:
        tree = copy_tree(Path(tmp))
        check_imports_from(tree)
        present = [n for n in m.tests if node_exists(tree, n)]
        if not present:
            return Outcome("test missing", "-", 0.0, ", ".join(m.tests))
        if baseline:
            results, tail = run_tests(tree, present, timeout, Path(tmp) / "baseline.xml")
            failing = [n for n, (how, _, _) in results.items() if how != "passed"]
            if failing:
                return Outcome("baseline fails", ", ".join(results[n][0] for n in failing),
                               time.monotonic() - started, tail)
        apply(m, tree)
        results, tail = run_tests(tree, present, timeout, Path(tmp) / "mutant.xml")
    missing = [n for n in m.tests if n not in present or results[n][0] == "missing"]
    caught = [(n, how, s, msg) for n, (how, s, msg) in results.items() if how not in ("passed", "skipped", "missing")]
    if not caught:
        if missing:
            return Outcome("test missing", "-", 0.0, ", ".join(missing))
        return Outcome("no", "not caught", sum(r[1] for r in results.values()), tail)
    # The best catch counts: an assertion beats a timeout beats another error.
    rank = {"assertion": 0, "timeout": 2}
    node, how, seconds, message = min(caught, key=lambda c: rank.get(c[1], 1))
    return Outcome("yes", how, seconds, f"{_short(node)}: {message}")


def _short(node: str) -> str:
    return node.removeprefix("tests/")


def print_table(rows: list[tuple[Mutation, Outcome]]) -> None:
    header = ("mutation", "tests", "caught?", "how", "seconds")
    lines = [(m.name, " ".join(_short(t) for t in m.tests), o.caught, o.how, f"{o.seconds:.1f}") for m, o in rows]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *lines]:
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help=f"per-test timeout in seconds, at least {MIN_TIMEOUT_S:g} (the first test's setup "
                             "starts the database under it) (default 60)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run each mutation's tests on the unmutated copy; they must pass")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.timeout) and args.timeout >= MIN_TIMEOUT_S):
        parser.error(f"--timeout must be at least {MIN_TIMEOUT_S:g} seconds, not {args.timeout:g}")

    problems = stale(MUTATIONS)
    if problems:
        print("mutants: these mutations no longer apply; update them with the code:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    chosen = list(MUTATIONS)
    if args.only:
        known = {m.name for m in MUTATIONS}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            parser.error(f"unknown mutation {', '.join(unknown)}; --list shows them")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}\n    {m.file}\n    " + "\n    ".join(m.tests))
        return 0

    rows: list[tuple[Mutation, Outcome]] = []
    for m in chosen:
        print(f"mutants: {m.name} ...", file=sys.stderr, flush=True)
        outcome = run_one(m, args.timeout, args.baseline)
        print(f"mutants: {m.name}: {outcome.caught} ({outcome.how}, {outcome.seconds:.1f} s)", file=sys.stderr)
        print(f"    {outcome.detail}", file=sys.stderr, flush=True)
        rows.append((m, outcome))
    print_table(rows)
    return 0 if all(o.caught == "yes" and o.how == "assertion" for _, o in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
