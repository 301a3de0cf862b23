"""A catch-up pass delivers again only what the consumer's inbox has not seen, and asks the
producer only for the event types it subscribes to; passes share one RPC proxy until a
producer cannot be asked (serviceloop/catchup.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from sqlalchemy import text

import serviceloop.catchup as catchup
from serviceloop.clock import ManualClock
from serviceloop.db import make_engine
from serviceloop.entrypoints import rpc
from serviceloop.unit_of_work import read_only

HANDLER = ("copy_customer", object())  # (method name, handler): deliver is recorded, not run


class Producer:
    """The producer's `events_since` RPC over a fixed log, recording what it was asked."""

    def __init__(self, log: list[dict]) -> None:
        self.log = log
        self.asked: list[tuple] = []

    def events_since(self, position: int, limit: int, event_types=None) -> list[dict]:  # noqa: ANN001
        self.asked.append((position, limit, event_types))
        found = [e for e in self.log if e["global_position"] > position
                 and (event_types is None or e["event_type"] in event_types)]
        return found[:limit]


def _event(position: int, event_type: str = "customer_registered") -> dict:
    return {"global_position": position, "event_id": f"e{position}", "event_type": event_type}


@pytest.fixture
def service(orders_url):
    engine = make_engine(orders_url)
    yield SimpleNamespace(name="ledger", clock=ManualClock(),
                          db=SimpleNamespace(reader=lambda: read_only(engine),
                                             transaction=engine.begin),
                          engine=engine)
    engine.dispose()


def _handled(engine, *event_ids: str) -> None:  # noqa: ANN001
    with engine.begin() as conn:
        for event_id in event_ids:
            conn.execute(text("INSERT INTO inbox (consumer, event_id, source, event_type, "
                              "handled_at) VALUES ('ledger.copy_customer', :e, 'orders', "
                              "'customer_registered', '2026-12-06T09:00:00Z')"), {"e": event_id})


def test_only_events_the_inbox_has_not_seen_are_delivered_again(service, monkeypatch):
    delivered: list[str] = []
    monkeypatch.setattr(catchup, "deliver", lambda _s, _h, consumer, _src, body:
                        delivered.append(f"{consumer}:{body['event_id']}"))
    _handled(service.engine, "e1", "e3")  # the broker brought these two already
    producer = Producer([_event(1), _event(2, "order_cancelled"), _event(3), _event(4)])
    count = catchup._catch_up_with(service, SimpleNamespace(orders=producer), "orders",
                                   {"customer_registered": [HANDLER]}, lambda: False)
    assert delivered == ["ledger.copy_customer:e4"] and count == 1
    assert producer.asked == [(0, catchup.PAGE, ["customer_registered"])]
    with read_only(service.engine) as conn:  # how far it got: the last event it was given
        assert conn.execute(text("SELECT position FROM consumer_positions "
                                 "WHERE source = 'orders'")).scalar() == 4


def test_a_page_the_inbox_has_all_of_delivers_nothing(service, monkeypatch):
    delivered: list[str] = []
    monkeypatch.setattr(catchup, "deliver", lambda *args: delivered.append(args))
    _handled(service.engine, "e1", "e2")
    producer = Producer([_event(1), _event(2)])
    count = catchup._catch_up_with(service, SimpleNamespace(orders=producer), "orders",
                                   {"customer_registered": [HANDLER]}, lambda: False)
    assert (delivered, count) == ([], 0)


def producer_logs(config: dict) -> catchup.ProducerLogs:
    """A service container's ProducerLogs, set up as nameko would (it is its own dependency)."""
    logs = catchup.ProducerLogs()
    logs.container = SimpleNamespace(config=config)
    logs.setup()
    assert logs.get_dependency(None) is logs
    return logs


class Alpha:
    name = "catchup_alpha"

    @rpc
    def events_since(self, position: int, limit: int = 1000, event_types=None) -> list:  # noqa: ANN001
        return []


class Beta(Alpha):
    name = "catchup_beta"


def test_passes_share_one_proxy_until_a_producer_cannot_be_asked(
        service, monkeypatch, container_factory, service_config):
    opened: list[object] = []

    class CountedProxy(catchup.ClusterRpcProxy):
        def start(self):  # noqa: ANN202
            opened.append(self)
            return super().start()

    monkeypatch.setattr(catchup, "ClusterRpcProxy", CountedProxy)
    monkeypatch.setattr(catchup, "subscribed_handlers", lambda _cls: {
        "catchup_alpha": {"customer_registered": [HANDLER]},
        "catchup_beta": {"customer_registered": [HANDLER]}})
    config = service_config()
    alpha, beta = container_factory(Alpha, config), container_factory(Beta, config)
    alpha.start()
    beta.start()
    logs = producer_logs(config)

    def passes(count: int) -> None:
        for _ in range(count):
            catchup.catch_up(service, logs)

    passes(3)
    assert len(opened) == 1 and not logs.trouble.failing  # one proxy for three passes
    beta.kill()
    passes(2)  # beta away (its queue stays: calls time out); each failed pass renews the proxy
    assert len(opened) == 2 and set(logs.trouble.failing) == {"catchup_beta"}
    beta = container_factory(Beta, config)
    beta.start()
    passes(3)  # beta back: a new proxy, then kept
    assert len(opened) == 3 and not logs.trouble.failing
    logs.stop()
    assert logs._proxy is None


def test_a_producer_that_is_not_running_is_reported_by_the_pass_not_by_amqp(
        service, monkeypatch, service_config, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(catchup, "subscribed_handlers", lambda _cls: {
        "catchup_nobody": {"customer_registered": [HANDLER]}})
    logs = producer_logs(service_config())
    for _ in range(3):
        catchup.catch_up(service, logs)
    logs.stop()
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.WARNING]
    # one warning from the pass; none from py-amqp for the broker's late ack of each request
    # it returned as unroutable
    assert said == [("serviceloop.catchup", "WARNING", "ledger could not catch up with "
                     "catchup_nobody (1 pass failed): Unknown service `catchup_nobody`")]
    logging.getLogger("amqp").warning("Received method %s during closing channel %s. "
                                      "This method will be ignored", (20, 40), 1)
    assert caplog.records[-1].name == "amqp"  # only that one method is quietened
