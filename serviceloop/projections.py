"""Read models fed from the log: droppable, rebuildable, and checkable for equality."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import Connection, Table, select

from serviceloop.eventstore import Envelope, EventStore

Handler = Callable[[Connection, Envelope], None]


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

    def rebuild(self, conn: Connection, store: EventStore, progress=None) -> int:  # noqa: ANN001
        """Empty every read model and fold the whole log into it again."""
        for table in reversed(self.tables):
            conn.execute(table.delete())
        count = 0
        for envelope in store.replay(conn):
            self.apply(conn, [envelope])
            count += 1
            if progress and count % 10_000 == 0:
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
