"""A/B of one committed append on PostgreSQL (`EventStore.append(commit=True)`), side by side.

`chain`: the new events' positions and hashes read back by a SELECT after the COMMIT (what
every committed append did); `no chain`: `chain=False`, nothing read back; `set_config`
(a prototype, not in the store): the INSERT's RETURNING kept in a session setting before
the COMMIT and read after it, so the caller still gets the whole chain. Each append is its
own unit of work (BEGIN with the first statement, COMMIT with the append: one round trip);
the variants take turns append by append, so load on the machine falls on all alike. Run
with synchronous_commit on (the COMMIT waits for the WAL flush, as in production) and off
(the statements' own cost, without the flush's noise).

    .venv/bin/python -m bench.append_commit [appends]
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

from bench.common import fresh_database
from bench.eventstore import customer_payload
from serviceloop.db import fetch_rows, make_engine
from serviceloop.eventstore import (
    _PG_INSERT_EVENT_SQL,
    APPEND_LOCK_KEY,
    Envelope,
    EventStore,
    NewEvent,
    canonical_json,
)
from serviceloop.unit_of_work import UnitOfWork
from services.orders.projections import events

STORE = EventStore(events)


def timed_append(engine, index: int, **options) -> float:  # noqa: ANN001, ANN003
    """Seconds one committed append of a new customer took; `options` go to append."""
    customer_id = str(uuid.uuid4())
    new = [NewEvent("customer_registered", customer_payload(customer_id, index))]
    unit = UnitOfWork(engine)
    started = time.perf_counter()
    STORE.append(unit.conn, f"customer-{customer_id}", 0, new, occurred_at=datetime.now(UTC),
                 correlation_id=customer_id, causation_id="bench", actor="agent:bench",
                 commit=True, **options)
    unit.commit()
    return time.perf_counter() - started


def _append_set_config(engine, index: int) -> float:  # noqa: ANN001
    customer_id = str(uuid.uuid4())
    payload = customer_payload(customer_id, index)
    unit = UnitOfWork(engine)
    started = time.perf_counter()
    conn = unit.conn
    event_id, when = str(uuid.uuid4()), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    stream = f"customer-{customer_id}"
    statement = "; ".join([
        f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})",
        f"WITH appended AS ({_PG_INSERT_EVENT_SQL} RETURNING global_position, prev_hash, hash) "
        "SELECT set_config('serviceloop.appended', "
        "global_position || ' ' || prev_hash || ' ' || hash, false) FROM appended",
        "COMMIT", "SELECT current_setting('serviceloop.appended')"])
    (found,) = fetch_rows(conn, statement, (
        event_id, stream, stream, 0, 1, "customer_registered", 1, when, customer_id, "bench",
        "agent:bench", canonical_json(payload)))
    position, prev_hash, digest = found[0].split(" ")
    Envelope(int(position), event_id, stream, 1, "customer_registered", 1, when, customer_id,
             "bench", "agent:bench", canonical_json(payload), prev_hash, digest)
    unit.commit()
    return time.perf_counter() - started


def main(appends: int = 2000) -> None:
    for flush in ("on", "off"):
        print(f"synchronous_commit {flush}:")
        _compare(appends, flush)


def _compare(appends: int, flush: str) -> None:
    with fresh_database("postgres") as url:
        engine = make_engine(url, pool_size=2,
                             connect_args={"options": f"-c synchronous_commit={flush}"})
        try:
            variants = {"chain": lambda i: timed_append(engine, i, chain=True),
                        "no chain": lambda i: timed_append(engine, i, chain=False),
                        "set_config": lambda i: _append_set_config(engine, i)}
            for index in range(200):  # warm-up
                for measure in variants.values():
                    measure(index)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for index in range(appends):
                for name, measure in variants.items():
                    times[name].append(measure(index))
        finally:
            engine.dispose()
    report(times, "chain")


def report(times: dict[str, list[float]], base: str, notes: dict[str, str] | None = None) -> None:
    """Median and p90 of each variant's appends, and its median against `base`'s."""
    against = statistics.median(times[base])
    for name, seconds in times.items():
        middle = statistics.median(seconds)
        note = f", {notes[name]}" if notes and name in notes else ""
        print(f"{name:>10}: median {middle * 1e6:7.1f} us, p90 "
              f"{statistics.quantiles(seconds, n=10)[-1] * 1e6:7.1f} us, "
              f"{middle / against:.1%} of {base} ({len(seconds)} appends, commit=True{note})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
