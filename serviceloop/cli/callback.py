"""`serviceloop callback …`: agents verify completed work with the customer; supervisors
decide on unverified orders. Over RPC to the callback service."""

from __future__ import annotations

import argparse

from contracts.callback import DISPUTE_REASONS
from serviceloop.cli.output import add_request_id, emit, table
from serviceloop.client import cluster

TASK_COLUMNS = ["task_id", "order_id", "order_type", "status", "priority", "attempts",
                "due_at", "leased_by"]


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("callback", help="call-centre agents: verify completed work")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = sub.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)
        return parser

    p = add("next", _next, "take the next task to call (held for you for the lease time)")
    p.add_argument("--agent", required=True)

    p = add("show", _show, "a task: whom to call and what the partner reported")
    p.add_argument("task_id")

    p = add("record", _record, "record the customer's answer to a task you hold")
    p.add_argument("task_id")
    p.add_argument("--agent", required=True)
    p.add_argument("--outcome", required=True, choices=("verified", "disputed", "no_answer"))
    p.add_argument("--reason", action="append", default=[], choices=DISPUTE_REASONS,
                   dest="reasons", help="what the customer disputes (repeatable)")
    p.add_argument("--complaint", action="store_true",
                   help="the customer asks for a complaint to be opened")
    p.add_argument("--satisfaction", type=int, choices=range(1, 6))
    p.add_argument("--paid", type=int, help="what the customer says they paid, in cents")
    p.add_argument("--notes", default="")
    add_request_id(p)

    p = add("order", _order, "every verification task of an order")
    p.add_argument("order_id")

    p = add("supervise", _supervisor_view, "supervisors: overdue and unverified tasks")

    p = add("decide", _decide, "supervisors: close an unverified task or send it back")
    p.add_argument("task_id")
    p.add_argument("--supervisor", required=True)
    p.add_argument("--decision", required=True, choices=("close", "send_back"))
    p.add_argument("--note", default="")
    add_request_id(p)


def _next(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        task = rpc.callback.next_task(args.agent)
    if task is None:
        print("null" if args.json else "no task is due now")
        return
    emit(task, args.json, _render_task)


def _show(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.callback.get_task(args.task_id), args.json, _render_task)


def _record(args: argparse.Namespace) -> None:
    payload = {"task_id": args.task_id, "agent_id": args.agent, "outcome": args.outcome,
               "dispute_reasons": args.reasons, "complaint_requested": args.complaint,
               "satisfaction": args.satisfaction, "customer_paid_cents": args.paid,
               "notes": args.notes}
    with cluster() as rpc:
        emit(rpc.callback.record_outcome(payload, request_id=args.request_id), args.json,
             _render_task)


def _order(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.callback.tasks_for_order(args.order_id), args.json,
             lambda rows: table(rows, TASK_COLUMNS))


def _supervisor_view(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        view = rpc.callback.supervisor_view()
    emit(view, args.json, lambda v: "overdue:\n" + table(v["overdue"], TASK_COLUMNS)
         + "\n\nunverified:\n" + table(v["unverified"], TASK_COLUMNS))


def _decide(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.callback.supervise({"task_id": args.task_id, "supervisor_id": args.supervisor,
                                     "decision": args.decision, "note": args.note},
                                    request_id=args.request_id), args.json, _render_task)


def _render_task(task: dict) -> str:
    report = task["report"]
    lines = [f"task       {task['task_id']}  ({task['status']}, attempt {task['attempts']})",
             f"order      {task['order_id']}  {task['order_type']} {task['category']}",
             f"call       {task['phone']}",
             f"due        {task['due_at']}",
             f"work done  {report['work_done']}",
             f"fault      {report['fault_code'] or '-'}"]
    for part in report["parts"]:
        lines.append(f"part       {part['part_code']}  old {part.get('old_serial') or '-'}  "
                     f"new {part['new_serial']}  {part['fee_cents'] / 100:.2f}")
    lines.append(f"fees       labour {report['labour_fee_cents'] / 100:.2f}  travel "
                 f"{report['travel_fee_cents'] / 100:.2f}  parts "
                 f"{report['parts_fee_cents'] / 100:.2f}")
    lines.append(f"customer paid (partner says)  {report['customer_paid_cents'] / 100:.2f}")
    if task.get("outcome_detail"):
        lines.append(f"outcome    {task['outcome']} {task['outcome_detail']}")
    return "\n".join(lines)
