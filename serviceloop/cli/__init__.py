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

# `serviceloop relay` is pika's own ioloop on one thread (and its health server on another):
# patched, pika would wait through eventlet's hub (a green select per wait, no epoll) and
# the database driver through eventlet's wait callback, for no green thread to run meanwhile
if sys.argv[1:2] != ["relay"]:
    eventlet.monkey_patch()
if not _greendns_refused:
    del os.environ[_NO_GREENDNS]

from kombu import Connection  # noqa: E402
from kombu.exceptions import OperationalError as BrokerUnreachable  # noqa: E402
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService  # noqa: E402

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
from serviceloop.client import quiet_returned_publish_acks, rpc_timeout  # noqa: E402
from serviceloop.config import amqp_uri  # noqa: E402

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


REFUSED = 2  # the service answered: no (bad input, a state conflict, not found)
FAILED = 1  # the service failed while answering (its log has the correlation id)
UNREACHED = 3  # no answer: the service or the broker could not be reached


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error is one JSON object on stderr ({"error": {code, message,
    fields}}) and the exit code says whose it was (REFUSED, FAILED, UNREACHED)."""
    args = build_parser().parse_args(argv)
    quiet_returned_publish_acks()  # a service not running is said once below, not by py-amqp
    try:
        return args.run(args) or 0
    except ServiceError as error:
        return _error(error.as_dict(), REFUSED)
    except RemoteError as error:
        return _error({"code": "service_failed",
                       "message": f"the service failed: {error.exc_type}: {error.value}"},
                      FAILED)
    except UnknownService as error:
        return _error({"code": "service_unknown",
                       "message": f"{error}: the broker has no queue for it, so it has never "
                                  "run against this broker (AMQP_URI); `make run` starts the "
                                  "services"},
                      UNREACHED)
    except RpcTimeout:
        return _error({"code": "timeout",
                       "message": f"no answer within {rpc_timeout():g} s "
                                  "(SERVICELOOP_RPC_TIMEOUT): the service is stopped or busy; a "
                                  "command with --request-id can be run again with the same id, "
                                  "and does what it did at most once"}, UNREACHED)
    except (BrokerUnreachable, ConnectionError) as error:
        return _error({"code": "broker_unreachable",
                       "message": f"cannot reach RabbitMQ at {Connection(amqp_uri()).as_uri()}"
                                  f": {error}"}, UNREACHED)
    except KeyboardInterrupt:
        return 130


def _error(error: dict, exit_code: int) -> int:
    print(json.dumps({"error": {"fields": {}, **error}}, ensure_ascii=False, indent=2),
          file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
