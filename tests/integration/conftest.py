"""Fixtures of the integration tests that start the system as real processes."""

from __future__ import annotations

import json
import subprocess
import uuid
from urllib.parse import quote, urlparse, urlunparse

import pika
import pytest


@pytest.fixture
def quorum_vhost(broker_uri, monkeypatch):
    """A vhost of this test's own: its queues are quorum queues, unlike the run's shared vhost."""
    vhost = f"sl-replicas-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*",
                    ".*"], check=True, capture_output=True)
    monkeypatch.setenv("QUEUE_TYPE", "quorum")
    yield urlunparse(urlparse(broker_uri)._replace(path="/" + quote(vhost, safe="")))
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture
def tap(broker_uri):
    """A queue bound to every orders event, read in delivery order."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.exchange_declare("orders.events", exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "orders.events", routing_key="#")
    received: list[dict] = []

    def drain() -> list[dict]:
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return received
            assert properties.content_type == "application/json"
            received.append(json.loads(body))
            drain.delivery_modes.append(properties.delivery_mode)

    drain.delivery_modes = []  # each message's, in the same order
    yield drain
    connection.close()
