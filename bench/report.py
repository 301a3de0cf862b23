"""Results to `bench/results/latest.json` and a Markdown table in `latest.md` (or another name)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKEND_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
SETTLEMENT_TARGET_ORDERS = 100_000
SETTLEMENT_SECONDS, SETTLEMENT_MIB = 60, 1024
AUDIT_EVENTS_PER_S, LOOPS_ORDERS, LOOPS_SECONDS = 100_000, 250_000, 60
LOOP_TARGET_PER_S = 50
GATEWAY_OPERATIONS = {"get_order": ("GET /orders/<id>", "GET"),
                      "complete": ("POST /orders/<id>/complete", "POST (echo)")}


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": _cpu_model()}
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def with_target(result: dict) -> dict:
    """Attach the target (if any) the result is held to, and whether it was met."""
    target, met = None, None
    if result["bench"] == "create_order" and result["backend"] == "postgres" \
            and result["callers"] == 16:
        target = "≥ 60% of no-op, p99 < 100 ms"
        met = result["ratio"] >= 0.6 and result["create_order"]["p99_ms"] < 100
    elif result["bench"] == "replay":
        target = "≥ 50% of raw SELECT"
        met = result["ratio"] >= 0.5
    elif result["bench"] == "gateway":
        target = "≥ 50% of bare @http"
        met = result["ratio"] >= 0.5
    elif result["bench"] == "settlement" and result["orders"] >= SETTLEMENT_TARGET_ORDERS:
        target = f"< {SETTLEMENT_SECONDS} s and < 1 GiB peak"
        met = result["value"] < SETTLEMENT_SECONDS and result["peak_rss_mib"] < SETTLEMENT_MIB
    elif result["bench"] == "audit_verify":
        target = f"≥ {AUDIT_EVENTS_PER_S:,} events/s"
        # what `serviceloop audit verify` does end to end, reading included
        met = result.get("stream_events_per_s", result["value"]) >= AUDIT_EVENTS_PER_S
    elif result["bench"] == "loop":
        target = (f"≥ {LOOP_TARGET_PER_S} loops/s sustained, no growth in memory or queue "
                  "depth")
        met = result["value"] >= LOOP_TARGET_PER_S and not loop_growth(result)
    elif result["bench"] == "audit_loops":
        target = f"{LOOPS_ORDERS:,} orders in < {LOOPS_SECONDS} s"
        met = result["seconds_per_250k"] < LOOPS_SECONDS
    return {**result, "target": target, "met": met}


def loop_growth(result: dict) -> list[str]:
    """What grew from the first half of the window to the second: memory by over 10 %,
    messages queued by over half (and 5). With N orders kept in flight a queue cannot grow
    without bound; one that grows is where the orders pile up."""
    grew = []
    if result["rss_late_mib"] > 1.1 * result["rss_early_mib"]:
        grew.append(f"memory grew, {result['rss_early_mib']:.0f} -> "
                    f"{result['rss_late_mib']:.0f} MiB")
    if result["queued_late"] > 1.5 * result["queued_early"] + 5:
        deepest = result["samples"][-1]["deepest"]
        grew.append(f"messages queued grew, {result['queued_early']:.0f} -> "
                    f"{result['queued_late']:.0f} (deepest at the end: {deepest[0]}, "
                    f"{deepest[1]})")
    return grew


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _row(r: dict) -> list[str]:
    backend = BACKEND_NAMES.get(r["backend"], r["backend"])
    if r["bench"] == "create_order":
        ours, noop = r["create_order"], r["noop"]
        name = f"create_order RPC, {_callers(r['callers'])}"
        measured = (f"{_num(ours['per_s'])} orders/s, p50 {ours['p50_ms']:.1f} ms, "
                    f"p99 {ours['p99_ms']:.1f} ms")
        baseline = (f"no-op RPC {_num(noop['per_s'])} calls/s, p50 {noop['p50_ms']:.1f} ms, "
                    f"p99 {noop['p99_ms']:.1f} ms")
    elif r["bench"] == "gateway":
        ours, bare = r["signed"], r["bare"]
        name = (f"Gateway signed {GATEWAY_OPERATIONS[r['operation']][0]}, "
                f"{r['partners']} partners")
        measured = (f"{_num(ours['per_s'])} requests/s, p50 {ours['p50_ms']:.1f} ms, "
                    f"p99 {ours['p99_ms']:.1f} ms")
        baseline = (f"bare @http {GATEWAY_OPERATIONS[r['operation']][1]} "
                    f"{_num(bare['per_s'])} requests/s, p50 {bare['p50_ms']:.1f} ms, "
                    f"p99 {bare['p99_ms']:.1f} ms")
    elif r["bench"] == "settlement":
        name = f"settlement.run, {r['orders']:,} orders, {r['partners']} partners"
        measured = (f"{r['value']:.2f} s ({r['s_per_1k']:.3f} s per 1k orders), peak RSS "
                    f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_mib'] - r['rss_before_mib']:.0f}"
                    " during run)")
        baseline = f"smallest size {r['baseline']:.3f} s per 1k orders"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        return [name, backend, measured, baseline, f"{r['ratio']:.2f}×", r["target"] or "—",
                met]
    elif r["bench"] == "audit_verify":
        name = f"audit verify, {r['events']:,} events in four logs"
        measured = (f"{_num(r['value'])} events/s checked ({r['verify_seconds']:.1f} s); with "
                    f"reading them over RPC {_num(r['verify_with_read_events_per_s'])} events/s "
                    f"({r['read_seconds'] + r['verify_seconds']:.1f} s)")
        if "stream_events_per_s" in r:
            measured = (f"`serviceloop audit verify` end to end (each page checked as it "
                        f"arrives): {_num(r['stream_events_per_s'])} events/s "
                        f"({r['stream_seconds']:.1f} s; CPU "
                        f"{r['stream_auditor_cpu_seconds']:.1f} s auditor + "
                        f"{r['stream_services_cpu_seconds']:.1f} s services); in the "
                        f"same run, reading every log then checking: {measured}")
        baseline = f"SHA-256 of the same documents alone {_num(r['baseline'])} events/s"
    elif r["bench"] == "audit_loops":
        name = f"audit loops, {r['orders']:,} orders"
        measured = (f"{r['loops_with_read_seconds']:.1f} s with reading the logs over RPC "
                    f"({r['loops_seconds']:.2f} s finding the loops)")
        if r["orders"] < 250_000:  # a smaller run: what it would take at the target's size
            measured += (f"; scaled to 1,000,000 events holding 250,000 orders ≈ "
                         f"{r['seconds_per_250k']:.0f} s")
        baseline = f"reading the whole logs as dicts {r['read_seconds']:.1f} s"
        if "loops_read_seconds" in r:
            measured += (" (reading only the kinds of event it looks at: "
                         f"{r['loops_read_seconds']:.1f} s)")
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        return [name, backend, measured, baseline,
                f"{r['loops_with_read_seconds'] / r['read_seconds']:.2f}×", r["target"], met]
    elif r["bench"] == "loop":
        name = (f"whole loop (intake RPC → dispatch → gateway → callback RPC → settlement), "
                f"{r['in_flight']} orders in flight, {r['window_s']:.0f} s")
        measured = f"{r['value']:.1f} loops/s verified, create_order → verified " + (
            f"p50 {r['p50_ms'] / 1000:.1f} s, p99 {r['p99_ms'] / 1000:.1f} s"
            if r["p50_ms"] is not None else "none in the window (the loop stalled)")
        raw = r["raw"]
        baseline = (f"one no-op RPC {_num(raw['rpc']['per_s'])}/s "
                    f"({raw['rpc']['process_cpu_ms_per_call']:.2f} ms CPU); one event delivery "
                    f"{_num(raw['event_delivery']['per_s'])}/s "
                    f"({raw['event_delivery']['process_cpu_ms_per_event']:.2f} ms); one append "
                    f"{_num(raw['append']['per_s'])}/s "
                    f"({raw['append']['process_cpu_ms_per_append']:.2f} ms)")
        met = "yes" if r["met"] else "**no**"
        return [name, backend, measured, baseline, f"{r['ratio']:.0%} of target",
                r["target"], met]
    elif r["bench"] == "append":
        name = f"EventStore.append, {r['batch']} event{'s' if r['batch'] > 1 else ''}/txn"
        measured = f"{_num(r['value'])} events/s"
        baseline = f"plain INSERT {_num(r['baseline'])} rows/s"
    else:
        name = f"EventStore.replay, {r['events']:,} events"
        measured = f"{_num(r['value'])} rows/s"
        baseline = f"raw SELECT+fetchmany {_num(r['baseline'])} rows/s"
    met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
    return [name, backend, measured, baseline, f"{r['ratio']:.0%}", r["target"] or "—", met]


def _rpc_rounds(rounds: int) -> str:
    if rounds == 1:
        return "one run each for RPC, no-op and create_order interleaved"
    return (f"medians of {rounds} interleaved rounds for RPC, each figure separately; "
            "the RPC ratio is the median of the per-round ratios")


def _callers(count: int) -> str:
    return f"{count} caller{'s' if count != 1 else ''}"


def _cpu(run: dict, unit: str = "call") -> str:
    return (f"{run[f'process_cpu_ms_per_{unit}']:.2f} ms "
            f"({run['process_cpu_busy']:.0%} busy)")


def _serviceloop_noop(r: dict) -> str:
    """The no-op on serviceloop's own RPC entrypoint (results from before it was measured
    have none)."""
    lean = r.get("noop_serviceloop")
    if lean is None:
        return ""
    return (f"; the no-op on serviceloop's RPC entrypoint (no reply confirm) "
            f"{_num(lean['per_s'])} calls/s, {_cpu(lean)}, create_order "
            f"{r['ratio_to_serviceloop_noop']:.0%} of it")


def _gateway_rounds(rounds: int) -> str:
    if rounds == 1:
        return "one round of bare GET, signed GET, bare POST, signed complete"
    return (f"medians of {rounds} interleaved rounds (bare GET, signed GET, bare POST, signed "
            "complete), each figure separately; the ratio is the median of per-round ratios")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# serviceloop benchmarks, {report['date']}",
        "",
        f"{m['nproc']} CPU ({m['cpu']}), Python {m['python']}, {m['platform']}; "
        f"load average at start {m.get('loadavg_at_start')}; run took {report['seconds']:.0f} s.",
        "Ratios are measured vs. the baseline in the same run (medians of "
        f"{report['repetitions']} alternating repetitions for the event-store rows; "
        + _rpc_rounds(report["settings"].get("rpc_rounds", 1)) + ").",
        "",
        "| Benchmark | Backend | Measured | Baseline | Ratio | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in report["results"]]
    rpc = [r for r in report["results"] if r["bench"] == "create_order"]
    if rpc:
        lines += ["", "RPC rows: services, broker clients and callers share one Python process; "
                  "its CPU time per call (and how busy it was):", ""]
        lines += [f"- {BACKEND_NAMES.get(r['backend'], r['backend'])}, {_callers(r['callers'])}: "
                  f"create_order {_cpu(r['create_order'])}, no-op {_cpu(r['noop'])}"
                  + _serviceloop_noop(r) for r in rpc]
    gateway = [r for r in report["results"] if r["bench"] == "gateway"]
    if gateway:
        plan = report["settings"]
        lines += ["", f"Gateway rows: {plan['gateway_partners']} partners at once, each on its "
                  f"own keep-alive HTTP session, {plan['gateway_requests']} requests each per "
                  f"round; {_gateway_rounds(plan['gateway_rounds'])}. Requests are signed "
                  "before the timed part; every GET carries a fresh nonce, every complete "
                  "finishes its own on_site order. Gateway, bare service and clients share "
                  "one Python process; its CPU time per request (and how busy it was):", ""]
        lines += [f"- {BACKEND_NAMES.get(r['backend'], r['backend'])}, "
                  f"{GATEWAY_OPERATIONS[r['operation']][0]}: signed "
                  f"{_cpu(r['signed'], 'request')}, bare {_cpu(r['bare'], 'request')}"
                  for r in gateway]
    settlement = [r for r in report["results"] if r["bench"] == "settlement"]
    if settlement:
        lines += ["", "Settlement rows: one fresh database per size; the period's orders go in "
                  "through the settlement service's own consumers (`deliver` to its "
                  "order_created, order_completed, order_verified handlers, no broker), half "
                  "of them with a replaced part. `run` is timed once, in a subprocess of its "
                  "own: peak RSS is that process's `ru_maxrss` (imports included; in brackets "
                  "what it grew by during `run`). Ratio = seconds per 1k orders against the "
                  "smallest size (1.00× is linear). Each run is checked: statements pay the "
                  "sum of `claims.payable_cents`, one line per claim, a second run returns the "
                  "same statements. Generating the data (not measured):", ""]
        lines += [f"- {BACKEND_NAMES.get(r['backend'], r['backend'])}, {r['orders']:,} orders: "
                  f"{r['generation_seconds']:.0f} s, "
                  f"{r['deliveries'] / r['generation_seconds']:.0f} deliveries/s"
                  for r in settlement]
    audit_rows = [r for r in report["results"] if r["bench"] == "audit_verify"]
    if audit_rows:
        lines += ["", "Audit rows: the four logs grown from one order's real life captured from "
                  "the running services (bench/data/audit_template.json), appended copy by copy "
                  "in causal order through `EventStore.append` (contracts, hash chain, "
                  "triggers); the services then run as `nameko run` processes and the auditor "
                  "reads every log through `events_since` as the CLI does. Checked: no break "
                  "found, and exactly the generated open orders listed as open. Generating "
                  "(not measured): " + ", ".join(
                      f"{r['generate_seconds']:.0f} s ({_num(r['generate_events_per_s'])} "
                      "events/s)" for r in audit_rows) + "."]
    lines += _loop_notes([r for r in report["results"] if r["bench"] == "loop"])
    lines += ["", "Baselines: plain INSERT = same driver and connection settings, a table with the "
              "log's columns and primary key only, no validation/hash/lock; raw SELECT = "
              "`SELECT <log columns> FROM events ORDER BY global_position` on the driver's own "
              "cursor (psycopg2: client-side), `fetchmany(5000)`, no JSON decoding."]
    if report.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def _loop_notes(rows: list[dict]) -> list[str]:
    """Where the whole loop's time and CPU go (bench/loop.py)."""
    lines = []
    for r in rows:
        lines += ["", f"Whole loop: {r['loops']} loops verified in the {r['window_s']:.0f} s "
                  f"window after {r['warmup_s']:.0f} s of warm-up ({r['orders_opened']} orders "
                  f"opened in all; after the load stopped {r['drain']['not_verified']} were not "
                  f"verified within {r['drain']['seconds']:.0f} s; of "
                  f"{r['settlement']['claims_checked']} verified orders' claims, settlement had "
                  f"not decided {r['settlement']['undecided']} as verified "
                  f"{r['settlement']['check_seconds']:.0f} s later, and `run` took "
                  f"{r['settlement']['run_seconds']:.1f} s). CPU per loop by process "
                  f"({r['cpu_cores_total']:.2f} cores busy in all; the busiest of ours: "
                  f"{r['busiest_process']}):", ""]
        lines += [f"- {role}: {c['ms_per_loop']:.1f} ms per loop ({c['cores']:.2f} cores)"
                  for role, c in sorted(r["cpu"].items(), key=lambda kv: -kv[1]["cores"])]
        lines += ["", "Where an order's time goes (median of each stage):", ""]
        lines += [f"- {stage}: {s['p50_ms'] / 1000:.2f} s" for stage, s in r["stages"].items()
                  if s["p50_ms"] is not None]
        grew = loop_growth(r)
        if r.get("products_ran_out"):
            lines += ["", "**The load generator ran out of products to open orders for:** "
                      "the rate above is a floor."]
        parked = {service: len(messages)
                  for service, messages in r["settlement"]["parked"].items() if messages}
        if parked or r["settlement"]["undecided"]:
            lines += ["", "**Not all claims came through:** messages parked by consumers "
                      f"after their retries: {parked or 'none'}; first of them: "
                      + "; ".join(f"{m['consumer']} {m['event_type']}: {m['error']}"
                                  for messages in r["settlement"]["parked"].values()
                                  for m in messages[:2])]
        lines += ["", f"Partners looked for new assignments {r['partner_polls_per_loop']:.1f} "
                  "times per order (a signed GET each, idle partners every 0.2–1 s).",
                  "", f"Memory (every process but PostgreSQL's, whose backends share their "
                  f"buffers) {r['rss_early_mib']:.0f} MiB in the first half "
                  f"of the window, {r['rss_late_mib']:.0f} MiB in the second; messages queued "
                  f"{r['queued_early']:.0f} then {r['queued_late']:.0f} (medians of samples): "
                  + ("; ".join(grew) if grew else "no growth") + "."]
    return lines


def write(results: list[dict], *, machine: dict, seconds: float, repetitions: int,
          errors: list[str], settings: dict, name: str = "latest") -> str:
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine,
              "seconds": seconds, "repetitions": repetitions, "settings": settings,
              "results": [with_target(r) for r in results], "errors": errors}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    table = markdown(report)
    (RESULTS_DIR / f"{name}.md").write_text(table)
    return table
