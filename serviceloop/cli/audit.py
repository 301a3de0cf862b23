"""`serviceloop audit …`: auditors replay orders, verify the logs, keep checkpoints and list
open loops — through the services' RPC only, never their databases.

`serviceloop.audit` is imported by the commands that use it, not at the top: with SQLAlchemy
it would be about a third of every other command's start."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from nameko.exceptions import MethodNotFound

from serviceloop.cli.output import emit, table
from serviceloop.client import cluster
from serviceloop.clock import Clock, clock_from_setting, isoformat, parse_time
from serviceloop.services import IMPLEMENTED


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("audit", help="auditors: replay, verify, checkpoints, loops")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = sub.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)
        return parser

    p = add("replay", _replay, "one order's history across every log, in causal order")
    p.add_argument("order_id")
    p.add_argument("--as-of", help="ISO time: the order's state in each service then")

    p = add("verify", _verify, "check every log: chain, positions, contracts, causation")
    p.add_argument("--against", type=Path, help="a checkpoint file from `audit checkpoint`")

    p = add("checkpoint", _checkpoint, "write each log's head and Merkle root to a file")
    p.add_argument("file", type=Path)

    p = add("loops", _loops, "every order whose loop is not closed, and the missing link")
    p.add_argument("--since", help="only orders created since (ISO time)")
    p.add_argument("--partner")
    p.add_argument("--csv", action="store_true")
    p.add_argument("--now", help="ISO time to age the loops at (default: the services' clock, "
                                 "never before the newest event)")

    p = add("rebuild", _rebuild, "drop a service's read models, rebuild them from its log")
    p.add_argument("service", choices=IMPLEMENTED)


class _Progress:
    """A bar per log on stderr: events read against the log's head position (`log_head`) when
    reading began. On a terminal the bars are redrawn in place; elsewhere (a pipe, a CI log)
    a log's bar is written at each quarter, so the output stays plain lines."""

    def __init__(self, totals: dict[str, int], out: TextIO | None = None) -> None:
        self.totals, self.out = totals, out or sys.stderr
        self.counts = dict.fromkeys(totals, 0)
        self.tty = self.out.isatty()
        self.quarters = dict.fromkeys(totals, -1)
        self.written: dict[str, int] = {}
        self.drawn, self.shown_at = False, 0.0

    def __call__(self, service: str, count: int) -> None:
        self.counts[service] = count
        if not self.tty:
            quarter = self._share(service) * 4 // 1
            if quarter > self.quarters[service]:
                self.quarters[service] = quarter
                self._write_plain(service)
        elif time.monotonic() - self.shown_at > 0.1 or count >= self.totals[service]:
            self.shown_at = time.monotonic()
            self._redraw()

    def close(self) -> None:
        if self.tty:
            self._redraw()
        for service, count in self.counts.items():
            if not self.tty and self.written.get(service) != count:  # it grew while read
                self._write_plain(service)
        self.out.flush()

    def _write_plain(self, service: str) -> None:
        self.written[service] = self.counts[service]
        self.out.write(self._bar(service) + "\n")

    def _share(self, service: str) -> float:
        total = max(self.totals[service], self.counts[service])
        return self.counts[service] / total if total else 1.0

    def _bar(self, service: str) -> str:
        from serviceloop import audit
        return audit.progress_bar(service, self.counts[service], self.totals[service])

    def _redraw(self) -> None:
        up = f"\x1b[{len(self.counts)}F" if self.drawn else ""  # back to the first bar
        self.out.write(up + "".join(f"\x1b[2K{self._bar(s)}\n" for s in self.counts))
        self.out.flush()
        self.drawn = True


def _heads(rpc) -> dict[str, int]:  # noqa: ANN001
    return {service: getattr(rpc, service).log_head()["position"] for service in IMPLEMENTED}


def _all_logs(rpc, event_types: set[str] | None = None) -> dict[str, list[dict]]:  # noqa: ANN001
    from serviceloop import audit
    progress = _Progress(_heads(rpc))
    logs = audit.read_logs(rpc, IMPLEMENTED, progress, event_types=event_types)
    progress.close()
    return logs


def _replay(args: argparse.Namespace) -> None:
    from serviceloop import audit
    with cluster() as rpc:
        events = [{**e, "source": service} for service in IMPLEMENTED
                  for e in getattr(rpc, service).events_for(args.order_id)]
    ordered = audit.causal_order(events)
    if args.as_of:
        moment = parse_time(args.as_of)
        emit({"order_id": args.order_id, "as_of": isoformat(moment),
              "services": audit.state_as_of(ordered, moment)}, args.json, _render_state)
        return
    emit(ordered, args.json, lambda rows: table(rows, [
        "occurred_at", "source", "global_position", "event_type", "actor"]))


_BOOKKEEPING = ("order_id", "events", "last_event", "last_at", "position", "actor")


def _render_state(answer: dict) -> str:
    lines = [f"order {answer['order_id']} as of {answer['as_of']}"]
    for service, state in answer["services"].items():
        if state is None:
            lines.append(f"  {service:11} (nothing yet)")
            continue
        facts = ", ".join(f"{k}={v}" for k, v in state.items()
                          if k not in _BOOKKEEPING and v not in (None, [], {}))
        lines.append(f"  {service:11} {facts}")
        lines.append(f"  {'':11} after {state['events']} events, the last {state['last_event']}"
                     f" at {state['last_at']} (position {state['position']}, {state['actor']})")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from serviceloop import audit
    with cluster(timeout=120) as rpc:  # each page checked as it comes, the next one on its way
        progress = _Progress(_heads(rpc))
        verified = audit.verify_over_rpc(rpc, IMPLEMENTED, progress)
        progress.close()
    breaks = verified.breaks
    if args.against:
        breaks += audit.verify_against(verified.chains(), json.loads(args.against.read_text()))
    summary = {"events": verified.events, "breaks": breaks}
    emit(summary, args.json, lambda s: (
        "\n".join(f"{k:11} {v:>9,} events" for k, v in s["events"].items()) + "\n"
        + (table(breaks, ["service", "position", "kind", "detail"]) if breaks
           else "every log intact")))
    return 1 if breaks else 0


def _checkpoint(args: argparse.Namespace) -> None:
    from serviceloop import audit
    with cluster(timeout=120) as rpc:
        logs = _all_logs(rpc)
    point = audit.checkpoint(logs, isoformat(datetime.now(UTC)))
    args.file.write_text(json.dumps(point, indent=2) + "\n")
    emit(point, args.json, lambda p: "\n".join(
        f"{s:11} position {v['position']:>9,}  merkle {v['merkle_root'][:16]}…"
        for s, v in p["logs"].items()) + f"\nwritten to {args.file}")


def _loops(args: argparse.Namespace) -> None:
    from serviceloop import audit
    with cluster(timeout=120) as rpc:
        logs = _all_logs(rpc, audit.LOOP_EVENT_TYPES)
    now, source = audit.loops_now(logs, _services_clock().now(),
                                  parse_time(args.now) if args.now else None)
    sys.stderr.write(f"ages as of {isoformat(now)} ({source})\n")
    loops = audit.open_loops(logs, now, since=parse_time(args.since) if args.since else None,
                             partner=args.partner)
    columns = ["order_id", "order_type", "partner_id", "missing", "since", "age_hours", "sla",
               "sla_broken"]
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(loops)
        sys.stdout.write(out.getvalue())
        return
    emit(loops, args.json, lambda rows: table(rows, columns))


def _services_clock() -> Clock:
    """The clock the services run on: `SERVICELOOP_CLOCK`, else what `serviceloop up` hands
    them (system time plus the offset file `serviceloop demo` moves)."""
    setting = os.environ.get("SERVICELOOP_CLOCK")
    if not setting:
        from serviceloop.simulation import clock_offset_path

        setting = f"file:{clock_offset_path()}"
    return clock_from_setting(setting)


def _rebuild(args: argparse.Namespace) -> int:
    import eventlet

    # the rebuild is one long call; its progress is asked on a connection of its own
    with cluster(timeout=600) as rpc, cluster(timeout=30) as asking:
        service = getattr(rpc, args.service)
        progress = _Progress({args.service: service.log_head()["position"]})
        progress(args.service, 0)
        started = time.monotonic()
        rebuilding = eventlet.spawn(service.rebuild_read_models)
        while not rebuilding.dead:
            state = _rebuild_state(getattr(asking, args.service))
            if state["running"]:
                progress.totals[args.service] = state["total"]
                progress(args.service, state["events"])
            elif progress.tty:  # not started yet, or asked of a replica not rebuilding
                sys.stderr.write(f"\x1b[2K  replaying … {time.monotonic() - started:.0f} s\r")
            with eventlet.Timeout(POLL_SECONDS, False):
                rebuilding.wait()
        if progress.tty:
            sys.stderr.write("\x1b[2K")
        result = rebuilding.wait()
        progress.totals[args.service] = result["events"]
        progress(args.service, result["events"])
        progress.close()
    emit(result, args.json, lambda r: f"replayed {r['events']} events\n" + "\n".join(
        f"  {name:16} {'equal' if t['equal'] else 'DIFFERENT'}"
        for name, t in r["tables"].items()))
    return 0 if all(t["equal"] for t in result["tables"].values()) else 1


POLL_SECONDS = 0.5  # between asking a rebuilding service how far it is


def _rebuild_state(service) -> dict:  # noqa: ANN001
    """The service's `rebuild_progress`; a replica that has no such RPC is not rebuilding."""
    try:
        return service.rebuild_progress()
    except MethodNotFound:
        return {"running": False, "events": 0, "total": 0}
