"""Tables and verdicts: every figure next to its ratio to the baseline and the ceiling of the same run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .capture import PREVIOUS_CAPTURE
from .scenarios import CEILING, HUB, NAIVE, Run


@dataclass(frozen=True, slots=True)
class Verdict:
    scenario: str
    target: str
    measured: str
    met: bool
    note: str = ""

    def line(self) -> str:
        mark = "MET   " if self.met else "MISSED"
        note = f"; {self.note}" if self.note else ""
        return f"  {self.scenario:<4} {mark} {self.target}: {self.measured}{note}"


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    v = seconds * 1000
    return f"{v:,.1f} ms" if v < 100 else f"{v:,.0f} ms"


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def codes(run: Run) -> str:
    return ",".join(f"{k}x{v}" for k, v in sorted(run.close_codes.items())) or "none"


LIVE_HEADER = (f"  {'server':<20}{'delivered':>24}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}"
               f"{'srv CPU s':>11}{'srv peak RSS':>14}{'gen CPU s':>11}{'clients CPU s':>15}"
               f"{'other CPU s':>13}  close codes")


def live_row(run: Run, label: str | None = None) -> str:
    delivered = f"{run.delivered:,}/{run.expected:,} {100 * run.delivered_ratio:5.1f}%"
    clients = f"{run.fleet_cpu:.2f} ({run.fleet_util:.0%})"
    return (f"  {label or run.target:<20}{delivered:>24}{ms(run.p(50)):>10}{ms(run.p(95)):>10}"
            f"{ms(run.p(99)):>10}{ms(run.worst):>10}{run.server_cpu:>11.2f}{mb(run.server_hwm):>14}"
            f"{run.gen_cpu:>11.2f}{clients:>15}{run.other_cpu:>13.2f}  {codes(run)}")


def worst_second(run: Run) -> str:
    """The second with the highest p99, if it stands out (3x its run's median per-second p99).

    A single run keeps its timeline in extra["timeline"]; median_run keeps every repetition's in
    extra["timelines"]."""
    timelines = run.extra.get("timelines") or [run.extra.get("timeline", [])]
    for i, timeline in enumerate(timelines):
        seconds = [s for s in timeline if s["n"] >= 100]
        if len(seconds) < 3:
            continue
        typical = sorted(s["p99"] for s in seconds)[len(seconds) // 2]
        bad = max(seconds, key=lambda s: s["p99"])
        if bad["p99"] >= 3 * typical:
            which = f" of repetition {i + 1}" if len(timelines) > 1 else ""
            return (f"latency is not steady: second {bad['s']}{which} had p99 {ms(bad['p99'])} "
                    f"(median second: {ms(typical)}); see the timelines in the JSON")
    return ""


TCP_ENDS = {7: "we got a reset", 8: "we got a FIN", 100: "the server's socket is gone",
            107: "the server's socket is gone", 110: "the server's socket is gone",
            104: "the server closed its end (FIN queued behind the unread data)"}



def ratio_rows(hub: Run, others: dict[str, Run]) -> list[str]:
    rows = []
    for name in (NAIVE, CEILING):
        ref = others.get(name)
        if ref is None:
            continue
        rows.append(f"  hub / {name:<8} p50 {ratio(hub.p(50), ref.p(50))}, "
                    f"p95 {ratio(hub.p(95), ref.p(95))}, "
                    f"p99 {ratio(hub.p(99), ref.p(99))}, max {ratio(hub.worst, ref.worst)}, "
                    f"delivered {ratio(hub.delivered_ratio, ref.delivered_ratio)}, "
                    f"server CPU {ratio(hub.server_cpu, ref.server_cpu)}, "
                    f"peak RSS {ratio(hub.server_hwm, ref.server_hwm)}")
    return rows


def live_table(title: str, runs: dict[str, Run]) -> list[str]:
    out = [title, LIVE_HEADER]
    out += [live_row(r, label) for label, r in runs.items()]
    hub = runs.get(HUB)
    if hub is not None:
        out += ratio_rows(hub, runs)
    for label, r in runs.items():
        line = worst_second(r)
        if line:
            out.append(f"  {label}: {line}")
        if "runs_p99_ms" in r.extra:
            out.append(f"  {label}: p99 of each repetition (ms): {r.extra['runs_p99_ms']}")
    warn = [r.target for r in runs.values() if r.fleet_util > 0.85]
    if warn:
        out.append(f"  note: a client process was near saturation for {', '.join(warn)} "
                   f"(its latency includes client-side queueing)")
    commits = [f"{label} {c['p50']:.1f}/{c['p99']:.1f}/{c['max']:.0f}" for label, r in runs.items()
               if (c := r.extra.get("commit_ms"))]
    if commits:
        out.append(f"  writer INSERT+COMMIT ms p50/p99/max (part of every latency above): {'; '.join(commits)}")
    deflate = [f"{label} {r.extra['deflate_negotiated']:,}/{r.connected:,}" for label, r in runs.items()
               if "deflate_negotiated" in r.extra]
    if deflate:
        out.append(f"  connections that negotiated permessage-deflate: {'; '.join(deflate)}")
    late = [f"{label} {r.gen_late_ms:.0f} ms" for label, r in runs.items() if r.gen_late_ms > 50]
    if late:
        out.append(f"  note: the writer fell behind its schedule ({', '.join(late)} at worst)")
    return out


def stall_lines(run: Run) -> list[str]:
    out = []
    for s in run.extra.get("stalled", []):
        paused, filled, ended = s.get("paused_at"), s.get("filled_at"), s.get("ended_at")
        fill_s = f"{filled - paused:.1f} s" if filled and paused else "?"
        if ended and filled:
            how = TCP_ENDS.get(s["tcp_state"], f"tcp state {s['tcp_state']}")
            gone = (f"dropped {ended - filled:.1f} s after its buffers filled ({ended - paused:.1f} s after "
                    f"it stopped reading; {how})")
        else:
            gone = "never dropped while we watched"
        wire = s.get("close_code")
        line = (f"  stalled client ({run.target}): stopped reading; loopback absorbed "
                f"{mb(s.get('buffered_bytes', 0))} in {fill_s}; {gone}; close code on the wire: "
                f"{wire if wire is not None else 'none'}")
        if run.target == HUB:
            line += f"; hub log: {run.extra.get('hub_4008_closes', 0)} close(s) with 4008"
        out.append(line)
        if s.get("resumed"):
            out.append(f"    resumed with since={s['resume_since']}: {s['resume_events']:,} events in "
                       f"{s['resume_s']:.2f} s, {s['missing']} missing of the run's events, "
                       f"{s.get('resume_dups', 0)} duplicates")
        elif "resume_error" in s:
            out.append(f"    resume failed: {s['resume_error']}")
    return out


def stall_summary(run: Run) -> str:
    """One line for all repetitions of a stalled-client run."""
    reports = run.extra.get("stalled", [])
    if not reports:
        return f"stalled client ({run.target}): no report"
    fill = [s["filled_at"] - s["paused_at"] for s in reports if s.get("filled_at") and s.get("paused_at")]
    absorbed = [s.get("buffered_bytes", 0) for s in reports]
    dropped = [s["ended_at"] - s["filled_at"] for s in reports if s.get("ended_at") and s.get("filled_at")]
    how = sorted({TCP_ENDS.get(s["tcp_state"], str(s["tcp_state"])) for s in reports if s.get("ended_at")})
    text = (f"stalled client ({run.target}, {len(reports)} run(s)): the kernel absorbed "
            f"{mb(max(absorbed))} in {max(fill, default=0):.1f} s; ")
    if dropped:
        text += (f"dropped {', '.join(f'{d:.1f}' for d in dropped)} s after its buffers filled "
                 f"({'; '.join(how)}); close code on the wire "
                 f"{'/'.join(sorted({str(s.get('close_code')) for s in reports}))}")
    else:
        text += "never dropped while we watched"
    if run.target == HUB:
        text += f"; hub log: {run.extra.get('hub_4008_closes', 0)} client(s) closed 4008"
        resumed = [s for s in reports if s.get("resumed")]
        if resumed:
            text += (f"; resumed with since: {', '.join(str(s['missing']) for s in resumed)} missing, "
                     f"{sum(s.get('resume_dups', 0) for s in resumed)} duplicates")
    return text


def idle_table(runs: dict[str, Run]) -> list[str]:
    out = [f"  {'server':<10}{'connected':>14}{'connect time':>14}{'RSS before':>12}{'RSS after':>12}"
           f"{'per connection':>16}{'CPU s to connect':>18}"]
    for r in runs.values():
        per = r.extra.get("per_conn", math.nan)
        count = f"{r.connected:,}/{r.clients:,}"
        out.append(f"  {r.target:<10}{count:>14}{r.extra.get('connect_s', 0):>12.1f} s"
                   f"{mb(r.extra.get('rss_before', 0)):>12}{mb(r.extra.get('rss_after', 0)):>12}"
                   f"{per / 1000:>13.1f} kB{r.server_cpu:>18.2f}")
    hub = runs.get(HUB)
    if hub is not None:
        for name in (NAIVE, CEILING):
            ref = runs.get(name)
            if ref is not None:
                per = ratio(hub.extra.get("per_conn", math.nan), ref.extra.get("per_conn", math.nan))
                out.append(f"  hub / {name:<8} memory per connection {per}, "
                           f"CPU to connect {ratio(hub.server_cpu, ref.server_cpu)}")
    return out


def resume_lines(run: Run) -> list[str]:
    http, ref, ws = run.extra["http"], run.extra["db_ref"], run.extra["ws"]
    http_rate = http_events_per_s(http)
    ref_rate = ref["events"] / ref["seconds"]
    return [
        f"  client {run.extra['behind']:,} events behind",
        f"  HTTP replay  /api/events, pages of 1000: {http['events']:,} events in {http['seconds']:.2f} s, of "
        f"which {http['parse_s']:.2f} s our own JSON parsing: {http_rate:,.0f} events/s served "
        f"({http['events'] / http['seconds']:,.0f}/s end to end, {http['gaps']} gaps); the same queries straight "
        f"from asyncpg: {ref_rate:,.0f} events/s (hub / DB-only {ratio(http_rate, ref_rate)})",
        f"  WS resume    since={ws['replayed'].get('since')}: first event {_s(ws['first_event_s'])}, "
        f"`replayed` (count {ws['replayed'].get('count', 0):,}) {_s(ws['replayed_s'])}, first live event "
        f"{_s(ws['live_s'])} after connecting; {ws['events']:,} events received of {ws['expected']:,} "
        f"({ws['missing']} missing, {ws['dups']} duplicates); hub CPU {run.server_cpu:.2f} s, "
        f"client CPU {run.fleet_cpu:.2f} s, peak RSS {mb(run.server_hwm)}",
    ]


def http_events_per_s(http: dict[str, Any]) -> float:
    """Events/s the hub served: request to last byte, without the client's own JSON parsing."""
    return float(http["events"]) / max(1e-9, float(http["seconds"]) - float(http.get("parse_s", 0.0)))


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def write_table(res: dict[str, Any]) -> list[str]:
    rates = res["rates"]
    out = [f"  {'writers':<8}{'hub triggers':>16}{'no triggers':>16}{'bare NOTIFY':>16}"
           f"{'hub/bare':>10}{'hub/none':>10}{'bare/none':>11}{'hub w/o lock*':>15}{'previous hub':>14}"
           f"{'prev/bare':>11}   (inserts/s, median of rounds)"]
    for w in (1, 16):
        h, n, b = rates[f"hub/{w}"], rates[f"none/{w}"], rates[f"bare/{w}"]
        nolock, prev = rates.get(f"nolock/{w}"), rates.get(f"previous/{w}")
        extra = f"{nolock:>15,.0f}" if nolock else f"{'-':>15}"
        extra += f"{prev:>14,.0f}{prev / b:>11.2f}" if prev else f"{'-':>14}{'-':>11}"
        out.append(f"  {w:<8}{h:>16,.0f}{n:>16,.0f}{b:>16,.0f}{h / b:>10.2f}{h / n:>10.2f}{b / n:>11.2f}{extra}")
    if any(k.startswith("nolock/") for k in rates):
        out.append("  * diagnostic only: the hub's triggers minus the commit-order lock (not a correct "
                   "configuration); the gap to 'hub triggers' is the cost of serialising the commits")
    if any(k.startswith("previous/") for k in rates):
        out.append(f"  previous hub: the capture path of migration {PREVIOUS_CAPTURE}, before 0006 (advisory lock, "
                   "frame in the NOTIFY payload)")
    return out


# -- verdicts ------------------------------------------------------------------------------------------------
def verdicts(results: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    s1: dict[str, Run] | None = results.get("S1")
    if s1 and HUB in s1:
        hub = s1[HUB]
        full = hub.delivered == hub.expected and hub.expected > 0
        ref = s1.get(NAIVE)
        if ref is not None:
            ok = full and hub.p(99) <= ref.p(99)
            out.append(Verdict("S1", "100% delivered, p99 <= naive p99",
                               f"{100 * hub.delivered_ratio:.1f}% delivered, p99 {ms(hub.p(99))} vs naive "
                               f"{ms(ref.p(99))} ({ratio(hub.p(99), ref.p(99))})", ok,
                               "" if ok else _join(_miss(hub.p(99), ref.p(99)), hiccup(hub, ref))))
    s2: dict[str, Run] | None = results.get("S2")
    if s2 and HUB in s2:
        hub = s2[HUB]
        full = hub.delivered == hub.expected and hub.expected > 0
        ceil, naive = s2.get(CEILING), s2.get(NAIVE)
        if ceil is not None:
            ok = full and hub.p(99) <= ceil.p(99)
            out.append(Verdict("S2", "100% delivered, p99 <= ceiling p99",
                               f"{100 * hub.delivered_ratio:.1f}% delivered, p99 {ms(hub.p(99))} vs ceiling "
                               f"{ms(ceil.p(99))} ({ratio(hub.p(99), ceil.p(99))})", ok,
                               "" if ok else _join(_miss(hub.p(99), ceil.p(99)), hiccup(hub, ceil))))
        if naive is not None:
            factor = naive.p(99) / hub.p(99) if hub.p(99) else math.inf
            out.append(Verdict("S2", "p99 >= 5x better than naive",
                               f"naive p99 {ms(naive.p(99))} / hub p99 {ms(hub.p(99))} = {factor:.1f}x",
                               full and factor >= 5))
    s2f: dict[str, Run] | None = results.get("S2F")
    if s2f and HUB in s2f and f"{HUB}-filtered" in s2f:
        plain, filtered = s2f[HUB], s2f[f"{HUB}-filtered"]
        full = filtered.delivered == filtered.expected and filtered.expected > 0
        ok = full and filtered.p(99) <= 1.25 * plain.p(99)
        out.append(Verdict("S2F", "half the clients on 10 filters: 100% delivered, p99 within 1.25x of S2 unfiltered",
                           f"{100 * filtered.delivered_ratio:.1f}% delivered, p99 {ms(filtered.p(99))} vs "
                           f"{ms(plain.p(99))} unfiltered ({ratio(filtered.p(99), plain.p(99))})", ok,
                           "" if ok else _join(_miss(filtered.p(99), 1.25 * plain.p(99)), hiccup(filtered, plain))))
    s3: dict[str, Run] | None = results.get("S3")
    if s3 and HUB in s3:
        hub = s3[HUB]
        ref = s3.get("hub-4kB")
        full = hub.delivered == hub.expected and hub.expected > 0
        if ref is not None:
            limit = 1.10 * ref.p(99)
            ok = full and hub.p(99) <= limit
            out.append(Verdict("S3", "others 100% delivered, p99 within 10% of S1 with 4 kB events",
                               f"{100 * hub.delivered_ratio:.1f}% delivered, p99 {ms(hub.p(99))} vs "
                               f"{ms(ref.p(99))} without the stalled client "
                               f"({ratio(hub.p(99), ref.p(99))})", ok,
                               "" if ok else _join(_miss(hub.p(99), limit), hiccup(hub, ref))))
        stalled = hub.extra.get("stalled", [])
        if stalled:
            closes = hub.extra.get("hub_4008_closes", 0)
            took = [s["ended_at"] - s["filled_at"] if s.get("ended_at") and s.get("filled_at") else math.inf
                    for s in stalled]
            wire = sorted({str(s.get("close_code")) for s in stalled})
            ok = closes >= len(stalled) and max(took) <= 5.0
            shown = ", ".join(f"{t:.1f} s" for t in took)
            out.append(Verdict("S3", "stalled client closed with 4008 within 5 s",
                               f"the hub closed it (4008 in its log: {closes}x) {shown} after its socket "
                               f"buffers filled; the client saw close code {'/'.join(wire)}", ok,
                               "" if ok else (f"missed by {max(took) - 5:.1f} s" if max(took) < math.inf
                                              else "not closed")))
            missing = [s.get("missing", -1) if s.get("resumed") else -1 for s in stalled]
            out.append(Verdict("S3", "stalled client resumes without loss",
                               "resumed with since=<last seq seen>: "
                               + ", ".join("failed" if m < 0 else f"{m} missing" for m in missing),
                               all(m == 0 for m in missing)))
    s4: dict[str, Run] | None = results.get("S4")
    if s4 and HUB in s4:
        hub = s4[HUB]
        per = hub.extra.get("per_conn", math.inf)
        ok = hub.connected == hub.clients and per <= 50_000
        out.append(Verdict("S4", f"{hub.clients:,} connected, <= 50 kB per connection",
                           f"{hub.connected:,} connected, {per / 1000:.1f} kB per connection", ok,
                           "" if ok or per <= 50_000 else f"missed by {(per - 50_000) / 1000:.1f} kB"))
    s5: Run | None = results.get("S5")
    if s5 is not None:
        http = s5.extra["http"]
        rate = http_events_per_s(http)
        out.append(Verdict("S5", "HTTP replay >= 50,000 events/s", f"{rate:,.0f} events/s served",
                           rate >= 50_000 and http["gaps"] == 0,
                           "" if rate >= 50_000 else f"missed by {100 * (1 - rate / 50_000):.0f}%"))
        ws = s5.extra["ws"]
        live = ws["live_s"]
        ok = ws["missing"] == 0 and live is not None and live <= 3.0
        window = s5.extra.get("live_window_s", 0)
        out.append(Verdict("S5", "WS resume: all missed events, then live, in <= 3 s",
                           f"{ws['events']:,}/{ws['expected']:,} events, `replayed` after {_s(ws['replayed_s'])}, "
                           f"first live event after {_s(live)}", ok,
                           "" if ok else (f"missed by {live - 3:.2f} s" if live is not None else
                                          f"no live event after the replay within the {window} s live window")))
    s6: dict[str, Any] | None = results.get("S6")
    if s6 is not None:
        for w in (1, 16):
            r = s6["rates"][f"hub/{w}"] / s6["rates"][f"bare/{w}"]
            out.append(Verdict("S6", f"{w} writer(s): hub triggers cost no more than a bare NOTIFY trigger",
                               f"hub/bare throughput {r:.2f}", r >= 0.95,
                               "within 5% noise" if 0.95 <= r < 1 else
                               ("" if r >= 1 else f"hub triggers {100 * (1 - r):.0f}% slower")))
    return out


def hiccup(hub: Run, ref: Run) -> str:
    """A database stall during one run and not the other makes a p99 comparison meaningless: say so."""
    a, b = hub.extra.get("commit_ms", {}).get("max", 0.0), ref.extra.get("commit_ms", {}).get("max", 0.0)
    if a > 50 and a > 3 * b:
        return (f"noisy: the database stalled {a:.0f} ms during the hub's run ({b:.0f} ms during the other); "
                f"rerun, or use HUB_BENCH_REPEAT=3 for medians")
    return ""


def _miss(value: float, limit: float) -> str:
    return f"missed by {ms(value - limit)} ({100 * (value / limit - 1):.0f}%)" if limit else "missed"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# -- markdown (HUB_BENCH_MARKDOWN=path): the tables docs/benchmarks.md records -------------------------------
def markdown(results: dict[str, Any], repeat: int, quick: bool) -> str:
    info = results.get("machine", {})
    pk = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    out = [
        f"Run: `zepix-hub bench{' --quick' if quick else ''}`"
        f"{f' with HUB_BENCH_REPEAT={repeat} (medians of {repeat} interleaved runs)' if repeat > 1 else ''}, "
        f"{results.get('seconds', 0) / 60:.1f} min; code {info.get('git', '?')}.",
        "",
        f"Machine: {info.get('cpus')} CPUs, {info.get('memory_gb')} GB RAM, {info.get('platform', '')}; "
        f"PostgreSQL {info.get('postgresql')}; Python {info.get('python')}; {pk}. Load average at start "
        f"{info.get('loadavg')}, at end {results.get('loadavg_end')} (other jobs shared the machine).",
        "",
    ]
    for name in ("S1", "S2", "S2F", "S2D", "S3"):
        runs: dict[str, Run] | None = results.get(name)
        if not runs:
            continue
        out += [f"**{name}**", "",
                "| server | delivered | p50 | p95 | p99 | max | server CPU s | server peak RSS | generator CPU s "
                "| clients CPU s | close codes |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in runs.items():
            out.append(f"| {label} | {100 * r.delivered_ratio:.1f}% of {r.expected:,} | {ms(r.p(50))} | "
                       f"{ms(r.p(95))} | {ms(r.p(99))} | {ms(r.worst)} | {r.server_cpu:.2f} | {mb(r.server_hwm)} | "
                       f"{r.gen_cpu:.2f} | {r.fleet_cpu:.2f} | {codes(r)} |")
        hub = runs.get(HUB)
        if hub is not None:
            out.append("")
            out += [f"- {line.strip()}" for line in ratio_rows(hub, runs)]
            commits = [f"{label} {c['p50']:.1f}/{c['p99']:.1f}/{c['max']:.0f}" for label, r in runs.items()
                       if (c := r.extra.get("commit_ms"))]
            if commits:
                out.append(f"- writer INSERT+COMMIT ms p50/p99/max: {'; '.join(commits)}")
            for label, r in runs.items():
                if "runs_p99_ms" in r.extra:
                    out.append(f"- {label}: p99 of each repetition (ms) {r.extra['runs_p99_ms']}")
            if name == "S3":
                out += [f"- {stall_summary(runs[key])}" for key in (HUB, NAIVE, CEILING) if key in runs]
        out.append("")
    s4: dict[str, Run] | None = results.get("S4")
    if s4:
        out += ["**S4**", "", "| server | connected | connect time | RSS before | RSS after | per connection |",
                "|---|---|---|---|---|---|"]
        for r in s4.values():
            out.append(f"| {r.target} | {r.connected:,}/{r.clients:,} | {r.extra.get('connect_s', 0):.1f} s | "
                       f"{mb(r.extra.get('rss_before', 0))} | {mb(r.extra.get('rss_after', 0))} | "
                       f"{r.extra.get('per_conn', math.nan) / 1000:.1f} kB |")
        out.append("")
    s5: Run | None = results.get("S5")
    if s5 is not None:
        out += ["**S5**", ""] + [f"- {line.strip()}" for line in resume_lines(s5)] + [""]
    s6: dict[str, Any] | None = results.get("S6")
    if s6 is not None:
        out += ["**S6** (inserts/s, median of rounds)", "",
                "| writers | hub triggers | no triggers | bare NOTIFY | hub/bare | hub/none | hub without its lock* "
                f"| previous hub ({PREVIOUS_CAPTURE}) | previous/bare |",
                "|---|---|---|---|---|---|---|---|---|"]
        rates = s6["rates"]
        for w in (1, 16):
            h, n, b = rates[f"hub/{w}"], rates[f"none/{w}"], rates[f"bare/{w}"]
            nl, pv = rates.get(f"nolock/{w}"), rates.get(f"previous/{w}")
            out.append(f"| {w} | {h:,.0f} | {n:,.0f} | {b:,.0f} | {h / b:.2f} | {h / n:.2f} | "
                       f"{f'{nl:,.0f}' if nl else '-'} | {f'{pv:,.0f}' if pv else '-'} | "
                       f"{f'{pv / b:.2f}' if pv else '-'} |")
        out += ["", "\\* diagnostic only, not a correct configuration.", ""]
    found = verdicts(results)
    if found:
        out += ["**Targets**", "", "| scenario | target | measured | verdict |", "|---|---|---|---|"]
        for v in found:
            verdict = "met" if v.met else f"MISSED{f' ({v.note})' if v.note else ''}"
            out.append(f"| {v.scenario} | {v.target} | {v.measured} | {verdict} |")
        out.append("")
    return "\n".join(out)
