"""The command line when it gets no answer it can use, against a real RabbitMQ: a service that
fails, one that never ran, one that is stopped, a broker that is not there. Each is one JSON
error on stderr and an exit code saying whose it was, never a traceback or a hang."""

from __future__ import annotations

import json
import logging
import time

import pika
import pytest

from serviceloop.cli import FAILED, UNREACHED, main
from serviceloop.entrypoints import rpc
from tests.integration.dispatch_system import free_port


class BrokenOrders:
    """An orders service whose look-up fails, as a bug would make it."""

    name = "orders"

    @rpc
    def lookup(self, phone: str) -> dict:
        raise RuntimeError(f"the customer table is gone while looking up {phone}")


def error_of(capsys) -> dict:  # noqa: ANN001
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return json.loads(captured.err)["error"]


@pytest.fixture
def broker(own_broker_uri, monkeypatch):
    monkeypatch.setenv("AMQP_URI", own_broker_uri)
    monkeypatch.setenv("SERVICELOOP_RPC_TIMEOUT", "1.5")
    return own_broker_uri


def test_a_service_that_fails_is_exit_1_with_what_failed(broker, container_factory, capsys):
    container = container_factory(BrokenOrders, {"AMQP_URI": broker})
    container.start()
    assert main(["orders", "lookup", "13800000001"]) == FAILED
    error = error_of(capsys)
    assert error["code"] == "service_failed"
    assert "RuntimeError" in error["message"] and "13800000001" in error["message"]


def test_a_service_that_never_ran_is_named_and_py_amqp_stays_quiet(broker, capsys, caplog):
    caplog.set_level(logging.WARNING)
    assert main(["orders", "lookup", "13800000001"]) == UNREACHED
    error = error_of(capsys)
    assert error["code"] == "service_unknown" and "orders" in error["message"]
    # the broker's late ack of the returned request is not a second, cryptic warning
    assert not [r for r in caplog.records if r.name.startswith("amqp")]


def test_a_stopped_service_is_a_timeout_within_the_set_time(broker, capsys):
    # what a stopped service leaves: its durable RPC queue, with nobody consuming it
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        channel = connection.channel()
        channel.exchange_declare("nameko-rpc", exchange_type="topic", durable=True)
        channel.queue_declare("rpc-orders", durable=True)
        channel.queue_bind("rpc-orders", "nameko-rpc", routing_key="orders.*")
    finally:
        connection.close()
    started = time.monotonic()
    assert main(["orders", "lookup", "13800000001"]) == UNREACHED
    assert 1.5 <= time.monotonic() - started < 10
    error = error_of(capsys)
    assert error["code"] == "timeout"
    assert "1.5 s" in error["message"] and "--request-id" in error["message"]


def test_a_broker_that_is_not_there_is_said_without_its_password(monkeypatch, capsys):
    monkeypatch.setenv("AMQP_URI", f"amqp://guest:s3cret@127.0.0.1:{free_port()}/")
    started = time.monotonic()
    assert main(["orders", "lookup", "13800000001"]) == UNREACHED
    assert time.monotonic() - started < 30
    error = error_of(capsys)
    assert error["code"] == "broker_unreachable"
    assert "guest:**@127.0.0.1" in error["message"] and "s3cret" not in error["message"]
