"""Operators' commands: run the system, migrate, relay, demo data, parked messages, rebuild."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serviceloop.cli.output import emit, table
from serviceloop.config import PROJECT_ROOT, var_dir
from serviceloop.services import IMPLEMENTED, SERVICE_CLASSES


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("up", help="run every built service and its relay (Ctrl-C stops)")
    p.add_argument("--services", nargs="*", default=list(IMPLEMENTED))
    p.set_defaults(run=_up)

    p = commands.add_parser("migrate", help="upgrade every database; declare broker queues")
    p.add_argument("--services", nargs="*", default=list(IMPLEMENTED))
    p.add_argument("--no-broker", action="store_true", help="databases only")
    p.set_defaults(run=_migrate)

    p = commands.add_parser("relay", help="publish one service's committed events")
    p.add_argument("service", choices=IMPLEMENTED)
    p.set_defaults(run=_relay)

    p = commands.add_parser("seed", help="fill the system with realistic demo customers and "
                                         "service partners")
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--partners", type=int, default=20,
                   help="partners (credentials saved under var/partners/)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--concurrency", type=int, default=8)
    p.set_defaults(run=_seed)

    p = commands.add_parser("provider", help="the stand-in SMS/IVR provider for local runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PROVIDER_PORT", "8090")))
    p.set_defaults(run=_provider)

    p = commands.add_parser("rebuild", help="drop a service's read models, rebuild from its log")
    p.add_argument("service", choices=IMPLEMENTED)
    p.set_defaults(run=_rebuild)

    p = commands.add_parser("parked", help="messages a consumer gave up on")
    p.add_argument("service", choices=IMPLEMENTED)
    p.add_argument("--replay", type=int, metavar="ID", help="hand a parked message back")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_parked)


def _up(args: argparse.Namespace) -> int:
    """A small supervisor: restarts a process that dies; stops them all on Ctrl-C/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s up: %(message)s")
    bin_dir = Path(sys.executable).parent
    commands = {}
    for service in args.services:
        commands[service] = [str(bin_dir / "nameko"), "run", "--config",
                             str(PROJECT_ROOT / "config.yaml"), SERVICE_CLASSES[service]]
        commands[f"{service}-relay"] = [str(bin_dir / "serviceloop"), "relay", service]
    if "callback" in args.services and not os.environ.get("PROVIDER_URL"):
        # no SMS/IVR provider configured: the stand-in answers on PROVIDER_PORT
        commands["stand-in-provider"] = [str(bin_dir / "serviceloop"), "provider"]
    # eventlet announces its deprecation on import; nameko run imports it
    child_env = {**os.environ, "PYTHONWARNINGS": "ignore::Warning:nameko.cli.commands"}
    # a movable clock (system time + the file's offset; no file = no offset), so `serviceloop
    # demo` can let timeouts, retries and due dates pass
    from serviceloop.simulation import clock_offset_path

    child_env.setdefault("SERVICELOOP_CLOCK", f"file:{clock_offset_path()}")
    provider_port = os.environ.get("PROVIDER_PORT", "8090")
    callback_port = os.environ.get("CALLBACK_PORT", "8081")
    # each HTTP-serving service gets its own port
    env_of = {
        "orders": {"WEB_SERVER_PORT": os.environ.get("ORDERS_PORT", "8082")},
        "settlement": {"WEB_SERVER_PORT": os.environ.get("SETTLEMENT_PORT", "8083")},
        "dispatch": {"WEB_SERVER_PORT": os.environ.get("GATEWAY_PORT", "8080")},
        "callback": {"WEB_SERVER_PORT": callback_port,
                     "PROVIDER_URL": os.environ.get("PROVIDER_URL",
                                                    f"http://127.0.0.1:{provider_port}"),
                     "CALLBACK_PUBLIC_URL": os.environ.get(
                         "CALLBACK_PUBLIC_URL", f"http://127.0.0.1:{callback_port}")},
    }
    processes: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.info("databases under %s unless DATABASE_URL_<SERVICE> is set", var_dir())
    while not stopping:
        for name, command in commands.items():
            process = processes.get(name)
            if process is None or process.poll() is not None:
                if process is not None:
                    logging.warning("%s exited with %s: restarting", name, process.returncode)
                # a session of its own: a signal to our group (Ctrl-C, `kill -- -PGID`)
                # reaches each child once, from us below: `nameko run` given SIGTERM twice
                # hangs in its second graceful stop until it is killed
                processes[name] = subprocess.Popen(command, cwd=PROJECT_ROOT,
                                                   env={**child_env, **env_of.get(name, {})},
                                                   start_new_session=True,
                                                   preexec_fn=die_with_parent)
                logging.info("started %s (pid %d)", name, processes[name].pid)
        time.sleep(0.5)
    for process in processes.values():
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return 0


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so no
    service outlives it (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _provider(args: argparse.Namespace) -> None:
    from serviceloop.standin_provider import StandInProvider

    provider = StandInProvider(args.host, args.port,
                               token=os.environ.get("PROVIDER_TOKEN", "stand-in-token"))
    print(f"stand-in SMS/IVR provider on {provider.url} (GET /messages shows what was sent)",
          flush=True)
    try:
        provider.serve_forever()
    except KeyboardInterrupt:
        pass


def _migrate(args: argparse.Namespace) -> None:
    from serviceloop.migrate import migrate_all

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    migrate_all(tuple(args.services), broker=not args.no_broker)


def _relay(args: argparse.Namespace) -> None:
    from serviceloop.relay import run_relay

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if os.environ.get("LOG_FORMAT") == "json":  # as the services' config.yaml does
        from serviceloop.observability import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("pika").setLevel(logging.WARNING)
    run_relay(args.service)


def _seed(args: argparse.Namespace) -> None:
    from serviceloop.seeding import seed_customers, seed_partners, seed_rates

    started = time.monotonic()
    if seed_rates():
        print("demo rate card and parts price list loaded")
    if args.partners:
        created, existing = seed_partners(args.partners, seed=args.seed)
        print(f"{created} partners registered (credentials in var/partners/), "
              f"{existing} already there")
    created, existing = seed_customers(args.customers, seed=args.seed,
                                       concurrency=args.concurrency)
    print(f"{created} customers registered, {existing} already there, "
          f"in {time.monotonic() - started:.1f} s")


def _parked(args: argparse.Namespace) -> None:
    from serviceloop.client import cluster

    with cluster() as rpc:
        service = getattr(rpc, args.service)
        if args.replay is not None:
            print(service.replay_parked(args.replay))
            return
        emit(service.parked_messages(), args.json,
             lambda rows: table(rows, ["id", "consumer", "event_type", "event_id", "attempts",
                                       "parked_at", "error"]))


def _rebuild(args: argparse.Namespace) -> int:
    """Operator's rebuild on the service's own database; equal checksums or exit 1."""
    from serviceloop.config import database_url
    from serviceloop.db import make_engine
    from serviceloop.eventstore import EventStore
    from serviceloop.services import service_metadata, service_projector

    engine = make_engine(database_url(args.service), pool_size=1)
    projector = service_projector(args.service)
    store = EventStore(service_metadata(args.service).tables["events"])
    with engine.begin() as conn:
        before = projector.checksums(conn)
        count = projector.rebuild(conn, store, progress=lambda n: print(f"  {n} events…"))
        after = projector.checksums(conn)
    engine.dispose()
    print(f"replayed {count} events into {', '.join(before)}")
    for name in before:
        print(f"  {name:16} {'equal' if before[name] == after[name] else 'DIFFERENT'}")
    return 0 if before == after else 1
