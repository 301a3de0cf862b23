"""Event-store benchmarks: append rate and replay rate, each beside a raw-driver baseline.

Append: `EventStore.append` of `customer_registered` events, one transaction per call,
against a loop of plain INSERTs of equivalent rows into a table with the same columns
(primary key only; no hash, no validation, no lock), through the same driver and
connection settings. Replay: `EventStore.replay` against a raw `SELECT ... ORDER BY
global_position` fetched with `fetchmany` on the driver's own cursor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, Engine, MetaData, Table

from bench.common import fresh_database, rate, side_by_side, timed
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.unit_of_work import read_only
from services.orders.projections import events

COLUMNS = [c.name for c in events.columns]
_FAKE_HASH = "f" * 64


def customer_payload(customer_id: str, index: int) -> dict:
    """A valid `customer_registered` payload (contracts/orders.py CustomerRegistered)."""
    return {
        "customer_id": customer_id, "name": f"王小明{index}", "phone": f"138{index:08d}",
        "address": {"province": "广东省", "city": "广州市", "district": "天河区",
                    "street": f"中山大道{index}号", "lat": 23.13, "lon": 113.33},
    }


def _append_batch(store: EventStore, conn: Connection, size: int, index: int) -> None:
    customer_id = str(uuid.uuid4())
    new = [NewEvent("customer_registered", customer_payload(customer_id, index + i))
           for i in range(size)]
    store.append(conn, f"customer-{customer_id}", 0, new, occurred_at=datetime.now(UTC),
                 correlation_id=customer_id, causation_id=f"cmd-{uuid.uuid4()}",
                 actor="agent:bench")


# -- append ----------------------------------------------------------------------------------


def _plain_table(engine: Engine) -> str:
    metadata = MetaData()
    Table("plain_events", metadata, *[
        Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key,
               autoincrement=False) for c in events.columns])
    metadata.create_all(engine)
    return "plain_events"


class AppendBench:
    """One database; `store_rate` and `raw_rate` each append `count` more events."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, pool_size=2)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.store = EventStore(events)
        self.conn = self.engine.connect()
        self.raw = self.engine.raw_connection()
        table = _plain_table(self.engine)
        marks = ", ".join(["?" if self.sqlite else "%s"] * len(COLUMNS))
        self.insert_sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"
        self.position = 0

    def close(self) -> None:
        self.conn.close()
        self.raw.close()
        self.engine.dispose()

    def store_rate(self, count: int, batch: int) -> float:
        def run() -> None:
            for index in range(0, count, batch):
                with self.conn.begin():
                    _append_batch(self.store, self.conn, batch, index)

        return rate(count, timed(run))

    def _raw_rows(self, size: int, index: int) -> list[tuple]:
        customer_id = str(uuid.uuid4())
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows = []
        for offset in range(size):
            self.position += 1
            payload = json.dumps(customer_payload(customer_id, index + offset), sort_keys=True,
                                 separators=(",", ":"), ensure_ascii=False)
            rows.append((self.position, str(uuid.uuid4()), f"customer-{customer_id}",
                         offset + 1, "customer_registered", 1, when, customer_id,
                         f"cmd-{customer_id}", "agent:bench", payload, _FAKE_HASH, _FAKE_HASH))
        return rows

    def raw_rate(self, count: int, batch: int) -> float:
        cursor = self.raw.cursor()

        def run() -> None:
            for index in range(0, count, batch):
                rows = self._raw_rows(batch, index)
                if self.sqlite:  # autocommit driver mode (serviceloop.db): BEGIN as the store does
                    cursor.execute("BEGIN IMMEDIATE")
                if batch == 1:
                    cursor.execute(self.insert_sql, rows[0])
                else:
                    cursor.executemany(self.insert_sql, rows)
                if self.sqlite:
                    cursor.execute("COMMIT")
                else:
                    self.raw.commit()

        try:
            return rate(count, timed(run))
        finally:
            cursor.close()


def bench_append(backend: str, *, count: int, batch: int, repetitions: int) -> dict:
    with fresh_database(backend) as url:
        bench = AppendBench(url)
        try:
            bench.store_rate(min(count, 50), batch)  # warm-up: caches, first-use imports
            bench.raw_rate(min(count, 50), batch)
            result = side_by_side(lambda: bench.store_rate(count, batch),
                                  lambda: bench.raw_rate(count, batch), repetitions)
        finally:
            bench.close()
    return {"bench": "append", "backend": backend, "batch": batch, "events": count,
            "unit": "events/s", **result}


# -- replay ----------------------------------------------------------------------------------


def fill_log(engine: Engine, total: int, *, per_call: int = 5000) -> float:
    """Append `total` events through the store, `per_call` per append and transaction."""
    store = EventStore(events)

    def run() -> None:
        with engine.connect() as conn:
            for index in range(0, total, per_call):
                with conn.begin():
                    _append_batch(store, conn, min(per_call, total - index), index)

    return timed(run)


def _replay_rate(engine: Engine, store: EventStore, expected: int) -> float:
    def run() -> None:
        with read_only(engine) as conn:
            seen = sum(1 for _ in store.replay(conn))
        if seen != expected:
            raise AssertionError(f"replay saw {seen} events, expected {expected}")

    return rate(expected, timed(run))


def _raw_select_rate(engine: Engine, expected: int, fetch: int = 5000) -> float:
    def run() -> None:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY global_position")
            seen = 0
            while rows := cursor.fetchmany(fetch):
                seen += len(rows)
            cursor.close()
            raw.rollback()
        finally:
            raw.close()
        if seen != expected:
            raise AssertionError(f"raw SELECT saw {seen} rows, expected {expected}")

    return rate(expected, timed(run))


def bench_replay(backend: str, *, total: int, repetitions: int,
                 log: Callable[[str], None] = print) -> dict:
    with fresh_database(backend) as url:
        engine = make_engine(url, pool_size=2)
        try:
            seconds = fill_log(engine, total)
            log(f"  filled {total} events in {seconds:.1f} s")
            store = EventStore(events)
            result = side_by_side(lambda: _replay_rate(engine, store, total),
                                  lambda: _raw_select_rate(engine, total), repetitions)
        finally:
            engine.dispose()
    return {"bench": "replay", "backend": backend, "events": total, "unit": "rows/s",
            "fill_seconds": seconds, **result}
