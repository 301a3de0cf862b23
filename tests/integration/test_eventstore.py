"""The shared event store against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from contracts.errors import ConcurrencyConflict, ContractViolation
from serviceloop.eventstore import EventStore, NewEvent, verify_chain
from serviceloop.projections import Projector
from services.orders.projections import events as events_table

WHEN = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ADDRESS = {"province": "广东省", "city": "广州市", "district": "天河区", "street": "中山路1号",
           "lat": None, "lon": None}


def registered(n: int) -> NewEvent:
    return NewEvent("customer_registered", {
        "customer_id": f"c{n}", "name": f"客户{n}", "phone": f"138{n:08d}", "address": ADDRESS})


def append(engine, stream: str, expected: int, count: int = 1, start: int = 0):
    store = EventStore(events_table)
    with engine.begin() as conn:
        return store.append(conn, stream, expected, [registered(start + i) for i in range(count)],
                            occurred_at=WHEN, correlation_id=stream, causation_id="test",
                            actor="system")


def read_all(engine) -> list:
    with engine.connect() as conn:
        return list(EventStore(events_table).replay(conn, batch=7))


def test_append_assigns_positions_versions_and_a_hash_chain(orders_engine):
    first = append(orders_engine, "customer-a", 0, count=2)
    second = append(orders_engine, "customer-b", 0)
    assert [e.global_position for e in first + second] == [1, 2, 3]
    assert [e.stream_version for e in first] == [1, 2]
    assert first[1].prev_hash == first[0].hash and second[0].prev_hash == first[1].hash
    stored = read_all(orders_engine)
    assert [e.to_dict() for e in stored] == [e.to_dict() for e in first + second]
    assert verify_chain(iter(stored)) == []


def test_a_stale_expected_version_is_a_typed_conflict(orders_engine):
    append(orders_engine, "customer-a", 0)
    with pytest.raises(ConcurrencyConflict) as caught:
        append(orders_engine, "customer-a", 0, start=5)
    assert caught.value.code == "concurrency_conflict"
    assert len(read_all(orders_engine)) == 1


def test_an_event_that_breaks_its_contract_is_never_appended(orders_engine):
    store = EventStore(events_table)
    bad = NewEvent("customer_registered", {"customer_id": "c1", "name": "x"})
    with pytest.raises(ContractViolation) as caught, orders_engine.begin() as conn:
        store.append(conn, "customer-x", 0, [bad], occurred_at=WHEN, correlation_id="x",
                     causation_id="t", actor="system")
    assert "phone" in caught.value.fields
    assert read_all(orders_engine) == []


@pytest.mark.parametrize("statement", [
    "UPDATE events SET actor = 'agent:mallory'",
    "DELETE FROM events",
])
def test_the_database_refuses_to_change_the_log(orders_engine, statement):
    append(orders_engine, "customer-a", 0)
    with pytest.raises(DatabaseError, match="append-only"), orders_engine.begin() as conn:
        conn.execute(text(statement))
    assert len(read_all(orders_engine)) == 1


def test_a_row_edited_behind_the_triggers_back_is_detected(orders_engine):
    append(orders_engine, "customer-a", 0, count=3)
    with orders_engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER events_no_update"))
        else:
            conn.execute(text("ALTER TABLE events DISABLE TRIGGER events_no_update_delete"))
        conn.execute(text("UPDATE events SET payload = replace(payload, '客户1', '客户9') "
                          "WHERE global_position = 2"))
    breaks = verify_chain(iter(read_all(orders_engine)))
    assert breaks == ["position 2: hash does not match the event's content"]


def test_concurrent_writers_to_one_stream_get_conflicts_not_overwrites(orders_engine):
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def writer(n: int) -> None:
        barrier.wait()
        try:
            append(orders_engine, "customer-race", 0, start=n)
            outcomes.append("ok")
        except ConcurrencyConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["conflict"] * 5 + ["ok"]
    assert [e.stream_version for e in read_all(orders_engine)] == [1]


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=12))
def test_interleaved_appends_leave_no_gaps_no_duplicates_and_replay_equals_live(
        database_for, backend, plan):
    """Writers in threads append to a few streams, each with the version it last saw."""
    from serviceloop.db import make_engine

    engine = make_engine(database_for("orders", backend))
    live: dict[str, list[str]] = {}
    lock = threading.Lock()
    conflicts = []

    def writer(stream_no: int, count: int, start: int) -> None:
        stream = f"customer-s{stream_no}"
        for _ in range(5):
            with lock:
                seen = len(live.get(stream, []))
            try:
                envelopes = append(engine, stream, seen, count=count, start=start)
            except ConcurrencyConflict:
                conflicts.append(stream)
                continue
            with lock:
                live.setdefault(stream, []).extend(e.event_id for e in envelopes)
            return

    threads = [threading.Thread(target=writer, args=(s, c, i * 10))
               for i, (s, c) in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = read_all(engine)
    engine.dispose()
    assert [e.global_position for e in stored] == list(range(1, len(stored) + 1))
    assert len({e.event_id for e in stored}) == len(stored)
    assert verify_chain(iter(stored)) == []
    replayed: dict[str, list[str]] = {}
    for e in stored:
        assert e.stream_version == len(replayed.get(e.stream_id, [])) + 1
        replayed.setdefault(e.stream_id, []).append(e.event_id)
    assert replayed == live


def test_positions_follow_commit_order_for_a_reader_tailing_the_log(orders_engine):
    """A slow transaction that appended first must not commit behind a later position."""
    if orders_engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time by construction (BEGIN IMMEDIATE)")
    store = EventStore(events_table)
    slow = orders_engine.connect()
    slow.begin()
    store.append(slow, "customer-slow", 0, [registered(1)], occurred_at=WHEN,
                 correlation_id="s", causation_id="t", actor="system")
    finished = threading.Event()

    def fast() -> None:
        append(orders_engine, "customer-fast", 0, start=2)
        finished.set()

    thread = threading.Thread(target=fast)
    thread.start()
    assert not finished.wait(0.5), "a second appender must wait for the first to commit"
    slow.commit()
    slow.close()
    thread.join(10)
    stored = read_all(orders_engine)
    assert [e.stream_id for e in stored] == ["customer-slow", "customer-fast"]


def test_read_models_rebuilt_from_the_log_come_out_identical(orders_engine):
    from services.orders.projections import projector

    store = EventStore(events_table)
    with orders_engine.begin() as conn:
        for n in range(4):
            envelopes = store.append(conn, f"customer-{n}", 0, [registered(n)], occurred_at=WHEN,
                                     correlation_id=str(n), causation_id="t", actor="system")
            projector.apply(conn, envelopes)
    with orders_engine.begin() as conn:
        before = projector.checksums(conn)
        assert projector.rebuild(conn, store) == 4
        after = projector.checksums(conn)
    assert before == after
    assert isinstance(projector, Projector)
