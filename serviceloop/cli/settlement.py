"""`serviceloop settlement …`: finance's rate cards, period runs, statements, reconciliation."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from serviceloop.cli.output import add_request_id, emit, table
from serviceloop.client import cluster

STATEMENT_COLUMNS = ["claim_id", "order_id", "completed_on", "kind", "claimed_cents",
                     "payable_cents", "cut_cents", "held_cents", "rejected_cents", "reasons"]


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("settlement", help="finance: claims, statements, reconciliation")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = sub.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)
        return parser

    rates = sub.add_parser("rates", help="rate cards and parts price lists")
    rates_sub = rates.add_subparsers(dest="rates_action", required=True, metavar="ACTION")
    p = rates_sub.add_parser("load", help="load a rate card or parts price list CSV")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    add_request_id(p)
    p.set_defaults(run=_rates_load)
    p = rates_sub.add_parser("show", help="the card and price list in force")
    p.add_argument("--on", help="YYYY-MM-DD (default today)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_rates_show)

    p = add("run", _run, "close a month for every partner and print the statements")
    p.add_argument("period", help="YYYY-MM")

    p = add("statement", _statement, "one partner's closed statement (table, CSV or JSON)")
    p.add_argument("period")
    p.add_argument("--partner", required=True)
    p.add_argument("--csv", action="store_true", help="print CSV")

    p = add("claims", _claims, "an order's claims, every line with its decision and reasons")
    p.add_argument("order_id")

    p = add("parts-returned", _parts_returned,
            "an old part back at a parts centre (or its return waived by a named person)")
    p.add_argument("serial", help="the replaced part's old serial")
    p.add_argument("--centre", help="parts centre it was returned to")
    p.add_argument("--waived-by", help="who waived the return")
    p.add_argument("--note", default="")
    add_request_id(p)

    p = add("reconcile", _reconcile, "match a partner's own statement CSV against ours")
    p.add_argument("period")
    p.add_argument("--partner", required=True)
    p.add_argument("file", type=Path, help="CSV: order_id,line_id,claimed_cents")

    p = add("scorecard", _scorecard, "partner scorecards for a month")
    p.add_argument("period")


def _rates_load(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.settlement.load_rates(args.file.read_text(encoding="utf-8"),
                                       request_id=args.request_id), args.json)


def _rates_show(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.settlement.current_rates(args.on), args.json)


def _run(args: argparse.Namespace) -> None:
    statements = []
    with cluster(timeout=600) as rpc:
        partners = rpc.settlement.partners_to_close(args.period)
        for n, partner_id in enumerate(partners, start=1):  # one partner per call: progress
            statements.extend(rpc.settlement.run(args.period, partner_id))
            print(f"\r  closing {args.period}: {n}/{len(partners)} partners", end="",
                  file=sys.stderr, flush=True)
    if partners:
        print(file=sys.stderr)
    if args.json:
        emit(statements, True)
        return
    for statement in statements:
        print(_render(statement))
        print()
    if not statements:
        print(f"no claims up to the end of {args.period}")


def _statement(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        statement = rpc.settlement.statement(args.period, args.partner)
    if args.csv:
        sys.stdout.write(statement_csv(statement))
        return
    emit(statement, args.json, _render)


def statement_csv(statement: dict) -> str:
    """One row per claim or adjustment; `reasons` names each line cut, held or rejected."""
    out = io.StringIO()
    writer = csv.DictWriter(out, STATEMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in statement["lines"]:
        writer.writerow({**{k: line[k] for k in STATEMENT_COLUMNS},
                         "reasons": line_reasons(line)})
    return out.getvalue()


def line_reasons(line: dict) -> str:
    """'labour cut: labour_above_rate_card; part-1 held: old_part_not_returned' (a statement
    closed before lines were named says its merged reasons)."""
    if "decisions" not in line:
        return " ".join(line["reasons"])
    return "; ".join(f"{d['line_id']} {d['decision']}: {' '.join(d['reasons'])}"
                     for d in line["decisions"])


def _claims(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        claims = rpc.settlement.claims_for_order(args.order_id)
    emit(claims, args.json, lambda rows: "\n\n".join(
        f"claim {c['claim_id']}  partner {c['partner_id']}  callback {c['callback']}  "
        f"payable {_money(c['payable_cents'])}\n"
        + table(c["lines"], ["line_id", "part_code", "claimed_cents", "decision",
                             "approved_cents", "manufacturer_cents", "reasons"])
        for c in rows) or "(no claims)")


def _parts_returned(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.settlement.record_part_return({
            "serial": args.serial, "parts_centre": args.centre, "waived_by": args.waived_by,
            "note": args.note}, request_id=args.request_id), args.json)


def _reconcile(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        report = rpc.settlement.reconcile(args.period, args.partner,
                                          args.file.read_text(encoding="utf-8"))
    emit(report, args.json, lambda r: table(r["differences"], [
        "order_id", "line_id", "kind", "claimed_cents", "our_cents", "difference_cents"])
        + "\n\n" + "\n".join(
            f"{kind}: {t['count']}  difference {_money(t['difference_cents'])}"
            for kind, t in r.get("totals", {}).items() if t["count"])
        + f"\ntheirs {_money(r['their_claimed_cents'])}  ours "
          f"{_money(r['our_claimed_cents'])}  difference {_money(r['difference_cents'])}")


def _scorecard(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.settlement.scorecard(args.period), args.json, lambda rows: table(rows, [
            "partner_id", "completed", "first_visit_fix_rate", "repeat_repairs",
            "dispute_rate", "mean_satisfaction", "sla_breaches", "rejected_value_share"]))


def _render(statement: dict) -> str:
    head = (f"{statement['period']}  partner {statement['partner_id']}  payable "
            f"{_money(statement['payable_cents'])} (adjustments "
            f"{_money(statement['adjustments_cents'])})  cut {_money(statement['cut_cents'])}"
            f"  held {_money(statement['held_cents'])}  rejected "
            f"{_money(statement['rejected_cents'])}")
    rows = [{**line, "reasons": line_reasons(line)} for line in statement["lines"]]
    return head + "\n" + table(rows, STATEMENT_COLUMNS[1:])


def _money(cents: int) -> str:
    return f"{cents / 100:,.2f}"


