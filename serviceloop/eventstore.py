"""The append-only, hash-chained event log every service keeps (shared/DESIGN.md, "Event log").

One `events` table per service database. Appends go through `EventStore.append` only:
it checks the stream's expected version, validates each payload against contracts/,
chains the SHA-256 hashes and takes a per-log lock so that position order equals
commit order (a relay tailing by position can then never skip a late committer).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.exc import IntegrityError

from contracts.errors import ConcurrencyConflict
from contracts.registry import validate_event
from serviceloop.clock import isoformat

GENESIS_HASH = "0" * 64
APPEND_LOCK_KEY = 7_420_001  # pg advisory lock id for "append to this database's log"


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class NewEvent:
    """What the domain decides: a type and a payload. The store adds the rest."""

    event_type: str
    payload: dict
    schema_version: int = 1


@dataclass(frozen=True)
class Envelope:
    global_position: int
    event_id: str
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    occurred_at: str
    correlation_id: str
    causation_id: str
    actor: str
    payload: dict = field(hash=False)
    prev_hash: str
    hash: str

    HASHED_FIELDS = (
        "global_position", "event_id", "stream_id", "stream_version", "event_type",
        "schema_version", "occurred_at", "correlation_id", "causation_id", "actor",
        "payload", "prev_hash",
    )

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in (*self.HASHED_FIELDS, "hash")}

    @classmethod
    def from_dict(cls, data: dict) -> Envelope:
        return cls(**{name: data[name] for name in (*cls.HASHED_FIELDS, "hash")})

    def computed_hash(self) -> str:
        return compute_hash({name: getattr(self, name) for name in self.HASHED_FIELDS})


def compute_hash(hashed_fields: dict) -> str:
    return hashlib.sha256(canonical_json(hashed_fields).encode("utf-8")).hexdigest()


def define_log_tables(metadata: MetaData) -> Table:
    """Add the kernel's tables (log, relay position, inbox, parked) to a service's metadata."""
    events = Table(
        "events",
        metadata,
        Column("global_position", Integer, primary_key=True, autoincrement=False),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("stream_id", String(120), nullable=False),
        Column("stream_version", Integer, nullable=False),
        Column("event_type", String(80), nullable=False),
        Column("schema_version", Integer, nullable=False),
        Column("occurred_at", String(32), nullable=False),
        Column("correlation_id", String(120), nullable=False),
        Column("causation_id", String(120), nullable=False),
        Column("actor", String(120), nullable=False),
        Column("payload", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
        Index("ix_events_correlation", "correlation_id"),
    )
    Table(
        "relay_positions",
        metadata,
        Column("relay", String(80), primary_key=True),
        Column("position", Integer, nullable=False),
        Column("updated_at", String(32), nullable=False),
    )
    Table(
        "consumer_positions",
        metadata,
        Column("source", String(40), primary_key=True),
        Column("position", Integer, nullable=False),
        Column("updated_at", String(32), nullable=False),
    )
    Table(
        "inbox",
        metadata,
        Column("consumer", String(120), primary_key=True),
        Column("event_id", String(36), primary_key=True),
        Column("source", String(40), nullable=False),
        Column("event_type", String(80), nullable=False),
        Column("handled_at", String(32), nullable=False),
    )
    Table(
        "parked_messages",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("consumer", String(120), nullable=False),
        Column("event_id", String(36), nullable=False),
        Column("source", String(40), nullable=False),
        Column("event_type", String(80), nullable=False),
        Column("envelope", Text, nullable=False),
        Column("error", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("parked_at", String(32), nullable=False),
        Column("replayed_at", String(32), nullable=True),
    )
    return events


_APPEND_ONLY_SQL = {
    "sqlite": [
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END",
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'events is append-only: % refused', TG_OP "
        "USING ERRCODE = 'restrict_violation'; END $$",
        "CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION events_append_only()",
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()",
    ],
}


def append_only_sql(dialect: str) -> list[str]:
    """The triggers that make the database itself refuse UPDATE and DELETE on the log."""
    return _APPEND_ONLY_SQL[dialect]


_COLUMNS = (
    "global_position, event_id, stream_id, stream_version, event_type, schema_version, "
    "occurred_at, correlation_id, causation_id, actor, payload, prev_hash, hash"
)


def _row_to_envelope(row: Sequence) -> Envelope:
    return Envelope(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
        json.loads(row[10]), row[11], row[12],
    )


class EventStore:
    """Reads and appends one service's log through a connection the caller's transaction owns."""

    def __init__(self, events: Table) -> None:
        self.events = events
        self._insert = events.insert()

    # -- writing -----------------------------------------------------------------------------

    def append(
        self,
        conn: Connection,
        stream_id: str,
        expected_version: int,
        new_events: Sequence[NewEvent],
        *,
        occurred_at: datetime,
        correlation_id: str,
        causation_id: str,
        actor: str,
    ) -> list[Envelope]:
        """Append `new_events` to `stream_id`, which must be at `expected_version` (0 = new)."""
        for new in new_events:
            validate_event(new.event_type, new.schema_version, new.payload)
        self._lock_log(conn)
        current = self.stream_version(conn, stream_id)
        if current != expected_version:
            raise ConcurrencyConflict(
                f"stream {stream_id} is at version {current}, expected {expected_version}",
                {"expected_version": [f"stream is at {current}"]},
            )
        position, prev_hash = self.head(conn)
        when = isoformat(occurred_at)
        envelopes, rows = [], []
        for offset, new in enumerate(new_events, start=1):
            fields_ = {
                "global_position": position + offset,
                "event_id": str(uuid.uuid4()),
                "stream_id": stream_id,
                "stream_version": expected_version + offset,
                "event_type": new.event_type,
                "schema_version": new.schema_version,
                "occurred_at": when,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "actor": actor,
                "payload": new.payload,
                "prev_hash": prev_hash,
            }
            digest = compute_hash(fields_)
            envelopes.append(Envelope(**fields_, hash=digest))
            rows.append({**fields_, "payload": canonical_json(new.payload), "hash": digest})
            prev_hash = digest
        try:
            conn.execute(self._insert, rows)
        except IntegrityError as error:
            raise ConcurrencyConflict(
                f"stream {stream_id} was appended to concurrently", {"stream_id": [str(error.orig)]}
            ) from None
        return envelopes

    def _lock_log(self, conn: Connection) -> None:
        # SQLite already holds its write lock (BEGIN IMMEDIATE); PostgreSQL serialises
        # appenders until commit, so positions are handed out in commit order.
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")

    # -- reading -----------------------------------------------------------------------------

    def head(self, conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            text("SELECT global_position, hash FROM events ORDER BY global_position DESC LIMIT 1")
        ).first()
        return (row[0], row[1]) if row else (0, GENESIS_HASH)

    def stream_version(self, conn: Connection, stream_id: str) -> int:
        value = conn.execute(
            text("SELECT MAX(stream_version) FROM events WHERE stream_id = :s"), {"s": stream_id}
        ).scalar()
        return value or 0

    def stream(self, conn: Connection, stream_id: str) -> list[Envelope]:
        rows = conn.exec_driver_sql(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = {_param(conn)} "
            "ORDER BY stream_version",
            (stream_id,),
        )
        return [_row_to_envelope(row) for row in rows]

    def by_correlation(self, conn: Connection, correlation_id: str) -> list[Envelope]:
        rows = conn.exec_driver_sql(
            f"SELECT {_COLUMNS} FROM events WHERE correlation_id = {_param(conn)} "
            "ORDER BY global_position",
            (correlation_id,),
        )
        return [_row_to_envelope(row) for row in rows]

    def events_since(self, conn: Connection, position: int, limit: int) -> list[Envelope]:
        """Envelopes with global_position > `position`, in log order, at most `limit`."""
        p = _param(conn)
        rows = conn.exec_driver_sql(
            f"SELECT {_COLUMNS} FROM events WHERE global_position > {p} "
            f"ORDER BY global_position LIMIT {p}",
            (int(position), int(limit)),
        )
        return [_row_to_envelope(row) for row in rows]

    def replay(self, conn: Connection, *, after: int = 0, batch: int = 5000) -> Iterator[Envelope]:
        """Every envelope after `after`, in order, read in keyset-paged batches."""
        position = after
        while True:
            page = self.events_since(conn, position, batch)
            yield from page
            if len(page) < batch:
                return
            position = page[-1].global_position


def _param(conn: Connection) -> str:
    return "?" if conn.dialect.name == "sqlite" else "%s"


def verify_chain(envelopes: Iterator[Envelope], *, start_hash: str = GENESIS_HASH,
                 start_position: int = 0) -> list[str]:
    """The breaks in a log's hash chain and positions, described; empty when intact."""
    breaks = []
    prev_hash, expected_position = start_hash, start_position + 1
    for envelope in envelopes:
        where = f"position {envelope.global_position}"
        if envelope.global_position != expected_position:
            breaks.append(f"{where}: expected position {expected_position}")
        if envelope.prev_hash != prev_hash:
            breaks.append(f"{where}: prev_hash does not match the previous event's hash")
        if envelope.computed_hash() != envelope.hash:
            breaks.append(f"{where}: hash does not match the event's content")
        prev_hash, expected_position = envelope.hash, envelope.global_position + 1
    return breaks
