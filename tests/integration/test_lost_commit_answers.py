"""A COMMIT whose answer was lost with its connection is found committed, not run twice.

Between a service and PostgreSQL sits a small proxy (tests/tcp_proxy.py) that lets the next
query carrying COMMIT through, lets PostgreSQL run it, and then closes the connection before
the answer reaches the service: the service cannot tell from the connection whether its work
was kept. Run again, the work would be done twice (or refused as already done); the unit of
work instead looks for the first event the transaction appended, on another connection.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from contracts.errors import ServiceUnavailable
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.nameko_deps import WorkerDatabase
from serviceloop.unit_of_work import LOOKUP_WAITS, read_only
from services.orders.projections import events
from services.orders.service import OrdersService
from tests.helpers import wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    running_system,
)
from tests.integration.test_orders_service import customer, water_heater
from tests.tcp_proxy import TcpProxy

WHEN = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def orders_db(database_for):
    """(direct URL, URL through a proxy that can lose a COMMIT's answer, the proxy)."""
    url = database_for("orders", "postgres")
    proxied, proxy = through_a_proxy(url)
    yield url, proxied, proxy
    proxy.close()


def through_a_proxy(url: str) -> tuple[str, TcpProxy]:
    """`url` through a new proxy that can lose a COMMIT's answer, and the proxy."""
    target = make_url(url)
    proxy = TcpProxy((target.host, target.port or 5432))
    return target.set(host="127.0.0.1", port=proxy.port).render_as_string(False), proxy


@pytest.fixture
def unit(orders_db):
    """(direct URL, a worker's unit of work through the proxy, the proxy)."""
    url, proxied, proxy = orders_db
    engine = make_engine(proxied, pool_size=2)
    yield url, WorkerDatabase(engine, EventStore(events)), proxy
    engine.dispose()


def registered(n: int) -> NewEvent:
    return NewEvent("customer_registered", {
        "customer_id": f"c{n}", "name": f"客户{n}", "phone": f"138{n:08d}",
        "address": {"province": "广东省", "city": "广州市", "district": "天河区",
                    "street": "中山路1号", "lat": None, "lon": None}})


def append(db: WorkerDatabase, stream: str, n: int, commit: bool) -> list:
    return db.append(stream, 0, [registered(n)], occurred_at=WHEN, correlation_id=stream,
                     causation_id="test", actor="system", commit=commit)


def logged(url: str, **where: str) -> list[str]:
    engine = make_engine(url, pool_size=1)
    try:
        with read_only(engine) as conn:
            query = select(events.c.event_id).order_by(events.c.global_position)
            for column, value in where.items():
                query = query.where(events.c[column] == value)
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def test_an_append_that_carried_its_commit_answers_as_committed_when_the_answer_is_lost(
        unit):
    url, db, proxy = unit
    proxy.lose_next_commit_answer()
    (draft,) = append(db, "customer-c1", 1, commit=True)
    assert proxy.commit_answer_lost()
    assert not db.active  # its transaction is over: whatever runs next opens a new one
    db.commit()  # nothing left to commit, and no error
    assert logged(url) == [draft.event_id]
    (second,) = append(db, "customer-c2", 2, commit=False)  # the unit of work goes on
    db.commit()
    assert logged(url) == [draft.event_id, second.event_id]


def test_a_commit_whose_answer_was_lost_is_not_an_error_when_its_append_is_in_the_log(
        unit):
    url, db, proxy = unit
    (draft,) = append(db, "customer-c1", 1, commit=False)
    proxy.lose_next_commit_answer()
    db.commit()
    assert proxy.commit_answer_lost()
    assert logged(url) == [draft.event_id]


def test_a_connection_lost_before_its_commit_ran_still_raises_and_keeps_nothing(unit):
    url, db, proxy = unit
    append(db, "customer-c1", 1, commit=False)
    proxy.cut()  # the connection goes before COMMIT is sent: nothing was committed
    proxy.restore()
    with pytest.raises(DBAPIError) as lost:
        db.commit()
    assert lost.value.connection_invalidated  # `transactional` runs such work again
    assert logged(url) == []


def test_a_lost_commit_is_looked_up_again_until_the_database_is_back(unit):
    url, db, proxy = unit
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            proxy.cut()  # the database is away when the look-up begins
        elif len(waits) == 3:
            proxy.restore()  # and back before the third try

    db.pause = pause
    proxy.lose_next_commit_answer()
    (draft,) = append(db, "customer-c1", 1, commit=True)
    assert waits == list(LOOKUP_WAITS[:3])
    assert logged(url) == [draft.event_id]


def test_a_commit_that_cannot_be_looked_up_is_an_unknown_outcome_after_a_bounded_wait(unit):
    url, db, proxy = unit
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        proxy.cut()  # the database stays away

    db.pause = pause
    proxy.lose_next_commit_answer()
    with pytest.raises(ServiceUnavailable) as unknown:
        append(db, "customer-c1", 1, commit=True)
    assert unknown.value.code == "outcome_unknown"
    assert waits == list(LOOKUP_WAITS)  # every try made, none more
    assert len(logged(url)) == 1  # it had committed: the caller must read before retrying


@pytest.fixture
def orders_through_proxy(container_factory, service_config, orders_db):
    url, proxied, proxy = orders_db
    container = container_factory(OrdersService, service_config(orders=proxied))
    container.start()
    with ServiceRpcProxy("orders", container.config, timeout=30) as rpc:
        yield rpc, url, proxy


def test_an_order_cancelled_once_answers_cancelled_though_its_commit_answer_was_lost(
        orders_through_proxy):
    rpc, url, proxy = orders_through_proxy
    product = water_heater(rpc.register_customer(customer()))
    order = rpc.create_order({"product_id": product["product_id"], "order_type": "install",
                              "channel": "phone", "agent_id": "a7", "request_id": "req-cancel-1"})
    proxy.lose_next_commit_answer(containing="order_cancelled")
    cancelled = rpc.cancel_order({"order_id": order["order_id"], "reason": "customer_request",
                                  "note": "moved house", "agent_id": "a7"})
    assert proxy.commit_answer_lost()
    # before: the work ran again on the cancelled order and answered invalid_transition
    assert cancelled["status"] == "cancelled"
    stream = f"order-{order['order_id']}"
    assert len(logged(url, stream_id=stream)) == 2  # created, cancelled once


def test_an_order_created_with_its_commit_answer_lost_is_answered_as_created(
        orders_through_proxy):
    rpc, url, proxy = orders_through_proxy
    product = water_heater(rpc.register_customer(customer()))
    proxy.lose_next_commit_answer(containing="order_created")
    order = rpc.create_order({"product_id": product["product_id"], "order_type": "install",
                              "channel": "phone", "agent_id": "a7", "request_id": "req-create-2"})
    assert proxy.commit_answer_lost()
    # before: run again, it met its own request id and answered "created": False
    assert order["created"] is True
    assert logged(url, event_type="order_created") == logged(
        url, stream_id=f"order-{order['order_id']}")  # one order, created once


@pytest.fixture
def proxied_dispatch(container_factory, service_config, database_for, broker_uri, clock):
    """Orders and dispatch (its database through a proxy), orders' relay: (system, proxy)."""
    dispatch_url = database_for("dispatch", "postgres")
    proxied, proxy = through_a_proxy(dispatch_url)
    try:
        with running_system(container_factory, service_config, broker_uri, clock,
                            database_for("orders", "postgres"), dispatch_url,
                            dispatch_reaches=proxied) as system:
            yield system, proxy
    finally:
        proxy.close()


def assigned_order(system: DispatchSystem, phone: str) -> tuple:
    partner = system.register_partner()
    order_id = system.repair(phone)
    wait_until(lambda: system.dispatch_status(order_id) == "assigned",
               message="the order to be assigned")
    return partner, order_id


def accept(system: DispatchSystem, partner, order_id: str, key: str):  # noqa: ANN001, ANN201
    return system.signed(partner, "POST", f"/api/v1/orders/{order_id}/accept", {}, key=key)


def accepts(system: DispatchSystem, order_id: str) -> int:
    return [e["event_type"] for e in system.dispatch.order_history(order_id)].count(
        "order_accepted")


def test_a_partner_action_whose_commit_answer_was_lost_is_answered_once_and_logged_once(
        proxied_dispatch):
    system, proxy = proxied_dispatch
    partner, order_id = assigned_order(system, "13800000031")
    proxy.lose_next_commit_answer(containing="order_accepted")
    accepted = accept(system, partner, order_id, "k-accept-lost")
    assert proxy.commit_answer_lost()
    # before: 500 (the failed action's clean-up met the dropped connection)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert accepts(system, order_id) == 1


def test_a_partner_action_whose_commit_never_arrived_is_503_and_may_be_sent_again(
        proxied_dispatch):
    system, proxy = proxied_dispatch
    partner, order_id = assigned_order(system, "13800000032")
    proxy.drop_next_commit(containing="order_accepted")
    refused = accept(system, partner, order_id, "k-accept-dropped")
    assert proxy.commit_dropped()
    assert refused.status_code == 503, refused.text  # before: 500
    assert refused.headers["Retry-After"]
    assert accepts(system, order_id) == 0  # nothing was kept
    again = accept(system, partner, order_id, "k-accept-dropped")
    assert again.status_code == 200, again.text
    assert accepts(system, order_id) == 1
