"""A relay under a steady trickle of appends on PostgreSQL: its CPU per event and how far
behind it runs, variants side by side (one database, vhost and writer each, all at once).

Each writer appends single-event transactions at `rate` per second for `seconds`; each relay
is a `serviceloop relay orders` process; a durable queue takes what it publishes. Variants:
`RELAY_COALESCE_MS` (`--coalesce`, 0 and 10 by default: the least time between a relay's
reads, so that more appends share a window). `--before DIR`: also a relay from another
checkout (e.g. `git archive` of an older commit), same measurement.

    .venv/bin/python -m bench.relay_busy [--rate 300] [--seconds 20] [--coalesce 0,10]
        [--before DIR] [--before-coalesce 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import pika
from sqlalchemy import text

from bench.common import fresh_database, fresh_vhost
from bench.eventstore import customer_payload
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from services.orders.projections import events

TICK = os.sysconf("SC_CLK_TCK")
STORE = EventStore(events)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def relay_position(engine) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(position), 0) FROM relay_positions")
                            ).scalar()


def write(engine, rate: float, seconds: float, written: list[int]) -> None:  # noqa: ANN001
    """`rate` single-event appends a second, paced by the clock (load, not synchronisation)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + 1
        while written[0] < due:
            customer_id = str(uuid.uuid4())
            with engine.begin() as conn:
                STORE.append(conn, f"customer-{customer_id}", 0, [NewEvent(
                    "customer_registered", customer_payload(customer_id, written[0]))],
                    occurred_at=datetime.now(UTC), correlation_id=customer_id,
                    causation_id="bench", actor="agent:bench")
            written[0] += 1
        time.sleep(max(0.0, (written[0] / rate) - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--before", help="a checkout whose relay runs as a further variant")
    parser.add_argument("--coalesce", default="0,10", help="RELAY_COALESCE_MS of each variant")
    parser.add_argument("--before-coalesce", default="10", help="RELAY_COALESCE_MS of --before")
    args = parser.parse_args()
    variants = {f"coalesce {ms} ms": (ms, None) for ms in args.coalesce.split(",")}
    if args.before:
        variants["before"] = (args.before_coalesce, args.before)
    with ExitStack() as stack:
        runs = {}
        for name, (coalesce, root) in variants.items():
            url = stack.enter_context(fresh_database("postgres"))
            amqp = stack.enter_context(fresh_vhost())
            broker = pika.BlockingConnection(pika.URLParameters(amqp))
            stack.callback(broker.close)
            channel = broker.channel()
            channel.exchange_declare("orders.events", exchange_type="topic", durable=True)
            channel.queue_declare("tap", durable=True)
            channel.queue_bind("tap", "orders.events", routing_key="#")
            engine = make_engine(url, pool_size=2)
            stack.callback(engine.dispose)
            env = {**os.environ, "AMQP_URI": amqp, "DATABASE_URL_ORDERS": url,
                   "RELAY_COALESCE_MS": coalesce, "LOG_LEVEL": "WARNING"}
            if root:
                env["PYTHONPATH"] = root
            relay = subprocess.Popen([sys.executable, "-m", "serviceloop.cli", "relay",
                                      "orders"], cwd=root or os.getcwd(), env=env)
            stack.callback(relay.wait, 20)
            stack.callback(relay.terminate)
            runs[name] = {"engine": engine, "relay": relay, "written": [0]}
        time.sleep(5)  # the relays' start-up (imports, connections) is not what is measured
        writers = [threading.Thread(target=write, args=(run["engine"], args.rate,
                                                        args.seconds, run["written"]))
                   for run in runs.values()]
        for run in runs.values():
            run["cpu"] = cpu_seconds(run["relay"].pid)
        for writer in writers:
            writer.start()
        lags: dict[str, list[int]] = {name: [] for name in runs}
        while any(writer.is_alive() for writer in writers):
            time.sleep(0.5)
            for name, run in runs.items():
                lags[name].append(run["written"][0] - relay_position(run["engine"]))
        for name, run in runs.items():
            used = cpu_seconds(run["relay"].pid) - run["cpu"]
            count = run["written"][0]
            ordered = sorted(lags[name])
            print(f"{name:>15}: {count} events in {args.seconds:.0f} s; relay "
                  f"{used * 1000 / count:.3f} CPU-ms per event ({used:.2f} s); behind by "
                  f"median {ordered[len(ordered) // 2]}, max {ordered[-1]} events "
                  f"(sampled every 0.5 s)")


if __name__ == "__main__":
    main()
