"""The append-only, hash-chained event log every service keeps (shared/DESIGN.md, "Event log").

One `events` table per service database. Appends go through `EventStore.append` only:
it checks the stream's expected version, validates each payload against contracts/,
chains the SHA-256 hashes and takes a per-log lock so that position order equals
commit order (a relay tailing by position can then never skip a late committer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

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
from sqlalchemy.exc import DBAPIError, IntegrityError

from contracts.errors import ConcurrencyConflict
from contracts.registry import validate_event
from serviceloop.clock import isoformat
from serviceloop.db import (
    Prepared,
    deferring,
    fetch_rows,
    hold_back,
    holds_writes,
    owns_transaction,
    sql,
)

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


class Envelope(NamedTuple):
    """One logged event. A tuple, so a replay builds millions cheaply; the payload is kept
    as the canonical JSON it was hashed and stored as, and decoded when asked for."""

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
    payload_json: str
    prev_hash: str
    hash: str

    @property
    def payload(self) -> dict:
        return json.loads(self.payload_json)

    def to_dict(self) -> dict:
        data = self._asdict()
        data["payload"] = json.loads(data.pop("payload_json"))
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Envelope:
        return cls(**{name: data[name] for name in cls._fields if name != "payload_json"},
                   payload_json=canonical_json(data["payload"]))

    def computed_hash(self) -> str:
        return compute_hash(self[:10], self.payload_json, self.prev_hash)


def compute_hash(head: Sequence, payload_json: str, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the event's fields (all but `hash`).

    `head` is the envelope's first ten fields; the payload is already canonical JSON, so
    the document is assembled in sorted-key order without decoding it again. Strings are
    encoded by the json module's own C encoder, byte for byte what `json.dumps` gives.
    """
    (position, event_id, stream_id, stream_version, event_type, schema_version, occurred_at,
     correlation_id, causation_id, actor) = head
    document = (
        f'{{"actor":{_string(actor)},"causation_id":{_string(causation_id)},'
        f'"correlation_id":{_string(correlation_id)},"event_id":{_string(event_id)},'
        f'"event_type":{_string(event_type)},"global_position":{_integer(position)},'
        f'"occurred_at":{_string(occurred_at)},"payload":{payload_json},'
        f'"prev_hash":{_ascii_string(prev_hash)},"schema_version":{_integer(schema_version)},'
        f'"stream_id":{_string(stream_id)},"stream_version":{_integer(stream_version)}}}')
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


_encode_string = json.encoder.encode_basestring  # json.dumps(text, ensure_ascii=False)
_encode_ascii = json.encoder.encode_basestring_ascii  # json.dumps(text)


def _string(value: object) -> str:
    if type(value) is str:
        return _encode_string(value)
    return json.dumps(value, ensure_ascii=False)  # what the hash always said of the rest


def _ascii_string(value: object) -> str:
    return _encode_ascii(value) if type(value) is str else json.dumps(value)


def _integer(value: object) -> str:
    return int.__repr__(value) if type(value) is int else json.dumps(value, ensure_ascii=False)


def define_log_tables(metadata: MetaData) -> Table:
    """Add the kernel's tables (log, relay position, inbox, parked, the answers of write
    RPCs by request id: serviceloop.answers) to a service's metadata."""
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
        # a message parked by RetryLater: its own order, and the order whose next handled
        # event hands it back (its own, or the one RetryLater named); NULL for other failures
        Column("correlation_id", String(120), nullable=True),
        Column("waiting_for", String(120), nullable=True),
        Index("ix_parked_messages_waiting_for", "waiting_for"),
        Index("ix_parked_messages_correlation_id", "correlation_id"),
    )
    Table(
        "rpc_answers",
        metadata,
        Column("request_id", String(120), primary_key=True),
        Column("method", String(80), nullable=False),
        Column("arguments_hash", String(64), nullable=False),
        Column("answer", Text, nullable=False),
        Column("answered_at", String(32), nullable=False),
    )
    return events


def add_parked_waiting_columns(op) -> None:  # noqa: ANN001 - alembic's operations
    """Migration step every service takes: parked_messages' correlation_id and waiting_for
    (see `define_log_tables`), filled in for messages RetryLater parked before they existed."""
    import sqlalchemy as sa

    with op.batch_alter_table("parked_messages") as batch:
        batch.add_column(sa.Column("correlation_id", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("waiting_for", sa.String(length=120), nullable=True))
        batch.create_index("ix_parked_messages_waiting_for", ["waiting_for"])
        batch.create_index("ix_parked_messages_correlation_id", ["correlation_id"])
    bind = op.get_bind()
    waiting = bind.execute(sa.text("SELECT id, envelope, error FROM parked_messages WHERE "
                                   "replayed_at IS NULL AND error LIKE 'RetryLater:%'")).all()
    for row in waiting:
        try:
            own = json.loads(row.envelope).get("correlation_id")
        except ValueError:
            continue
        named = re.search(r"\[waiting for (.+?)\]$", row.error)
        bind.execute(sa.text("UPDATE parked_messages SET correlation_id = :c, waiting_for = :w "
                             "WHERE id = :i"),
                     {"c": own, "w": named.group(1) if named else own, "i": row.id})


def drop_parked_waiting_columns(op) -> None:  # noqa: ANN001
    with op.batch_alter_table("parked_messages") as batch:
        batch.drop_index("ix_parked_messages_correlation_id")
        batch.drop_index("ix_parked_messages_waiting_for")
        batch.drop_column("waiting_for")
        batch.drop_column("correlation_id")


def add_answers_table(op) -> None:  # noqa: ANN001 - alembic's operations
    """Migration step every service takes: the `rpc_answers` table (define_log_tables) that
    serviceloop.answers keeps write RPCs' answers in."""
    import sqlalchemy as sa

    op.create_table(
        "rpc_answers",
        sa.Column("request_id", sa.String(length=120), nullable=False),
        sa.Column("method", sa.String(length=80), nullable=False),
        sa.Column("arguments_hash", sa.String(length=64), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("answered_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def drop_answers_table(op) -> None:  # noqa: ANN001
    op.drop_table("rpc_answers")


def notify_channel(service: str) -> str:
    """The PostgreSQL channel on which `service`'s log tells its relay of each append."""
    return f"{service}_events"


def append_notify_sql(service: str) -> list[str]:
    """PostgreSQL: a statement-level trigger notifying `notify_channel(service)` after each
    insert into the log. The notification goes out at COMMIT, once per transaction (the
    same channel and payload are folded into one), so a relay LISTENing wakes for events it
    can read; it costs an append less than a `pg_notify` in the append's own round trip
    (bench/append_notify.py)."""
    return [
        "CREATE OR REPLACE FUNCTION events_notify_relay() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$ BEGIN PERFORM pg_notify('{notify_channel(service)}', ''); RETURN NULL; END $$",
        "CREATE TRIGGER events_notify_relay AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_notify_relay()",
    ]


def add_append_notify(op, service: str) -> None:  # noqa: ANN001 - alembic's operations
    """Migration step every service takes: its log notifies its relay of appends
    (PostgreSQL; SQLite's relay polls)."""
    if op.get_bind().dialect.name == "postgresql":
        for statement in append_notify_sql(service):
            op.execute(statement)


def drop_append_notify(op) -> None:  # noqa: ANN001
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_notify_relay ON events")
        op.execute("DROP FUNCTION IF EXISTS events_notify_relay()")


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


# One event appended by PostgreSQL itself, under the append lock: the next position, the
# previous hash, the stream version only if the stream is at the expected one (else NULL,
# refused by NOT NULL: a concurrency conflict), and the SHA-256 of the same canonical document
# `compute_hash` builds (to_json escapes strings exactly as Python's json module does).
_PG_INSERT_EVENT_SQL = f"""INSERT INTO events ({_COLUMNS})
SELECT head.position + 1, e.event_id, e.stream_id, e.stream_version, e.event_type,
       e.schema_version, e.occurred_at, e.correlation_id, e.causation_id, e.actor, e.payload,
       head.hash,
       encode(sha256(convert_to(
           '{{"actor":' || to_json(e.actor)::text
           || ',"causation_id":' || to_json(e.causation_id)::text
           || ',"correlation_id":' || to_json(e.correlation_id)::text
           || ',"event_id":' || to_json(e.event_id)::text
           || ',"event_type":' || to_json(e.event_type)::text
           || ',"global_position":' || (head.position + 1)::text
           || ',"occurred_at":' || to_json(e.occurred_at)::text
           || ',"payload":' || e.payload
           || ',"prev_hash":' || to_json(head.hash)::text
           || ',"schema_version":' || e.schema_version::text
           || ',"stream_id":' || to_json(e.stream_id)::text
           || ',"stream_version":' || e.stream_version::text || '}}', 'UTF8')), 'hex')
FROM (SELECT ?::text AS event_id, ?::text AS stream_id,
             CASE WHEN COALESCE((SELECT MAX(stream_version) FROM events WHERE stream_id = ?), 0)
                       = ? THEN ?::integer END AS stream_version,
             ?::text AS event_type, ?::integer AS schema_version, ?::text AS occurred_at,
             ?::text AS correlation_id, ?::text AS causation_id, ?::text AS actor,
             ?::text AS payload) AS e,
     (SELECT last.position,
             COALESCE((SELECT hash FROM events WHERE global_position = last.position),
                      '{GENESIS_HASH}') AS hash
      FROM (SELECT COALESCE(MAX(global_position), 0) AS position FROM events) AS last) AS head"""

# parsed and planned once per connection: planning the insert cost PostgreSQL more CPU than
# running it (0.35 against 0.17 ms an append, measured on orders' create_order)
_PG_INSERT_EVENT = Prepared(_PG_INSERT_EVENT_SQL)
_PG_INSERT_EVENT_RETURNING = Prepared(
    f"{_PG_INSERT_EVENT_SQL} RETURNING global_position, prev_hash, hash")


_INTEGER_AT = (0, 3, 5)  # global_position, stream_version, schema_version
_PREV_HASH, _HASH = 11, 12


def refused_by_the_log(error: IntegrityError) -> bool:
    """The log's own constraint refused an append: the stream was not at the expected version
    (another writer appended first). On PostgreSQL that is also how a held-back append's
    conflict reaches the statement it went with (serviceloop.db.hold_writes)."""
    diagnostics = getattr(error.orig, "diag", None)
    if diagnostics is not None:
        return getattr(diagnostics, "table_name", None) == "events"
    return "constraint failed: events." in str(error.orig)  # SQLite's message


class CommitInDoubt(DBAPIError):
    """The connection was lost while the round trip carrying an append's COMMIT was out: the
    database may have committed or not. `drafts`: what was appended; their event ids, looked
    for on another connection, tell which (serviceloop.unit_of_work.UnitOfWork.committed)."""

    def __init__(self, lost: DBAPIError, drafts: list[Envelope]) -> None:
        super().__init__(lost.statement, lost.params, lost.orig,
                         hide_parameters=lost.hide_parameters, connection_invalidated=True)
        self.drafts = drafts


def in_the_log(conn: Connection, event_id: str) -> bool:
    """Whether the event `event_id` is in this service's log (committed, seen from `conn`)."""
    return conn.execute(text("SELECT 1 FROM events WHERE event_id = :e"),
                        {"e": event_id}).first() is not None


def _of_types(count: int) -> str:
    """The condition on event_type for `count` types given (none: any type)."""
    return f" AND event_type IN ({', '.join(['?'] * count)})" if count else ""


@functools.cache
def _page_sql(dialect: str, kinds: int) -> str:
    """`EventStore.page_since`'s query, for `kinds` event types given."""
    names = [name.strip() for name in _COLUMNS.split(",")]
    where = f"global_position > ?{_of_types(kinds)}"
    if dialect == "sqlite":  # the rows as they are: page_since checks each value's type
        return f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY global_position LIMIT ?"
    # count, last position, rows it cannot vouch for, the text
    shown = dict(zip(names, names, strict=True))
    shown["prev_hash"] = "CASE WHEN prev_hash = previous THEN '' ELSE prev_hash END"
    joined = " || chr(30) || ".join(
        f"string_agg({shown[name]}{'::text' if n in _INTEGER_AT else ''}, chr(31) "
        f"ORDER BY global_position)" for n, name in enumerate(names))
    return (f"SELECT count(*), max(global_position), "
            f"coalesce(sum(CASE WHEN prev_hash = '' THEN 1 ELSE 0 END), 0), {joined} "
            f"FROM (SELECT *, lag(hash) OVER (ORDER BY global_position) AS previous FROM "
            f"(SELECT {_COLUMNS} FROM events WHERE {where} "
            f"ORDER BY global_position LIMIT ?) AS page) AS page")


class EventStore:
    """Reads and appends one service's log through a connection the caller's transaction owns."""

    def __init__(self, events: Table) -> None:
        self.events = events

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
        project: Callable[[Connection, list[Envelope]], None] | None = None,
        commit: bool = False,
        chain: bool = True,
    ) -> list[Envelope]:
        """Append `new_events` to `stream_id`, which must be at `expected_version` (0 = new).

        `project` (the service's read models) is applied to the drafts before the log's
        lock is taken, so the lock is held only for the head read and the insert. Drafts
        carry everything but `global_position`, `prev_hash` and `hash` (0, "", ""): read
        models must not depend on those three.

        On PostgreSQL the whole append is one round trip: the read model's `sql()` writes,
        the lock, and inserts whose position, hash chain and version check are computed by
        the database (the same document `compute_hash` hashes). `commit`: the append is the
        unit of work's last write, and its COMMIT goes in the same round trip.

        `chain=False`: the caller reads none of `global_position`, `prev_hash` and `hash` of
        what is returned: on PostgreSQL it gets the drafts as `project` saw them (0, "", "" in
        those three), and the append reads nothing back (a multi-statement query answers only
        its last statement, so a committed or multi-event append read them with a SELECT
        after its COMMIT or last insert).
        """
        for new in new_events:
            validate_event(new.event_type, new.schema_version, new.payload)
        when = isoformat(occurred_at)
        drafts = [
            Envelope(0, str(uuid.uuid4()), stream_id, expected_version + offset, new.event_type,
                     new.schema_version, when, correlation_id, causation_id, actor,
                     canonical_json(new.payload), "", "")
            for offset, new in enumerate(new_events, start=1)
        ]
        if conn.dialect.name == "postgresql":
            return self._append_in_one_round_trip(conn, drafts, project, commit, chain)
        if project is not None:
            project(conn, drafts)
        position, prev_hash, current = self._lock_and_read_heads(conn, stream_id)
        if current != expected_version:
            raise ConcurrencyConflict(
                f"stream {stream_id} is at version {current}, expected {expected_version}",
                {"expected_version": [f"stream is at {current}"]},
            )
        envelopes = []
        for offset, draft in enumerate(drafts, start=1):
            head = (position + offset, *draft[1:10])
            digest = compute_hash(head, draft.payload_json, prev_hash)
            envelopes.append(Envelope(*head, draft.payload_json, prev_hash, digest))
            prev_hash = digest
        try:
            sql(
                conn,
                f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join(['?'] * 13)})",
                [tuple(e) for e in envelopes] if len(envelopes) > 1 else tuple(envelopes[0]),
            )
        except IntegrityError as error:
            raise ConcurrencyConflict(
                f"stream {stream_id} was appended to concurrently", {"stream_id": [str(error.orig)]}
            ) from None
        return envelopes

    def _append_in_one_round_trip(self, conn: Connection, drafts: list[Envelope],
                                  project: Callable | None, commit: bool,
                                  chain: bool = True) -> list[Envelope]:
        statements: list[str] = []
        params: list = []
        commit = commit and owns_transaction(conn)
        if project is not None:
            with deferring(conn) as collected:
                project(conn, drafts)
            for statement, values in collected:
                statements.append(statement)
                params.extend(values)
        statements.append(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
        returning = chain and not commit and len(drafts) == 1
        insert = _PG_INSERT_EVENT_RETURNING if returning else _PG_INSERT_EVENT
        statements.append(insert.text(conn, times=len(drafts)))  # one insert a draft
        for draft in drafts:
            params.extend((draft.event_id, draft.stream_id, draft.stream_id,
                           draft.stream_version - 1, draft.stream_version, draft.event_type,
                           draft.schema_version, draft.occurred_at, draft.correlation_id,
                           draft.causation_id, draft.actor, draft.payload_json))
        if commit:
            statements.append("COMMIT")
        if chain and not returning:
            statements.append("SELECT global_position, prev_hash, hash FROM events WHERE "
                              f"event_id IN ({', '.join(['?'] * len(drafts))}) "
                              "ORDER BY global_position")
            params.extend(draft.event_id for draft in drafts)
        elif not chain and not commit and holds_writes(conn):
            # goes with the unit of work's next round trip (its COMMIT at the latest); a
            # conflict is raised there, as the insert's IntegrityError
            hold_back(conn, "; ".join(statements), tuple(params))
            return drafts
        try:
            rows = fetch_rows(conn, "; ".join(statements), tuple(params))
        except IntegrityError as error:
            if not refused_by_the_log(error):
                raise  # a read model's constraint: the caller's to answer
            stream_id, expected = drafts[0].stream_id, drafts[0].stream_version - 1
            raise ConcurrencyConflict(
                f"stream {stream_id} is not at version {expected}: appended to concurrently",
                {"expected_version": [f"stream is not at {expected}"]},
            ) from None
        except DBAPIError as error:
            if commit and error.connection_invalidated:
                raise CommitInDoubt(error, drafts) from error
            raise
        if not chain:
            return drafts
        return [Envelope(position, *draft[1:11], prev_hash, digest)
                for draft, (position, prev_hash, digest) in zip(drafts, rows, strict=True)]

    def _lock_and_read_heads(self, conn: Connection, stream_id: str) -> tuple[int, str, int]:
        """The log's head (position, hash) and the stream's version, under the append lock.

        SQLite already holds its write lock (BEGIN IMMEDIATE). PostgreSQL takes an advisory
        lock held to commit, so positions are handed out in commit order; lock and reads go
        in one round trip.
        """
        query = (
            "SELECT (SELECT global_position FROM events ORDER BY global_position DESC LIMIT 1),"
            " (SELECT hash FROM events ORDER BY global_position DESC LIMIT 1),"
            " (SELECT MAX(stream_version) FROM events WHERE stream_id = ?)"
        )
        if conn.dialect.name == "postgresql":
            query = f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}); " + query
        position, digest, version = sql(conn, query, (stream_id,)).one()
        return position or 0, digest or GENESIS_HASH, version or 0

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
        return self._select(conn, "stream_id = ? ORDER BY stream_version", (stream_id,))

    def by_correlation(self, conn: Connection, correlation_id: str) -> list[Envelope]:
        return self._select(conn, "correlation_id = ? ORDER BY global_position",
                            (correlation_id,))

    def events_since(self, conn: Connection, position: int, limit: int) -> list[Envelope]:
        """Envelopes with global_position > `position`, in log order, at most `limit`."""
        return list(map(Envelope._make, self.rows_since(conn, position, limit)))

    def rows_since(self, conn: Connection, position: int, limit: int,
                   event_types: Sequence[str] = ()) -> list[tuple]:
        """As `events_since`, each event the plain tuple of its Envelope fields: for a reader
        that only passes the fields on (an auditor's packed page), no envelope built.
        `event_types`: only events of these types."""
        kinds = _of_types(len(event_types))
        return self._select(conn, f"global_position > ?{kinds} ORDER BY global_position LIMIT ?",
                            (int(position), *event_types, int(limit)), make=None)

    def page_since(self, conn: Connection, position: int, limit: int,
                   event_types: Sequence[str] = ()) -> tuple[int, int, bytes] | None:
        """As `rows_since`, the page as one UTF-8 string (serviceloop/audit/wire.py): each
        column's values joined with \\x1f (integers in decimal; prev_hash empty where it is
        the hash of the row before it in the page), the columns with \\x1e, in Envelope's
        field order. `(count, last position, text)`; None when the page is empty or its text
        would not split back into exactly the stored values: a value not of its column's
        type, an empty prev_hash, a separator inside a value (the caller reads `rows_since`
        instead; stored text that is not UTF-8 neither SQLite's driver nor this reads).

        PostgreSQL joins the page itself (string_agg); SQLite hands the rows, joined here (its
        aggregates, window functions and typeof() checks cost more than the rows)."""
        found = fetch_rows(conn, _page_sql(conn.dialect.name, len(event_types)),
                           (int(position), *event_types, int(limit)))
        if conn.dialect.name == "sqlite":
            if not found:
                return None
            columns = list(zip(*found, strict=True))
            count, last = len(found), columns[0][-1]
            prev_hashes, hashes = columns[_PREV_HASH], columns[_HASH]
            if not all(prev_hashes):  # an empty prev_hash would read as an elided one
                return None
            columns[_PREV_HASH] = prev_hashes[:1] + tuple(
                "" if prev == before else prev
                for prev, before in zip(prev_hashes[1:], hashes, strict=False))
            # a value not of its column's type refuses to be joined: int.__repr__ takes only
            # an int, str.join only str (SQLite keeps any type in any column); stored text
            # that is not UTF-8 the driver refuses to read, here as in rows_since
            try:
                text = "\x1e".join("\x1f".join(map(int.__repr__, column)) if n in _INTEGER_AT
                                    else "\x1f".join(column)
                                    for n, column in enumerate(columns)).encode("utf-8")
            except TypeError:
                return None
        else:
            count, last, doubtful, text = found[0]
            if not count or doubtful:
                return None
            text = text.encode("utf-8")
        if text.count(b"\x1e") != 12 or text.count(b"\x1f") != 13 * (count - 1):
            return None
        return count, last, text

    def _select(self, conn: Connection, where: str, params: tuple,
                make: Callable[[tuple], Envelope] | None = Envelope._make) -> list:
        # straight to the driver's cursor: rows become envelopes without SQLAlchemy's Row
        rows = fetch_rows(conn, f"SELECT {_COLUMNS} FROM events WHERE {where}", params)
        return rows if make is None else list(map(make, rows))

    def replay(self, conn: Connection, *, after: int = 0,
               batch: int = 10_000) -> Iterator[Envelope]:
        """Every envelope after `after`, in order, read in keyset-paged batches."""
        position = after
        while True:
            page = self.events_since(conn, position, batch)
            yield from page
            if len(page) < batch:
                return
            position = page[-1].global_position


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
