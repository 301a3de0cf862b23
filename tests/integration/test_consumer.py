"""The consumer policy on a real broker: idempotent inbox, bounded retries, parking."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pika
import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import func, select, text

from contracts.errors import Conflict
from serviceloop.catchup import CatchUp
from serviceloop.consumer import ParkedMessagesRpc, consumes, park
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.nameko_deps import ClockProvider, Database
from serviceloop.relay import event_exchange, message_properties
from serviceloop.unit_of_work import UnitOfWork
from services.orders.projections import customers, events, metadata
from tests.helpers import wait_until

ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路9号",
           "lat": None, "lon": None}


class Ledger(ParkedMessagesRpc):
    """A consumer of orders' events whose effect is one row per handled event."""

    name = "ledger"
    db = Database("ledger", metadata)
    clock = ClockProvider()

    @consumes("orders", "customer_registered", attempts=3, backoff=0.01)
    def copy_customer(self, envelope) -> None:  # noqa: ANN001
        self.db.conn.execute(customers.insert().values(
            customer_id=str(uuid.uuid4()), name=envelope.payload["name"],
            phone=str(uuid.uuid4())[:30], province="p", city="c", district="d", street="s",
            registered_at=envelope.occurred_at))

    @consumes("orders", "order_cancelled", attempts=3, backoff=0.01)
    def always_fails(self, envelope) -> None:  # noqa: ANN001
        self.db.conn.execute(text("SELECT 1"))
        raise RuntimeError("this handler never succeeds")


@pytest.fixture
def ledger(container_factory, service_config, database_for, backend):
    url = database_for("orders", backend)
    container = container_factory(Ledger, service_config(ledger=url))
    container.start()
    with ServiceRpcProxy("ledger", container.config, timeout=20) as proxy:
        yield proxy, make_engine(url)


def envelopes_from_a_log(database_for, new_events):  # noqa: ANN001
    engine = make_engine(database_for("orders", "sqlite"))
    with engine.begin() as conn:
        out = EventStore(events).append(
            conn, "customer-1", 0, new_events, occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
            correlation_id="c1", causation_id="t", actor="system")
    engine.dispose()
    return [e.to_dict() for e in out]


def publish(broker_uri: str, bodies: list[dict]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(event_exchange("orders"), body["event_type"],
                              json.dumps(body).encode(), message_properties(body))
    connection.close()


def count_rows(engine, table) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_an_event_delivered_twice_is_applied_once(ledger, broker_uri, database_for):
    proxy, engine = ledger
    body = envelopes_from_a_log(database_for, [NewEvent("customer_registered", {
        "customer_id": "c1", "name": "李四", "phone": "13900000001", "address": ADDRESS})])[0]
    publish(broker_uri, [body, body, body])
    wait_until(lambda: count_rows(engine, customers) >= 1, message="the first delivery")
    with engine.connect() as conn:
        handled = wait_until(lambda: conn.execute(text(
            "SELECT COUNT(*) FROM inbox")).scalar(), message="the inbox record")
    # the duplicates are acknowledged too: the queue drains and nothing more is applied
    wait_until(lambda: _queue_empty(broker_uri, "evt-orders-customer_registered--ledger."
                                                "copy_customer"), message="the queue to drain")
    assert handled == 1
    assert count_rows(engine, customers) == 1
    assert proxy.parked_messages() == []


def test_a_handler_that_keeps_failing_is_parked_and_can_be_replayed(ledger, broker_uri,
                                                                   database_for):
    proxy, engine = ledger
    logged = envelopes_from_a_log(database_for, [
        NewEvent("customer_registered", {"customer_id": "c1", "name": "赵六",
                                         "phone": "13900000002", "address": ADDRESS}),
    ])
    cancelled = {**logged[0], "event_id": str(uuid.uuid4()), "event_type": "order_cancelled",
                 "payload": {"order_id": "o1", "reason": "duplicate", "note": "",
                             "previous_status": "created"}}
    publish(broker_uri, [cancelled])
    parked = wait_until(proxy.parked_messages, message="the message to be parked")
    assert len(parked) == 1
    assert parked[0]["attempts"] == 3 and parked[0]["consumer"] == "ledger.always_fails"
    assert "never succeeds" in parked[0]["error"]
    assert _queue_empty(broker_uri, "evt-orders-order_cancelled--ledger.always_fails")
    # the operator replays it: it fails again and is parked again, the first marked replayed
    assert proxy.replay_parked(parked[0]["id"]) == "parked"
    assert [p["id"] for p in proxy.parked_messages()] != [parked[0]["id"]]
    assert len(proxy.parked_messages(True)) == 2


def test_a_message_parked_under_a_consumers_old_name_is_replayed_to_its_consumer_now(
        ledger, database_for):
    proxy, engine = ledger
    registered = envelopes_from_a_log(database_for, [NewEvent("customer_registered", {
        "customer_id": "c1", "name": "孙八", "phone": "13900000004", "address": ADDRESS})])[0]
    unit = UnitOfWork(engine)
    # parked by an earlier release, whose consumer of customer_registered had another name
    renamed = park(unit, "ledger.copy_customer_v1", "orders", registered, "RuntimeError: then",
                   3, "2026-11-02T00:00:00Z")
    # and one of an event the ledger does not consume (any more)
    stray = park(unit, "ledger.copy_customer_v1", "callback", registered, "RuntimeError: then",
                 3, "2026-11-02T00:00:00Z")
    assert proxy.replay_parked(renamed) == "handled"
    with engine.connect() as conn:
        handled = conn.execute(text("SELECT consumer FROM inbox")).scalars().all()
    assert handled == ["ledger.copy_customer"]  # under its name now
    assert count_rows(engine, customers) == 1
    with pytest.raises(Conflict) as refused:
        proxy.replay_parked(stray)
    assert refused.value.code == "no_consumer"
    assert [p["id"] for p in proxy.parked_messages()] == [stray]  # still there for an operator


def test_a_malformed_message_is_parked_at_once(ledger, broker_uri):
    proxy, _ = ledger
    bad = {"event_id": str(uuid.uuid4()), "event_type": "customer_registered", "payload": {}}
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    connection.channel().basic_publish(
        event_exchange("orders"), "customer_registered", json.dumps(bad).encode(),
        pika.BasicProperties(content_type="application/json", delivery_mode=2))
    connection.close()
    parked = wait_until(proxy.parked_messages, message="the malformed message to be parked")
    assert parked[0]["attempts"] == 0 and parked[0]["error"].startswith("malformed")


def _queue_empty(broker_uri: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return declared.method.message_count == 0
    finally:
        connection.close()


class LateLedger(Ledger, CatchUp):
    """The same consumer, started only after its producer has published."""


def test_a_consumer_started_after_its_producer_published_still_gets_every_event(
        container_factory, service_config, database_for, backend, broker_uri):
    from services.orders.service import OrdersService

    orders_url, ledger_url = database_for("orders", backend), database_for("orders", backend)
    producer = container_factory(OrdersService, service_config(orders=orders_url))
    producer.start()
    with ServiceRpcProxy("orders", producer.config, timeout=20) as orders:
        for n in range(3):
            orders.register_customer({
                "name": f"迟到{n}", "phone": f"1360000000{n}", "agent_id": "a1",
                "address": ADDRESS, "products": []})
    # no queue existed when these were logged: only the producer's log has them
    consumer = container_factory(LateLedger, service_config(ledger=ledger_url))
    consumer.start()
    engine = make_engine(ledger_url)
    wait_until(lambda: count_rows(engine, customers) == 3, message="the catch-up")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT position FROM consumer_positions "
                                 "WHERE source = 'orders'")).scalar() == 3
    # the same events arriving late through the broker change nothing
    with ServiceRpcProxy("orders", producer.config, timeout=20) as orders:
        publish(broker_uri, orders.events_since(0, 10))
    wait_until(lambda: _queue_empty(broker_uri, "evt-orders-customer_registered--ledger."
                                                "copy_customer"), message="the queue to drain")
    assert count_rows(engine, customers) == 3
    engine.dispose()
