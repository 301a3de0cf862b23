"""Migrations and the broker topology that `make migrate` sets up."""

from __future__ import annotations

import json

import pika
import pytest
from alembic import command
from sqlalchemy import inspect, text

from contracts import subscriptions
from contracts.subscriptions import Subscription
from serviceloop.db import make_engine
from serviceloop.migrate import alembic_config, declare_broker_topology, upgrade


def test_the_orders_history_goes_down_to_nothing_and_up_again(orders_url):
    command.downgrade(alembic_config("orders", orders_url), "base")
    engine = make_engine(orders_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()  # inspect caches what it saw
    upgrade("orders", orders_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"events", "orders", "customers", "inbox", "parked_messages",
            "consumer_positions", "relay_positions"} <= tables



@pytest.mark.parametrize("service", ["orders", "dispatch", "callback", "settlement"])
def test_messages_parked_before_waiting_for_existed_are_found_by_it_after(
        database_for, backend, service):
    url = database_for(service, backend)
    previous = {"orders": "0003", "dispatch": "0001", "callback": "0002", "settlement": "0002"}
    command.downgrade(alembic_config(service, url), previous[service])
    engine = make_engine(url)
    parked = [("RetryLater: period not verified yet [waiting for order-b]", "order-a"),
              ("RetryLater: order not known yet", "order-c"),
              ("IntegrityError: something else", "order-d")]
    with engine.begin() as conn:
        for number, (error, order) in enumerate(parked):
            conn.execute(text(
                "INSERT INTO parked_messages (consumer, event_id, source, event_type, envelope, "
                "error, attempts, parked_at) VALUES ('c.m', :e, 'orders', 't', :b, :err, 5, "
                "'2026-12-01T00:00:00Z')"),
                {"e": f"event-{number}", "err": error,
                 "b": json.dumps({"correlation_id": order})})
    engine.dispose()
    upgrade(service, url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, correlation_id, waiting_for FROM "
                                 "parked_messages ORDER BY event_id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("event-0", "order-a", "order-b"),
                                        ("event-1", "order-c", "order-c"),
                                        ("event-2", None, None)]

def test_every_subscribed_queue_exists_and_is_bound_before_any_producer_runs(
        own_broker_uri, monkeypatch: pytest.MonkeyPatch):
    # a virtual host of its own: another test's messages left in that queue would count
    broker_uri = own_broker_uri
    monkeypatch.setattr(subscriptions, "SUBSCRIPTIONS", [
        Subscription("orders", "order_created", "dispatch", "on_order_created")])
    declared = declare_broker_topology(broker_uri)
    assert declared == ["evt-orders-order_created--dispatch.on_order_created"]
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("orders.events", "order_created", b"{}", mandatory=True)
    # routed, not dropped: the queue holds the message although no consumer ever ran
    assert channel.queue_declare(declared[0], passive=True).method.message_count == 1
    channel.queue_delete(declared[0])
    connection.close()


def test_dispatch_loads_are_counted_from_the_assignments_made_before_they_were_kept(
        database_for, backend):
    url = database_for("dispatch", backend)
    command.downgrade(alembic_config("dispatch", url), "0004")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO assignments (order_id, attempt, partner_id, day, active) VALUES"
            " ('o1', 1, 'p1', '2026-12-01', true), ('o2', 1, 'p1', '2026-12-01', true),"
            " ('o3', 1, 'p1', '2026-12-01', false), ('o3', 2, 'p2', '2026-12-01', true),"
            " ('o4', 1, 'p1', '2026-12-02', true)"))
    upgrade("dispatch", url)
    with engine.connect() as conn:
        loads = conn.execute(text("SELECT day, partner_id, active FROM partner_loads"
                                  " ORDER BY day, partner_id")).all()
    engine.dispose()
    assert [tuple(row) for row in loads] == [("2026-12-01", "p1", 2), ("2026-12-01", "p2", 1),
                                             ("2026-12-02", "p1", 1)]
