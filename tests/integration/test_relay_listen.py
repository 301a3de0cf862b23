"""A relay on PostgreSQL is told of appends (LISTEN/NOTIFY) instead of polling, and keeps
being told after its LISTEN connection is terminated."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import make_url, text

from serviceloop.db import make_engine, read_position
from serviceloop.eventstore import EventStore, NewEvent, notify_channel
from serviceloop.relay import Relay
from serviceloop.services import IMPLEMENTED
from services.orders.projections import events
from tests.helpers import wait_until

ADDRESS = {"province": "江苏省", "city": "南京市", "district": "鼓楼区", "street": "中山北路1号",
           "lat": None, "lon": None}
NEVER = 600.0  # a poll this slow never runs within a test: what arrives was notified
PROMPTLY = 5.0


def append_customer(engine, n: int) -> None:  # noqa: ANN001
    with engine.begin() as conn:
        EventStore(events).append(conn, f"customer-{n}", 0, [NewEvent("customer_registered", {
            "customer_id": f"c{n}", "name": "陈", "phone": f"137{n:08d}", "address": ADDRESS})],
            occurred_at=datetime(2026, 11, 2, tzinfo=UTC), correlation_id=f"c{n}",
            causation_id="t", actor="system")


@pytest.fixture
def orders_pg(database_for):
    engine = make_engine(database_for("orders", "postgres"))
    yield engine
    engine.dispose()


@pytest.fixture
def published(tap):
    """The positions of the orders events published, in delivery order."""
    return lambda: [event["global_position"] for event in tap()]


@pytest.fixture
def start_quiet_relay(orders_pg, broker_uri):
    """Starts an orders relay whose polls (listening or not) never come round within a test."""
    running = []

    def start() -> Relay:
        relay = Relay("orders", orders_pg, EventStore(events), broker_uri, idle_poll=NEVER,
                      listen_poll=NEVER)
        thread = threading.Thread(target=relay.run_forever, daemon=True)
        thread.start()
        running.append((relay, thread))
        return relay

    yield start
    for relay, thread in running:
        relay.stop()
        thread.join(20)
        assert not thread.is_alive()


@pytest.fixture
def quiet_relay(start_quiet_relay):
    return start_quiet_relay()


def listening_backends(engine) -> list[int]:  # noqa: ANN001
    """The pids of the sessions LISTENing on the orders log's channel."""
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d AND query = :q"),
            {"d": make_url(str(engine.url)).database,
             "q": f"LISTEN {notify_channel('orders')}"}).scalars())


def test_an_idle_relay_publishes_an_append_as_soon_as_it_is_committed(orders_pg, published,
                                                                        quiet_relay):
    append_customer(orders_pg, 1)  # read at start
    wait_until(lambda: published() == [1], timeout=30, message="the first event")
    wait_until(lambda: listening_backends(orders_pg), message="the relay to LISTEN")
    for n in (2, 3):  # idle each time: only a notification wakes it
        append_customer(orders_pg, n)
        wait_until(lambda n=n: published() == list(range(1, n + 1)), timeout=PROMPTLY,
                   message=f"event {n} without a poll")


def test_appends_made_while_a_window_is_in_flight_are_published_without_a_poll(
        orders_pg, published, quiet_relay):
    wait_until(lambda: listening_backends(orders_pg), message="the relay to LISTEN")
    for n in range(1, 201):  # one transaction each, as fast as they go: many land mid-window
        append_customer(orders_pg, n)
    wait_until(lambda: len(published()) >= 200, timeout=30, message="200 events without a poll")
    assert published() == list(range(1, 201))


def test_a_relay_whose_listen_connection_was_terminated_still_publishes(orders_pg, published,
                                                                          quiet_relay):
    append_customer(orders_pg, 1)
    wait_until(lambda: published() == [1], timeout=30, message="the first event")
    (first,) = wait_until(lambda: listening_backends(orders_pg), message="the relay to LISTEN")
    with orders_pg.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar()
    append_customer(orders_pg, 2)  # while no one listens: read when the loss is noticed
    wait_until(lambda: published() == [1, 2], timeout=PROMPTLY, message="the event after the cut")
    (second,) = wait_until(lambda: listening_backends(orders_pg), timeout=PROMPTLY,
                           message="the relay to LISTEN again")
    assert second != first
    append_customer(orders_pg, 3)
    wait_until(lambda: published() == [1, 2, 3], timeout=PROMPTLY,
               message="an event notified on the new connection")


@pytest.mark.parametrize("service", IMPLEMENTED)
def test_every_services_log_notifies_its_channel_once_per_commit(database_for, service):
    engine = make_engine(database_for(service, "postgres"))
    listener = engine.raw_connection()
    try:
        listener.driver_connection.autocommit = True
        with listener.driver_connection.cursor() as cursor:
            cursor.execute(f"LISTEN {notify_channel(service)}")
        with engine.begin() as conn:
            store = EventStore(events)
            for n in (1, 2):
                store.append(conn, f"customer-{n}", 0, [NewEvent("customer_registered", {
                    "customer_id": f"c{n}", "name": "陈", "phone": f"137{n:08d}",
                    "address": ADDRESS})], occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
                    correlation_id=f"c{n}", causation_id="t", actor="system")
            listener.driver_connection.poll()
            assert listener.driver_connection.notifies == []  # not before the commit
        notified = wait_until(lambda: listener.driver_connection.poll()
                              or listener.driver_connection.notifies, timeout=PROMPTLY,
                              message="a notification")
        assert [n.channel for n in notified] == [notify_channel(service)]
    finally:
        listener.invalidate()
        engine.dispose()


def recorded(engine) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return read_position(conn, "relay_positions", "orders-relay")


def test_an_idle_relay_records_its_position_with_its_next_read_and_when_it_stops(
        orders_pg, published, start_quiet_relay):
    # appended before the relay LISTENs: no notification of it can wake a second read
    append_customer(orders_pg, 1)
    quiet_relay = start_quiet_relay()
    wait_until(lambda: published() == [1], timeout=30, message="the first event")
    wait_until(lambda: listening_backends(orders_pg), message="the relay to LISTEN")
    assert recorded(orders_pg) == 0  # confirmed, not yet recorded: no round trip of its own
    append_customer(orders_pg, 2)
    wait_until(lambda: published() == [1, 2], timeout=PROMPTLY, message="the second event")
    assert recorded(orders_pg) == 1  # recorded by the read that found the second
    quiet_relay.stop()
    wait_until(lambda: recorded(orders_pg) == 2, timeout=PROMPTLY,
               message="the relay to record its last window as it stops")
