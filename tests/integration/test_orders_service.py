"""The orders service through nameko's own test helpers, on a real broker and database."""

from __future__ import annotations

import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import func, select

from contracts.errors import Conflict, NotFound, ValidationFailed
from serviceloop.db import make_engine
from services.orders.projections import events
from services.orders.service import OrdersService


def customer(phone: str = "138 0013 8000", **products) -> dict:
    return {
        "name": "王小明", "phone": phone, "agent_id": "a7",
        "address": {"province": "广东省", "city": "广州市", "district": "天河区",
                    "street": "中山大道100号", "lat": 23.13, "lon": 113.33},
        "products": [
            {"model": "WH-E60A", "serial": "WH0000000001", "purchase_date": "2026-03-01",
             "installation_date": "2026-03-05"},
            {"model": "AC-K35A", "serial": "AC0000000001", "purchase_date": "2019-05-01",
             "installation_date": "2019-05-03"},
        ],
    }


def water_heater(registered: dict) -> dict:
    return next(p for p in registered["products"] if p["model"] == "WH-E60A")


@pytest.fixture
def orders(container_factory, service_config, orders_url):
    container = container_factory(OrdersService, service_config(orders=orders_url))
    container.start()
    with ServiceRpcProxy("orders", container.config, timeout=20) as proxy:
        yield proxy


def log_length(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(events)).scalar()
    engine.dispose()
    return count


def test_a_caller_is_found_by_phone_with_products_warranty_and_orders(orders):
    product = water_heater(orders.register_customer(customer()))
    order = orders.create_order({"product_id": product["product_id"], "order_type": "install",
                                 "channel": "phone", "agent_id": "a7"})
    found = orders.lookup("+86 138-0013-8000")
    assert found["customer"]["phone"] == "13800138000"
    assert found["customer"]["address"]["district"] == "天河区"
    by_model = {p["model"]: p for p in found["products"]}
    assert by_model["WH-E60A"]["in_warranty_today"] is True
    assert by_model["AC-K35A"]["in_warranty_today"] is False
    components = {w["component"] for w in by_model["AC-K35A"]["warranty"]}
    assert "unit" in components and len(components) > 1
    assert [o["order_id"] for o in found["orders"]] == [order["order_id"]]
    assert found["orders"][0]["status"] == "created"


def test_a_repair_without_a_fault_code_waits_until_one_is_recorded(orders):
    product = water_heater(orders.register_customer(customer()))
    order = orders.create_order({"product_id": product["product_id"], "order_type": "repair",
                                 "channel": "web", "description": "没有热水", "agent_id": "a7"})
    assert order["status"] == "awaiting_fault"
    fault = next(f for f in orders.catalog()["faults"] if f["category"] == "water_heater")
    updated = orders.record_fault({"order_id": order["order_id"], "fault_code": fault["code"],
                                   "agent_id": "a7"})
    assert updated["status"] == "created" and updated["fault_code"] == fault["code"]
    history = orders.order_history(order["order_id"])
    assert [e["event_type"] for e in history] == ["order_created", "order_fault_recorded"]
    assert history[1]["actor"] == "agent:a7"


def test_create_order_is_safe_to_retry_and_a_second_open_order_returns_the_first(orders):
    product = water_heater(orders.register_customer(customer()))
    command = {"product_id": product["product_id"], "order_type": "maintenance",
               "channel": "phone", "agent_id": "a7", "request_id": "req-0000001"}
    first = orders.create_order(command)
    again = orders.create_order(command)
    other_request = orders.create_order({**command, "request_id": "req-0000002"})
    assert first["created"] is True
    assert again["created"] is False and again["order_id"] == first["order_id"]
    assert other_request["order_id"] == first["order_id"]
    assert orders.list_orders({"product_id": product["product_id"]})["total"] == 1


def test_cancel_before_completion_then_a_new_order_may_be_opened(orders):
    product = water_heater(orders.register_customer(customer()))
    command = {"product_id": product["product_id"], "order_type": "install",
               "channel": "dealer", "agent_id": "a7"}
    first = orders.create_order(command)
    cancelled = orders.cancel_order({"order_id": first["order_id"], "reason": "customer_request",
                                     "agent_id": "a7"})
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "customer_request"
    with pytest.raises(Conflict) as caught:
        orders.cancel_order({"order_id": first["order_id"], "reason": "duplicate",
                             "agent_id": "a7"})
    assert caught.value.code == "invalid_transition"
    assert orders.create_order(command)["order_id"] != first["order_id"]


def test_a_complaint_is_linked_and_routed_to_the_complaint_group(orders):
    product = water_heater(orders.register_customer(customer()))
    earlier = orders.create_order({"product_id": product["product_id"], "order_type": "install",
                                   "channel": "phone", "agent_id": "a7"})
    complaint = orders.file_complaint({"order_id": earlier["order_id"], "channel": "phone",
                                       "description": "师傅迟到两小时", "agent_id": "a7"})
    assert complaint["order_type"] == "complaint"
    assert complaint["related_order_id"] == earlier["order_id"]
    assert complaint["routed_to"] == "complaint_group"
    with pytest.raises(ValidationFailed) as caught:
        orders.create_order({"product_id": product["product_id"], "order_type": "complaint",
                             "channel": "phone", "agent_id": "a7"})
    assert "related_order_id" in caught.value.fields


def test_orders_are_listed_by_status_and_phone_in_pages(orders):
    product_ids = [p["product_id"] for p in orders.register_customer(customer())["products"]]
    for product_id in product_ids:
        for order_type in ("install", "maintenance"):
            orders.create_order({"product_id": product_id, "order_type": order_type,
                                 "channel": "phone", "agent_id": "a7"})
    page1 = orders.list_orders({"phone": "13800138000", "page_size": 3})
    page2 = orders.list_orders({"phone": "13800138000", "page_size": 3, "page": 2})
    assert page1["total"] == 4 and len(page1["items"]) == 3 and len(page2["items"]) == 1
    ids = {o["order_id"] for o in page1["items"] + page2["items"]}
    assert len(ids) == 4
    assert orders.list_orders({"status": "cancelled"})["total"] == 0


@pytest.mark.parametrize("payload, field", [
    ({"order_type": "repair", "channel": "phone", "agent_id": "a7"}, "product_id"),
    ({"product_id": "p", "order_type": "teleport", "channel": "phone", "agent_id": "a7"},
     "order_type"),
    ({"product_id": "p", "order_type": "repair", "channel": "fax", "agent_id": "a7"}, "channel"),
    ({"product_id": "p", "order_type": "repair", "channel": "phone", "agent_id": "a7",
      "status": "settled"}, "status"),
])
def test_bad_payloads_raise_field_errors_and_change_nothing(orders, orders_url, payload, field):
    before = log_length(orders_url)
    with pytest.raises(ValidationFailed) as caught:
        orders.create_order(payload)
    assert field in caught.value.fields and caught.value.code == "invalid_input"
    assert log_length(orders_url) == before


def test_unknown_things_are_named_not_found(orders):
    with pytest.raises(NotFound) as caught:
        orders.lookup("13900000000")
    assert caught.value.code == "customer_not_found"
    with pytest.raises(NotFound):
        orders.get_order("no-such-order")
    with pytest.raises(ValidationFailed) as bad_phone:
        orders.lookup("12")
    assert bad_phone.value.code == "invalid_phone"


def test_a_fault_code_of_another_category_is_refused(orders):
    product = water_heater(orders.register_customer(customer()))  # a water heater
    other = next(f for f in orders.catalog()["faults"] if f["category"] != "water_heater")
    with pytest.raises(ValidationFailed) as caught:
        orders.create_order({"product_id": product["product_id"], "order_type": "repair",
                             "channel": "phone", "fault_code": other["code"], "agent_id": "a7"})
    assert caught.value.code == "unknown_fault_code"


def test_a_second_customer_with_the_same_phone_is_refused(orders):
    orders.register_customer(customer())
    with pytest.raises(Conflict) as caught:
        orders.register_customer(customer(phone="13800138000"))
    assert caught.value.code == "customer_exists"


def test_a_product_registered_again_is_the_same_product_and_other_dates_are_refused(
        orders, orders_url):
    owner = orders.register_customer(customer())["customer"]["customer_id"]
    fridge = {"customer_id": owner, "model": "WH-E60A", "serial": " WH0000000777 ",
              "purchase_date": "2026-06-01", "installation_date": None, "agent_id": "a7"}
    first = orders.register_product(fridge)
    logged = log_length(orders_url)
    again = orders.register_product({**fridge, "serial": "WH0000000777"})  # a retry
    assert again["product_id"] == first["product_id"]
    assert log_length(orders_url) == logged  # nothing appended
    serials = [p["serial"] for p in orders.lookup("13800138000")["products"]]
    assert serials.count("WH0000000777") == 1
    with pytest.raises(Conflict) as caught:
        orders.register_product({**fridge, "purchase_date": "2026-06-02"})
    assert caught.value.code == "product_exists"
    assert caught.value.fields == {"serial": [first["product_id"]]}
    assert log_length(orders_url) == logged


def test_the_log_is_readable_through_events_since_and_stream(orders):
    registered = orders.register_customer(customer())
    first = orders.events_since(0, 2)
    rest = orders.events_since(first[-1]["global_position"], 100)
    assert [e["global_position"] for e in first + rest] == [1, 2, 3]
    stream = orders.stream(f"customer-{registered['customer']['customer_id']}")
    assert [e["event_type"] for e in stream] == ["customer_registered", "product_registered",
                                                 "product_registered"]
    assert orders.log_head()["hash"] == rest[-1]["hash"]
    with pytest.raises(ValidationFailed):
        orders.events_since(-1, 10)


def test_events_since_reads_only_the_types_asked_for_in_every_form(orders):
    orders.register_customer(customer())
    products = orders.events_since(0, 100, event_types=["product_registered"])
    assert [e["global_position"] for e in products] == [2, 3]
    raw = orders.events_since(0, 100, raw=True, event_types=["customer_registered"])
    assert [(e["global_position"], e["event_type"]) for e in raw] == \
        [(1, "customer_registered")]
    assert orders.events_since(0, 100, event_types=["order_created"]) == []
    for wrong in ("product_registered", [1]):
        with pytest.raises(ValidationFailed):
            orders.events_since(0, 100, event_types=wrong)


def test_orders_about_one_event_are_read_in_chunks_and_all_found(orders_url, monkeypatch):
    from services.orders import queries
    from services.orders.projections import orders as orders_table

    engine = make_engine(orders_url)
    row = dict(order_type="repair", channel="phone", status="verified", routed_to="dispatch",
               customer_id="c", product_id="p", phone="13900000000", district="天河区",
               category="water_heater", model="WH-E60A", serial="s", description="d",
               in_warranty=True, warranty="{}", created_at="2026-11-02T09:00:00Z",
               updated_at="2026-11-02T09:00:00Z", version=3)
    ids = [f"o-{n:02d}" for n in range(7)]
    with engine.begin() as conn:
        conn.execute(orders_table.insert(), [{**row, "order_id": i} for i in ids])
    monkeypatch.setattr(queries, "_IN_CHUNK", 3)
    with engine.begin() as conn:
        found = queries.orders_to_follow(conn, [*reversed(ids), "o-missing"])
    engine.dispose()
    assert sorted(found) == ids
    assert {(o.status, o.version) for o in found.values()} == {("verified", 3)}
