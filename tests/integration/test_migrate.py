"""Migrations and the broker topology that `make migrate` sets up."""

from __future__ import annotations

import pika
import pytest
from alembic import command
from sqlalchemy import inspect

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
