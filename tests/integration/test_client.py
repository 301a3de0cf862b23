"""The command lines' and simulations' RPC proxy (serviceloop.client) against a real broker."""

from __future__ import annotations

import uuid

import pika
import pytest
from nameko.exceptions import UnknownService

from serviceloop.client import cluster


@pytest.fixture
def requests_to(own_broker_uri, monkeypatch):
    """A queue that receives every RPC request to a service named here (none runs), and
    the proxy pointed at the same vhost."""
    monkeypatch.setenv("AMQP_URI", own_broker_uri)
    service = f"probe_{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(own_broker_uri))
    channel = connection.channel()
    channel.exchange_declare("nameko-rpc", exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "nameko-rpc", routing_key=f"{service}.*")

    def take() -> tuple[pika.BasicProperties, bytes] | None:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        return None if method is None else (properties, body)

    take.service = service
    yield take
    connection.close()


def test_requests_go_out_transient_and_confirmed(requests_to):
    """A request is not written to the broker's disk (a retry with the same request id is
    what survives a broker restart), but the publish is still confirmed: a service nobody
    runs is an error at once, not a wait for the timeout."""
    with cluster(timeout=5) as rpc:
        getattr(rpc, requests_to.service).ping.call_async()  # published and confirmed
        properties, body = requests_to()
        assert properties.delivery_mode == 1
        assert properties.reply_to and properties.correlation_id
        assert b'"args"' in body
        with pytest.raises(UnknownService):
            rpc.nobody_runs_this.ping()
