"""Scenario 4: every event delivered twice, out of order, and then a third time in order.

While the load runs, a second publisher sends every new event of the four logs again, each
batch in reverse order; once it stops, every relay is moved back to where the scenario began
and publishes it all once more. The consumers' inboxes make every copy after the first a
no-op, and an event that overtook the one it depends on waits for it."""

from __future__ import annotations

import json
import signal

import eventlet
import pika
from sqlalchemy import text

from serviceloop.db import make_engine, save_position
from serviceloop.relay import event_exchange, message_properties
from serviceloop.services import IMPLEMENTED
from tests.faults.checks import assert_nothing_lost_or_doubled, settled_logs
from tests.faults.load import Load
from tests.helpers import wait_until

LOAD_SECONDS = 10


class Duplicator:
    """Publishes every event after `heads` again, each batch newest first."""

    def __init__(self, system, heads: dict[str, int]) -> None:  # noqa: ANN001
        self.system = system
        self.positions = dict(heads)
        self.published = 0
        self.running = True
        self.thread = eventlet.spawn(self._run)

    def stop(self) -> int:
        self.running = False
        self.thread.wait()
        return self.published

    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.system.env["AMQP_URI"]))
        channel = connection.channel()
        try:
            with self.system.rpc() as rpc:
                while self.running:
                    self._pass(rpc, channel)
                    eventlet.sleep(0.5)
                self._pass(rpc, channel)
        finally:
            connection.close()

    def _pass(self, rpc, channel) -> None:  # noqa: ANN001
        for service in IMPLEMENTED:
            batch = getattr(rpc, service).events_since(self.positions[service], 1000)
            for body in reversed(batch):
                channel.basic_publish(event_exchange(service), body["event_type"],
                                      json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                      message_properties(body))
                self.published += 1
            if batch:
                self.positions[service] = batch[-1]["global_position"]


def rewind_relays(system, heads: dict[str, int]) -> None:  # noqa: ANN001
    """Every relay stopped and its recorded position moved back to `heads`; `serviceloop up`
    starts them again, and they publish everything after it once more."""
    with system.supervisor_paused():
        for service in IMPLEMENTED:
            system.signal(f"{service}-relay", signal.SIGKILL)
        for service, position in heads.items():  # the lock died with the relay's session
            engine = make_engine(system.databases[service], pool_size=1)
            with engine.begin() as conn:
                save_position(conn, "relay_positions", f"{service}-relay", position,
                              "2000-01-01T00:00:00Z")
            engine.dispose()


def relay_position(system, service: str) -> int:  # noqa: ANN001
    engine = make_engine(system.databases[service], pool_size=1)
    with engine.connect() as conn:
        position = conn.execute(text("SELECT position FROM relay_positions WHERE relay = :r"),
                                {"r": f"{service}-relay"}).scalar()
    engine.dispose()
    return position


def test_events_delivered_twice_out_of_order_and_replayed_change_nothing(system, world):
    with system.rpc() as rpc:
        heads = {s: getattr(rpc, s).log_head()["position"] for s in IMPLEMENTED}
    with Load(system, world) as load:
        duplicator = Duplicator(system, heads)
        load.open_orders(LOAD_SECONDS)
        load.intake_done()
        settled_logs(system, load)
        published = duplicator.stop()
        with system.rpc() as rpc:
            ends = {s: getattr(rpc, s).log_head()["position"] for s in IMPLEMENTED}
        rewind_relays(system, heads)
        system.wait_ready()
        wait_until(lambda: all(relay_position(system, s) >= ends[s] for s in IMPLEMENTED),
                   timeout=60, message="the relays to publish the scenario again")
        wait_until(system.queues_drained, timeout=60, interval=0.5,
                   message="the consumers to take every copy")
        logs = assert_nothing_lost_or_doubled(system, load)
    assert published >= sum(len(log) for log in logs.values()) - sum(heads.values()) > 0
