"""The outbox relay as its own process, on a real broker: in order, at least once, after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from services.orders.projections import events
from tests.helpers import wait_until

ADDRESS = {"province": "江苏省", "city": "南京市", "district": "鼓楼区", "street": "中山北路1号",
           "lat": None, "lon": None}


def append_customers(url: str, count: int, start: int = 0) -> None:
    engine = make_engine(url)
    store = EventStore(events)
    with engine.begin() as conn:
        for n in range(start, start + count):
            store.append(conn, f"customer-{n}", 0, [NewEvent("customer_registered", {
                "customer_id": f"c{n}", "name": "陈", "phone": f"137{n:08d}",
                "address": ADDRESS})], occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
                correlation_id=f"c{n}", causation_id="t", actor="system")
    engine.dispose()


@pytest.fixture
def relay_process(broker_uri, orders_url):
    processes = []

    def start(window: int = 2000) -> subprocess.Popen:
        env = {**os.environ, "AMQP_URI": broker_uri, "DATABASE_URL_ORDERS": orders_url,
               "RELAY_WINDOW": str(window), "LOG_LEVEL": "WARNING"}
        process = subprocess.Popen([sys.executable, "-m", "serviceloop.cli", "relay", "orders"],
                                   env=env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


def positions(messages: list[dict]) -> list[int]:
    return [m["global_position"] for m in messages]


def test_events_committed_while_no_relay_ran_are_published_in_order(orders_url, tap,
                                                                   relay_process):
    append_customers(orders_url, 120)  # committed, not yet published: as after a crash
    relay = relay_process(window=25)
    received = wait_until(lambda: len(tap()) >= 120 and tap(), message="120 events")
    assert positions(received) == list(range(1, 121))
    assert received[0]["event_type"] == "customer_registered"
    append_customers(orders_url, 5, start=200)
    received = wait_until(lambda: len(tap()) >= 125 and tap(), message="the later 5 events")
    assert positions(received) == list(range(1, 126))
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0


def test_a_relay_killed_mid_window_publishes_everything_after_restart(orders_url, tap,
                                                                    relay_process):
    append_customers(orders_url, 3000)
    first = relay_process(window=100)
    wait_until(lambda: len(tap()) >= 300, message="the relay to be under way")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    relay_process(window=100)
    received = wait_until(lambda: set(positions(tap())) >= set(range(1, 3001)) and tap(),
                          timeout=60, message="every committed event")
    seen = positions(received)
    # at least once, and in order: each redelivery restarts from a confirmed position
    first_sightings = list(dict.fromkeys(seen))
    assert first_sightings == list(range(1, 3001))
    assert len(seen) - 3000 < 200  # at most the unconfirmed windows again


def test_events_go_out_transient_the_log_is_what_keeps_them(orders_url, tap, relay_process):
    """The broker is transport: it is not asked to write events to disk (a consumer's
    catch-up brings from the log any event the broker loses)."""
    append_customers(orders_url, 3)
    relay = relay_process()
    wait_until(lambda: len(tap()) >= 3, message="3 events")
    assert tap.delivery_modes == [1, 1, 1]
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0
