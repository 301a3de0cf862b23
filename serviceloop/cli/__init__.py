"""`serviceloop`: one console script with a command group per kind of user."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

# A command is one client: its few name lookups may block. eventlet's own resolver (dnspython)
# costs about a quarter of a second to import on every command; the services `up` starts
# keep it (the variable is not passed on unless it was set already).
_NO_GREENDNS = "EVENTLET_NO_GREENDNS"
_greendns_refused = _NO_GREENDNS in os.environ
os.environ.setdefault(_NO_GREENDNS, "yes")

import eventlet  # noqa: E402

eventlet.monkey_patch()
if not _greendns_refused:
    del os.environ[_NO_GREENDNS]

from contracts.errors import ServiceError  # noqa: E402
from serviceloop.cli import (  # noqa: E402
    audit,
    callback,
    demo,
    operations,
    orders,
    partner,
    settlement,
)

GROUPS = (orders, partner, callback, settlement, audit, operations, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serviceloop",
        description="After-sales service orders from the first call to the last settled cent.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ServiceError as error:
        print(json.dumps({"error": error.as_dict()}, ensure_ascii=False, indent=2),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
