"""Read models fed from the log: droppable, rebuildable, and checkable for equality."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, Table, select

from serviceloop.db import Prepared, fetch_rows, prepared_insert, prepared_update, sql
from serviceloop.eventstore import Envelope, EventStore

Handler = Callable[[Connection, Envelope], None]


# -- a read model's writes ----------------------------------------------------------------------
#
# Through serviceloop.db.sql with a statement prepared once per PostgreSQL connection per
# table and set of columns: inside an append they are sent with its round trip (deferred), and
# PostgreSQL only executes them. Values go to the driver as they are (no SQLAlchemy type
# processing: text, integers, None; JSON already dumped). A handler must not read back what
# it wrote in the same append: its writes are not sent yet.


def insert(conn: Connection, table: Table, values: dict) -> None:
    """INSERT one row of `values` (column -> value) into `table`."""
    sql(conn, prepared_insert(table.name, tuple(values)), tuple(values.values()))


def update(conn: Connection, table: Table, key: str, key_value: object, **values: object) -> None:
    """UPDATE `table` SET `values` WHERE `key` = `key_value`."""
    sql(conn, prepared_update(table.name, tuple(values), key),
        (*values.values(), key_value))


class RowReader:
    """A read model's row as a dict (column -> value as the driver gives it), read with a
    statement prepared once per PostgreSQL connection, on the driver's cursor: for the reads
    every delivery or command makes, where SQLAlchemy's select cost more than the read."""

    def __init__(self, table: Table, where: str, for_update: bool = False) -> None:
        """`where`: which rows, with `?` markers. `for_update`: locked to the end of the
        transaction on PostgreSQL (SQLite's writers take turns already, and it has no
        FOR UPDATE)."""
        self.columns = tuple(column.name for column in table.columns)
        read = f"SELECT {', '.join(self.columns)} FROM {table.name} WHERE {where}"
        self.statement = Prepared(read)
        self.locking = Prepared(f"{read} FOR UPDATE") if for_update else self.statement

    def first(self, conn: Connection, params: tuple) -> dict | None:
        statement = self.locking if conn.dialect.name == "postgresql" else self.statement
        rows = fetch_rows(conn, statement.text(conn), params)
        return dict(zip(self.columns, rows[0], strict=True)) if rows else None


class Projector:
    """Applies events to a service's read-model tables; the same code live and in a rebuild."""

    def __init__(self, tables: list[Table], handlers: dict[str, Handler]) -> None:
        self.tables = tables
        self.handlers = handlers

    def apply(self, conn: Connection, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            handler = self.handlers.get(envelope.event_type)
            if handler is not None:
                handler(conn, envelope)

    def rebuild(self, conn: Connection, store: EventStore, progress=None,  # noqa: ANN001
                every: int = 10_000) -> int:
        """Empty every read model and fold the whole log into it again; `progress(count)`
        after each `every` events."""
        for table in reversed(self.tables):
            conn.execute(table.delete())
        count = 0
        for envelope in store.replay(conn):
            self.apply(conn, [envelope])
            count += 1
            if progress and count % every == 0:
                progress(count)
        return count

    def checksums(self, conn: Connection) -> dict[str, str]:
        """A SHA-256 per table over its rows in key order: equal tables, equal sums."""
        sums = {}
        for table in self.tables:
            digest = hashlib.sha256()
            key = list(table.primary_key.columns) or list(table.columns)
            for row in conn.execute(select(table).order_by(*key)):
                digest.update(repr(tuple(row)).encode("utf-8"))
            sums[table.name] = digest.hexdigest()
        return sums


REPORT_EVERY = 100  # events between a rebuild's reports (and chances for others to run)


@dataclass
class RebuildProgress:
    """How far a service's rebuild in this process is: events folded of the log's `total`."""

    running: bool = False
    events: int = 0
    total: int = 0


_REBUILDS: dict[str, RebuildProgress] = {}  # by service: what rebuild_progress answers


def rebuild_progress(service: str) -> dict:
    """`{"running", "events", "total"}` of `service`'s latest rebuild in this process
    (running False, 0 of 0: none here; another replica may be the one rebuilding)."""
    return asdict(_REBUILDS.get(service, RebuildProgress()))


def rebuild_telling_progress(service: str, projector: Projector, conn: Connection,
                             store: EventStore) -> int:
    """`projector.rebuild`, telling `rebuild_progress(service)` how far it is as it goes.

    The rebuild is one transaction in one green thread: after each report it lets the
    others run (time.sleep(0) is eventlet's under nameko), so the process answers
    `rebuild_progress` meanwhile, on SQLite too."""
    state = _REBUILDS[service] = RebuildProgress(True, 0, store.head(conn)[0])

    def told(count: int) -> None:
        state.events = count
        time.sleep(0)

    try:
        state.events = projector.rebuild(conn, store, told, every=REPORT_EVERY)
    finally:
        state.running = False
    return state.events
