"""`serviceloop demo`: what the system is for, in one command (against `make run`)."""

from __future__ import annotations

import argparse

from serviceloop.cli.output import emit


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo", help="drive a few hundred orders round the whole loop against a running "
                     "system (`make run`), then print the audit")
    p.add_argument("--orders", type=int, default=300, help="orders to drive (default 300)")
    p.add_argument("--seed", type=int, default=2026, help="the random generator's seed")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from serviceloop.demo import Demo, render

    if args.orders < 10:
        raise SystemExit("--orders: at least 10, so every kind of loop gets an order")
    report = Demo(args.orders, args.seed).run()
    emit(report, args.json, render)
    return 0
