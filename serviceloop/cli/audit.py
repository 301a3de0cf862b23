"""`serviceloop audit …`: auditors replay orders, verify the logs, keep checkpoints and list
open loops — through the services' RPC only, never their databases."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from serviceloop import audit
from serviceloop.cli.output import emit, table
from serviceloop.client import cluster
from serviceloop.clock import isoformat, parse_time
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

    p = add("rebuild", _rebuild, "drop a service's read models, rebuild them from its log")
    p.add_argument("service", choices=IMPLEMENTED)


class _Progress:
    """One line on stderr: how far each log has been read."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, service: str, count: int) -> None:
        self.counts[service] = count
        sys.stderr.write("\r  reading " + ", ".join(
            f"{s} {n:,}" for s, n in self.counts.items()) + " events")
        sys.stderr.flush()


def _all_logs(rpc) -> dict[str, list[dict]]:  # noqa: ANN001
    logs = audit.read_logs(rpc, IMPLEMENTED, _Progress())
    sys.stderr.write("\n")
    return logs


def _replay(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        events = [{**e, "source": service} for service in IMPLEMENTED
                  for e in getattr(rpc, service).events_for(args.order_id)]
    ordered = audit.causal_order(events)
    if args.as_of:
        state = audit.state_as_of(ordered, parse_time(args.as_of))
        emit(state, args.json, lambda s: table(
            [{"service": k, **(v or {"event_type": "(nothing yet)"})} for k, v in s.items()],
            ["service", "event_type", "occurred_at", "actor"]))
        return
    emit(ordered, args.json, lambda rows: table(rows, [
        "occurred_at", "source", "global_position", "event_type", "actor"]))


def _verify(args: argparse.Namespace) -> int:
    with cluster(timeout=120) as rpc:
        logs = _all_logs(rpc)
    breaks = audit.verify(logs)
    if args.against:
        breaks += audit.verify_against(logs, json.loads(args.against.read_text()))
    summary = {"events": {s: len(log) for s, log in logs.items()}, "breaks": breaks}
    emit(summary, args.json, lambda s: (
        "\n".join(f"{k:11} {v:>9,} events" for k, v in s["events"].items()) + "\n"
        + (table(breaks, ["service", "position", "kind", "detail"]) if breaks
           else "every log intact")))
    return 1 if breaks else 0


def _checkpoint(args: argparse.Namespace) -> None:
    with cluster(timeout=120) as rpc:
        logs = _all_logs(rpc)
    point = audit.checkpoint(logs, isoformat(datetime.now(UTC)))
    args.file.write_text(json.dumps(point, indent=2) + "\n")
    emit(point, args.json, lambda p: "\n".join(
        f"{s:11} position {v['position']:>9,}  merkle {v['merkle_root'][:16]}…"
        for s, v in p["logs"].items()) + f"\nwritten to {args.file}")


def _loops(args: argparse.Namespace) -> None:
    with cluster(timeout=120) as rpc:
        logs = _all_logs(rpc)
        now = datetime.now(UTC)
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


def _rebuild(args: argparse.Namespace) -> int:
    with cluster(timeout=600) as rpc:
        result = getattr(rpc, args.service).rebuild_read_models()
    emit(result, args.json, lambda r: f"replayed {r['events']} events\n" + "\n".join(
        f"  {name:16} {'equal' if t['equal'] else 'DIFFERENT'}"
        for name, t in r["tables"].items()))
    return 0 if all(t["equal"] for t in result["tables"].values()) else 1
