"""A unit of work on PostgreSQL: BEGIN with its first statement, an append in one round trip
with the database computing the hash chain, and COMMIT sent with the last write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2.extras import LoggingConnection
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from contracts.errors import ConcurrencyConflict
from serviceloop.clock import ManualClock
from serviceloop.consumer import deliver
from serviceloop.db import (
    hold_writes,
    make_engine,
    read_position,
    relay_position_write,
    save_position,
    save_relay_position,
    sql,
    with_next_statement,
)
from serviceloop.eventstore import (
    APPEND_LOCK_KEY,
    Envelope,
    EventStore,
    NewEvent,
    compute_hash,
    verify_chain,
)
from serviceloop.nameko_deps import WorkerDatabase
from serviceloop.unit_of_work import UnitOfWork, read_only
from services.orders.projections import events as events_table

WHEN = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ADDRESS = {"province": "广东省", "city": "广州市", "district": "天河区", "street": "中山路1号",
           "lat": None, "lon": None}
STORE = EventStore(events_table)


def registered(n: int, name: str = "") -> NewEvent:
    return NewEvent("customer_registered", {
        "customer_id": f"c{n}", "name": name or f"客户{n}", "phone": f"138{n:08d}",
        "address": ADDRESS})


class _Sent(list):
    """What psycopg2's LoggingConnection writes: each query string a cursor sends."""

    def write(self, query: str) -> None:
        self.append(query.rstrip("\n"))


@pytest.fixture
def round_trips() -> _Sent:
    return _Sent()


@pytest.fixture
def pg_engine(database_for, round_trips):
    class Logged(LoggingConnection):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            self.initialize(round_trips)

    engine = make_engine(database_for("orders", "postgres"),
                         connect_args={"connection_factory": Logged})
    yield engine
    engine.dispose()


def count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events")).scalar()


def append(unit: UnitOfWork, stream: str, expected: int, events: list[NewEvent], *,
           actor: str = "system", correlation_id: str = "corr", commit: bool = False,
           project=None):  # noqa: ANN001
    return STORE.append(unit.conn, stream, expected, events, occurred_at=WHEN,
                        correlation_id=correlation_id, causation_id="test", actor=actor,
                        project=project, commit=commit)


def test_begin_rides_on_the_first_statement_and_a_rollback_still_undoes_the_work(
        pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    unit.conn  # noqa: B018 - checks a connection out
    round_trips.clear()  # what the engine's first connection asked the server about it
    sql(unit.conn, "SELECT 1")
    append(unit, "customer-a", 0, [registered(1)])
    unit.rollback()
    assert round_trips[0].startswith("BEGIN; SELECT 1")
    assert not any(s == "BEGIN" for s in round_trips)
    assert round_trips[-1] == "ROLLBACK"
    assert count(pg_engine) == 0
    with pg_engine.connect() as conn:  # the pooled connection is back in the driver's mode
        assert conn.connection.driver_connection.autocommit is False


def test_an_append_is_one_round_trip_and_its_commit_can_go_with_it(pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    unit.conn  # noqa: B018 - checks a connection out
    round_trips.clear()
    (envelope,) = append(unit, "customer-a", 0, [registered(1)], commit=True)
    unit.commit()  # nothing left to send
    assert len(round_trips) == 1
    assert round_trips[0].startswith("BEGIN; SELECT pg_advisory_xact_lock")
    assert "; COMMIT; SELECT" in round_trips[0]
    (stored,) = _read(pg_engine)
    assert stored == envelope and stored.global_position == 1
    assert stored.hash == compute_hash(stored[:10], stored.payload_json, stored.prev_hash)


def test_a_read_after_an_append_that_committed_sees_it_and_holds_no_lock(pg_engine,
                                                                       round_trips):
    """What an agent's callback command does: append with COMMIT, then read what it wrote."""
    unit = UnitOfWork(pg_engine)
    unit.conn  # noqa: B018 - checks a connection out
    round_trips.clear()
    append(unit, "customer-a", 0, [registered(1)], commit=True)
    with pg_engine.connect() as other:  # the log's lock is free and the event committed
        locked = other.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                               {"k": APPEND_LOCK_KEY}).scalar()
        other.rollback()
    seen = unit.conn.execute(text("SELECT count(*) FROM events")).scalar()
    unit.commit()  # nothing left to send
    assert locked is True and seen == 1
    ours = [sent for sent in round_trips if "pg_try_advisory" not in sent]
    assert len(ours) == 2 and "; COMMIT" in ours[0]
    assert ours[1] == "SELECT count(*) FROM events"


def test_a_read_models_writes_go_in_the_appends_round_trip(pg_engine, round_trips):
    def project(conn, drafts):  # noqa: ANN001
        for draft in drafts:
            sql(conn, "INSERT INTO order_requests (request_id, order_id) VALUES (?, ?)",
                (draft.event_id, draft.stream_id))

    unit = UnitOfWork(pg_engine)
    unit.conn  # noqa: B018 - checks a connection out
    round_trips.clear()
    append(unit, "customer-a", 0, [registered(1), registered(2)], project=project)
    unit.commit()
    assert len(round_trips) == 2 and round_trips[1] == "COMMIT"
    assert round_trips[0].index("INSERT INTO order_requests") < round_trips[0].index(
        "pg_advisory_xact_lock")
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM order_requests")).scalar() == 2
    assert verify_chain(iter(_read(pg_engine))) == []


def test_a_read_models_constraint_stays_its_own_error_and_nothing_is_kept(pg_engine):
    def project(conn, drafts):  # noqa: ANN001
        sql(conn, "INSERT INTO order_requests (request_id, order_id) VALUES (?, ?)",
            ("same-request", drafts[0].stream_id))

    first = UnitOfWork(pg_engine)
    append(first, "customer-a", 0, [registered(1)], project=project, commit=True)
    first.commit()
    second = UnitOfWork(pg_engine)
    with pytest.raises(IntegrityError):
        append(second, "customer-b", 0, [registered(2)], project=project, commit=True)
    second.rollback()
    assert count(pg_engine) == 1


@pytest.mark.parametrize("expected", [0, 2, 5])
def test_a_stream_not_at_the_expected_version_is_a_conflict_either_way(pg_engine, expected):
    unit = UnitOfWork(pg_engine)
    append(unit, "customer-a", 0, [registered(1), registered(2), registered(3)], commit=True)
    unit.commit()
    late = UnitOfWork(pg_engine)
    with pytest.raises(ConcurrencyConflict):  # behind (0, 2) or ahead of (5) the stream
        append(late, "customer-a", expected, [registered(9)], commit=True)
    late.rollback()
    assert count(pg_engine) == 3


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actor=_TEXT, correlation_id=_TEXT, name=_TEXT)
def test_the_databases_hash_is_the_one_python_computes_for_any_text(
        pg_engine, actor, correlation_id, name):
    unit = UnitOfWork(pg_engine)
    try:
        appended = append(unit, f"customer-{uuid.uuid4()}", 0, [registered(1, name)],
                          actor=actor, correlation_id=correlation_id, commit=True)
        unit.commit()
    finally:
        unit.rollback()
    for envelope in appended:
        assert envelope.hash == compute_hash(envelope[:10], envelope.payload_json,
                                             envelope.prev_hash)
    assert verify_chain(iter(_read(pg_engine))) == []


def _read(engine) -> list:
    with engine.connect() as conn:
        return list(STORE.replay(conn))


def test_a_read_is_its_own_round_trip_without_begin_or_rollback(pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    append(unit, "customer-a", 0, [registered(1)], commit=True)
    unit.commit()
    round_trips.clear()
    with read_only(pg_engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 1
    assert round_trips == ["SELECT count(*) FROM events"]
    with pg_engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False


def test_a_relays_position_is_one_round_trip_without_waiting_for_the_flush(pg_engine,
                                                                           round_trips):
    with pg_engine.connect() as conn:  # a pooled connection, so that only the save counts
        conn.exec_driver_sql("SELECT 1")
    round_trips.clear()
    save_relay_position(pg_engine, "orders-relay", 7, "2026-12-01T00:00:00Z")
    save_relay_position(pg_engine, "orders-relay", 9, "2026-12-01T00:00:01Z")
    assert len(round_trips) == 2
    assert all("synchronous_commit TO OFF" in sent and sent.endswith("COMMIT")
               for sent in round_trips)
    with read_only(pg_engine) as conn:
        assert read_position(conn, "relay_positions", "orders-relay") == 9


def test_a_busy_relays_position_goes_in_front_of_its_next_read(pg_engine, round_trips):
    with pg_engine.begin() as conn:
        STORE.append(conn, "customer-c1", 0, [registered(1), registered(2)], occurred_at=WHEN,
                     correlation_id="c1", causation_id="cmd-1", actor="agent:a")
    round_trips.clear()
    with read_only(pg_engine) as conn:
        with with_next_statement(conn, *relay_position_write("orders-relay", 1,
                                                             "2026-12-01T00:00:00Z")):
            page = STORE.events_since(conn, 1, 10)
        assert [e.global_position for e in page] == [2]  # the read's rows are the answer
        assert len(round_trips) == 1 and "synchronous_commit TO OFF" in round_trips[0]
        with with_next_statement(conn, *relay_position_write("orders-relay", 2,
                                                             "2026-12-01T00:00:01Z")):
            pass  # nothing read: nothing sent, and nothing left for the next read
        assert STORE.events_since(conn, 2, 10) == []
        assert "relay_positions" not in round_trips[-1]
        assert read_position(conn, "relay_positions", "orders-relay") == 1


def test_a_position_saved_again_replaces_the_last_on_either_database(database_for, backend):
    engine = make_engine(database_for("orders", backend))
    try:
        for position in (3, 5):
            save_relay_position(engine, "orders-relay", position, "2026-12-01T00:00:00Z")
            with engine.begin() as conn:
                save_position(conn, "consumer_positions", "dispatch", position * 10,
                              "2026-12-01T00:00:00Z")
        with read_only(engine) as conn:
            assert read_position(conn, "relay_positions", "orders-relay") == 5
            assert read_position(conn, "consumer_positions", "dispatch") == 50
            assert conn.execute(text("SELECT count(*) FROM relay_positions")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("events", [1, 3])
def test_an_append_whose_caller_needs_no_chain_reads_nothing_back(pg_engine, round_trips,
                                                                    events):
    unit = UnitOfWork(pg_engine)
    unit.conn  # noqa: B018 - checks a connection out
    round_trips.clear()
    drafts = STORE.append(unit.conn, "customer-a", 0,
                          [registered(n) for n in range(1, events + 1)], occurred_at=WHEN,
                          correlation_id="corr", causation_id="test", actor="system",
                          commit=True, chain=False)
    unit.commit()
    assert len(round_trips) == 1 and round_trips[0].endswith("; COMMIT")
    assert "RETURNING" not in round_trips[0]
    stored = _read(pg_engine)
    assert verify_chain(iter(stored)) == []
    # what it returns is what was stored, but for the three fields it says it leaves out
    assert [d[1:11] for d in drafts] == [e[1:11] for e in stored]
    assert {(d.global_position, d.prev_hash, d.hash) for d in drafts} == {(0, "", "")}


def test_a_conflict_is_still_caught_when_the_chain_is_not_read(pg_engine):
    unit = UnitOfWork(pg_engine)
    append(unit, "customer-a", 0, [registered(1)], commit=True)
    unit.commit()
    late = UnitOfWork(pg_engine)
    with pytest.raises(ConcurrencyConflict):
        STORE.append(late.conn, "customer-a", 0, [registered(2)], occurred_at=WHEN,
                     correlation_id="corr", causation_id="test", actor="system",
                     commit=True, chain=False)
    late.rollback()
    assert count(pg_engine) == 1


def _held_append(unit: UnitOfWork, stream_id: str, expected: int, new: list[NewEvent]) -> list:
    return STORE.append(unit.conn, stream_id, expected, new, occurred_at=WHEN,
                        correlation_id="corr", causation_id="test", actor="system",
                        chain=False)


def test_a_held_back_append_goes_with_the_next_statement_and_commit(pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    sql(unit.conn, "SELECT 1")  # BEGIN goes out with it
    hold_writes(unit.conn)
    round_trips.clear()
    _held_append(unit, "customer-a", 0, [registered(1)])
    _held_append(unit, "customer-b", 0, [registered(2)])
    assert round_trips == []  # nothing sent yet
    unit.commit()
    assert len(round_trips) == 1 and round_trips[0].endswith("; COMMIT")
    assert round_trips[0].count("pg_advisory_xact_lock") == 2
    assert verify_chain(iter(_read(pg_engine))) == [] and count(pg_engine) == 2


def test_held_back_writes_go_before_a_statement_sqlalchemy_runs(pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    sql(unit.conn, "SELECT 1")
    hold_writes(unit.conn)
    _held_append(unit, "customer-a", 0, [registered(1)])
    seen = unit.conn.execute(text("SELECT count(*) FROM events")).scalar()  # reads its writes
    assert seen == 1
    round_trips.clear()
    unit.commit()
    assert round_trips == ["COMMIT"] and count(pg_engine) == 1


def test_a_held_back_conflict_fails_the_commit_and_keeps_nothing(pg_engine):
    first = UnitOfWork(pg_engine)
    append(first, "customer-a", 0, [registered(1)], commit=True)
    first.commit()
    late = UnitOfWork(pg_engine)
    sql(late.conn, "SELECT 1")
    hold_writes(late.conn)
    _held_append(late, "customer-a", 0, [registered(2)])  # not at version 0 any more
    _held_append(late, "customer-b", 0, [registered(3)])
    with pytest.raises(IntegrityError):
        late.commit()
    assert count(pg_engine) == 1
    again = UnitOfWork(pg_engine)  # the connection is usable and its statements prepared anew
    append(again, "customer-b", 0, [registered(3)], commit=True)
    again.commit()
    assert count(pg_engine) == 2 and verify_chain(iter(_read(pg_engine))) == []


def test_held_back_writes_are_dropped_by_a_rollback(pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    sql(unit.conn, "SELECT 1")
    hold_writes(unit.conn)
    _held_append(unit, "customer-a", 0, [registered(1)])
    round_trips.clear()
    unit.rollback()
    assert round_trips == ["ROLLBACK"]
    unit = UnitOfWork(pg_engine)  # the same pooled connection: holds nothing, prepares again
    append(unit, "customer-a", 0, [registered(1)], commit=True)
    unit.commit()
    assert "PREPARE" in round_trips[-1] and count(pg_engine) == 1


def test_held_back_writes_that_fail_before_a_sqlalchemy_statement_are_prepared_again(
        pg_engine):
    def project(conn, drafts):  # noqa: ANN001 - fails before the insert is prepared
        sql(conn, "INSERT INTO order_requests (request_id, order_id) VALUES (?, ?)",
            ("r1", "o1"))

    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO order_requests (request_id, order_id) "
                          "VALUES ('r1', 'o1')"))
    late = UnitOfWork(pg_engine)  # a pooled connection on which nothing is prepared yet
    sql(late.conn, "SELECT 1")
    hold_writes(late.conn)
    STORE.append(late.conn, "customer-a", 0, [registered(1)], occurred_at=WHEN,
                 correlation_id="corr", causation_id="test", actor="system", chain=False,
                 project=project)
    with pytest.raises(IntegrityError):
        late.conn.execute(text("SELECT count(*) FROM events"))
    late.rollback()
    unit = UnitOfWork(pg_engine)  # the same connection: another read, then the insert
    STORE.events_since(unit.conn, 0, 1)
    append(unit, "customer-a", 0, [registered(1)], commit=True)
    unit.commit()
    assert count(pg_engine) == 1


class _Consumer:
    """What `deliver` uses of a service: its name, a worker's database and a clock."""

    name = "ledger"

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.db = WorkerDatabase(engine, STORE)
        self.clock = ManualClock()


def _copy(service: _Consumer, envelope: Envelope) -> None:
    """Not idempotent by itself: run again, its append meets the stream it wrote."""
    service.db.append(f"copy-{envelope.stream_id}", 0, [registered(2)], occurred_at=WHEN,
                      correlation_id=envelope.correlation_id, causation_id=envelope.event_id,
                      actor="system")


def test_a_delivery_is_one_round_trip_and_a_duplicate_is_refused_by_the_inbox(
        pg_engine, round_trips):
    unit = UnitOfWork(pg_engine)
    (envelope,) = append(unit, "customer-1", 0, [registered(1)], commit=True)
    unit.rollback()
    body = envelope.to_dict()
    consumer = _Consumer(pg_engine)
    round_trips.clear()
    assert deliver(consumer, _copy, "ledger.copy", "orders", body) == "handled"
    assert len(round_trips) == 1  # BEGIN, the append, the inbox record, COMMIT, what waits
    assert "INSERT INTO inbox" in round_trips[0] or "EXECUTE" in round_trips[0]
    assert count(pg_engine) == 2
    round_trips.clear()
    assert deliver(consumer, _copy, "ledger.copy", "orders", body) == "duplicate"
    # the refused run, its ROLLBACK, then the inbox asked (no transaction of its own)
    assert len(round_trips) == 3 and "FROM inbox" in round_trips[2]
    assert count(pg_engine) == 2
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM inbox")).scalar() == 1
