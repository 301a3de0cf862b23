"""Write RPCs asked again with the same request id: the first answer, no second effect
(serviceloop.answers), on a real broker and SQLite and PostgreSQL."""

from __future__ import annotations

import eventlet
import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import func, select

from contracts.errors import Conflict, ValidationFailed
from serviceloop.answers import ANSWERS_KEPT_DAYS
from serviceloop.db import make_engine
from services.dispatch.service import DispatchService
from services.orders.service import OrdersService
from services.settlement.service import SettlementService
from tests.integration.dispatch_system import ADDRESS, REGION, dispatch_config, free_port
from tests.integration.test_settlement import RATES

PARTNER = {"name": "天河家电维修", "regions": [REGION], "categories": ["water_heater"],
           "daily_capacity": 10, "rating": 4.0}


def count_events(url: str, event_type: str) -> int:
    from services.orders.projections import events  # the log's table is the same everywhere

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(events)
                                .where(events.c.event_type == event_type)).scalar()
    finally:
        engine.dispose()


@pytest.fixture
def dispatch(container_factory, service_config, database_for, backend):
    url = database_for("dispatch", backend)
    container = container_factory(DispatchService,
                                  dispatch_config(service_config, url, free_port()))
    container.start()
    with ServiceRpcProxy("dispatch", container.config, timeout=20) as proxy:
        yield proxy, url, container.config


@pytest.fixture
def orders(container_factory, service_config, database_for, backend):
    url = database_for("orders", backend)
    container = container_factory(OrdersService, service_config(orders=url))
    container.start()
    with ServiceRpcProxy("orders", container.config, timeout=20) as proxy:
        yield proxy, url


def test_a_partner_registered_again_with_its_request_id_is_the_same_partner(dispatch):
    proxy, url, _ = dispatch
    first = proxy.register_partner(PARTNER, request_id="reg-1")
    again = proxy.register_partner(PARTNER, request_id="reg-1")
    assert again == first  # the secret too: the first answer may never have arrived
    assert [p["partner_id"] for p in proxy.list_partners()] == [first["partner"]["partner_id"]]
    assert count_events(url, "partner_registered") == 1
    other = proxy.register_partner(PARTNER, request_id="reg-2")  # another request: another one
    assert other["partner"]["partner_id"] != first["partner"]["partner_id"]
    assert count_events(url, "partner_registered") == 2


def test_a_request_id_sent_with_other_arguments_is_refused_and_changes_nothing(dispatch):
    proxy, url, _ = dispatch
    first = proxy.register_partner(PARTNER, request_id="reg-1")
    with pytest.raises(Conflict) as refused:
        proxy.register_partner({**PARTNER, "daily_capacity": 11}, request_id="reg-1")
    assert refused.value.code == "request_id_reused"
    partner_id = first["partner"]["partner_id"]
    with pytest.raises(Conflict) as elsewhere:  # nor for another method
        proxy.rotate_secret(partner_id, request_id="reg-1")
    assert elsewhere.value.code == "request_id_reused"
    assert proxy.get_partner(partner_id)["secret_fingerprint"] \
        == first["partner"]["secret_fingerprint"]
    assert count_events(url, "partner_registered") == 1
    assert count_events(url, "partner_secret_rotated") == 0
    with pytest.raises(ValidationFailed):
        proxy.register_partner(PARTNER, request_id="")


def test_a_rotation_asked_again_is_not_a_second_rotation(dispatch):
    proxy, url, _ = dispatch
    partner_id = proxy.register_partner(PARTNER)["partner"]["partner_id"]
    first = proxy.rotate_secret(partner_id, request_id="rot-1")
    assert proxy.rotate_secret(partner_id, "system", request_id="rot-1") == first  # by position
    assert count_events(url, "partner_secret_rotated") == 1
    assert proxy.get_partner(partner_id)["secret_fingerprint"] == first["secret_fingerprint"]


def stored_answers(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql("SELECT answer FROM rpc_answers").scalars())
    finally:
        engine.dispose()


def test_a_secret_is_kept_once_and_shown_again_only_until_it_is_rotated(dispatch):
    proxy, url, _ = dispatch
    registered = proxy.register_partner(PARTNER, request_id="reg-1")
    partner_id = registered["partner"]["partner_id"]
    rotated = proxy.rotate_secret(partner_id, request_id="rot-1")
    assert rotated["secret"] != registered["secret"]
    answers = stored_answers(url)
    assert len(answers) == 2  # both answers kept, neither secret with them
    assert not [a for a in answers if registered["secret"] in a or rotated["secret"] in a]
    assert proxy.rotate_secret(partner_id, request_id="rot-1") == rotated
    with pytest.raises(Conflict) as stale:  # the registration's secret no longer works
        proxy.register_partner(PARTNER, request_id="reg-1")
    assert stale.value.code == "secret_rotated"
    again = proxy.rotate_secret(partner_id, request_id="rot-2")
    with pytest.raises(Conflict) as stale:
        proxy.rotate_secret(partner_id, request_id="rot-1")
    assert stale.value.code == "secret_rotated"
    assert proxy.rotate_secret(partner_id, request_id="rot-2") == again
    assert count_events(url, "partner_registered") == 1
    assert count_events(url, "partner_secret_rotated") == 2


def test_calls_with_one_request_id_at_the_same_time_register_one_partner(dispatch):
    _, url, config = dispatch

    def register(_: int) -> str:
        with ServiceRpcProxy("dispatch", config, timeout=20) as proxy:  # one per green thread
            return proxy.register_partner(PARTNER, request_id="reg-same")["partner"][
                "partner_id"]

    pool = eventlet.GreenPool(6)
    assert len(set(pool.imap(register, range(6)))) == 1
    assert count_events(url, "partner_registered") == 1


def test_an_answer_kept_past_its_time_is_forgotten_and_its_id_is_a_new_request(dispatch, clock):
    proxy, url, _ = dispatch
    old = proxy.register_partner(PARTNER, request_id="reg-old")
    clock.advance(days=ANSWERS_KEPT_DAYS - 1)
    recent = proxy.register_partner(PARTNER, request_id="reg-recent")
    clock.advance(days=2)
    assert proxy.forget_old_answers()["forgotten"] == 1
    assert proxy.register_partner(PARTNER, request_id="reg-recent") == recent
    again = proxy.register_partner(PARTNER, request_id="reg-old")
    assert again["partner"]["partner_id"] != old["partner"]["partner_id"]
    assert count_events(url, "partner_registered") == 3


def test_a_cancellation_asked_again_answers_as_the_first_time(orders):
    proxy, url = orders
    registered = proxy.register_customer({
        "name": "王小明", "phone": "138 0013 8000", "agent_id": "a7", "address": ADDRESS,
        "products": [{"model": "WH-E60A", "serial": "WH0000000001",
                      "purchase_date": "2026-03-01", "installation_date": "2026-03-05"}]},
        request_id="cust-1")
    assert proxy.register_customer({"name": "王小明", "phone": "138 0013 8000",
                                    "agent_id": "a7", "address": ADDRESS, "products": [
                                        {"model": "WH-E60A", "serial": "WH0000000001",
                                         "purchase_date": "2026-03-01",
                                         "installation_date": "2026-03-05"}]},
                                   request_id="cust-1") == registered
    order = proxy.create_order({"product_id": registered["products"][0]["product_id"],
                                "order_type": "install", "channel": "phone", "agent_id": "a7"})
    cancel = {"order_id": order["order_id"], "reason": "customer_request", "agent_id": "a7"}
    first = proxy.cancel_order(cancel, request_id="cancel-1")
    assert first["status"] == "cancelled"
    assert proxy.cancel_order(cancel, request_id="cancel-1") == first
    assert count_events(url, "order_cancelled") == 1
    assert count_events(url, "customer_registered") == 1
    with pytest.raises(Conflict) as without_id:  # without one, it is a second cancellation
        proxy.cancel_order(cancel)
    assert without_id.value.code == "invalid_transition"


def test_a_product_and_a_fault_recorded_again_are_recorded_once(orders):
    proxy, url = orders
    owner = proxy.register_customer({"name": "李娜", "phone": "139 0013 9000", "agent_id": "a7",
                                     "address": ADDRESS, "products": []})
    product = {"customer_id": owner["customer"]["customer_id"], "model": "WH-E60A",
               "serial": "WH0000000002", "purchase_date": "2026-03-01", "agent_id": "a7"}
    first = proxy.register_product(product, request_id="prod-1")
    assert proxy.register_product(product, request_id="prod-1") == first
    assert count_events(url, "product_registered") == 1
    order = proxy.create_order({"product_id": first["product_id"], "order_type": "repair",
                                "channel": "phone", "agent_id": "a7"})
    assert order["status"] == "awaiting_fault"
    code = next(f["code"] for f in proxy.catalog()["faults"] if f["category"] == "water_heater")
    fault = {"order_id": order["order_id"], "fault_code": code, "agent_id": "a7"}
    recorded = proxy.record_fault(fault, request_id="fault-1")
    assert recorded["fault_code"] == code
    assert proxy.record_fault(fault, request_id="fault-1") == recorded
    assert count_events(url, "order_fault_recorded") == 1


def test_a_partner_updated_again_with_its_request_id_is_updated_once(dispatch):
    proxy, url, _ = dispatch
    partner_id = proxy.register_partner(PARTNER)["partner"]["partner_id"]
    change = {"partner_id": partner_id, "daily_capacity": 12, "agent_id": "ho-1"}
    first = proxy.update_partner(change, request_id="upd-1")
    assert first["daily_capacity"] == 12
    assert proxy.update_partner(change, request_id="upd-1") == first
    assert count_events(url, "partner_updated") == 1
    assert proxy.get_partner(partner_id)["version"] == first["version"]


def test_a_rate_card_loaded_again_with_its_request_id_is_one_card(
        container_factory, service_config, database_for, backend):
    url = database_for("settlement", backend)
    container = container_factory(SettlementService, service_config(settlement=url))
    container.start()
    with ServiceRpcProxy("settlement", container.config, timeout=20) as proxy:
        first = proxy.load_rates(RATES, request_id="card-1")
        assert proxy.load_rates(RATES, agent_id="finance", request_id="card-1") == first
        assert count_events(url, "rate_card_loaded") == 1
