"""The orders domain as plain Python: no broker, no database."""

from __future__ import annotations

from datetime import date

import pytest

from contracts.errors import Conflict, NotFound, ValidationFailed
from contracts.registry import validate_event
from services.orders import domain
from services.orders.catalog import CATALOG

TODAY = date(2026, 11, 2)
ADDRESS = {"province": "四川省", "city": "成都市", "district": "武侯区", "street": "人民南路4段",
           "lat": 30.63, "lon": 104.07}


def model_of(category: str) -> str:
    return CATALOG.models(category)[0].code


def fault_of(category: str) -> str:
    return CATALOG.faults(category)[0].code


def product(category: str = "water_heater", purchased: date = date(2026, 1, 10)) -> dict:
    event = domain.register_product(CATALOG, "c1", "p1", {
        "model": model_of(category), "serial": " SN123 ", "purchase_date": purchased,
        "installation_date": None}, TODAY)
    validate_event(event.event_type, 1, event.payload)
    return event.payload


def customer() -> dict:
    event = domain.register_customer("c1", "  刘洋 ", "0086 139-1234-5678", ADDRESS)
    validate_event(event.event_type, 1, event.payload)
    return event.payload


def command(**overrides: object) -> dict:
    return {"order_type": "repair", "channel": "phone", "description": "漏水", "fault_code": None,
            "related_order_id": None, "request_id": None, **overrides}


@pytest.mark.parametrize("raw, normalised", [
    ("139 1234 5678", "13912345678"),
    ("+86 139-1234-5678", "13912345678"),
    ("8613912345678", "13912345678"),
    ("(020) 8888-1234", "02088881234"),
    ("400-810-0000", "4008100000"),
])
def test_phone_numbers_are_normalised_to_one_form(raw, normalised):
    assert domain.normalise_phone(raw) == normalised


@pytest.mark.parametrize("raw", ["", "12345", "2391234567a", "+1 415 555 0100 12"])
def test_a_string_that_is_not_a_phone_number_is_refused(raw):
    with pytest.raises(ValidationFailed) as caught:
        domain.normalise_phone(raw)
    assert caught.value.code == "invalid_phone" and "phone" in caught.value.fields


def test_a_repair_without_fault_code_is_not_ready_for_dispatch():
    event = domain.create_order(CATALOG, "o1", command(), customer(), product(), TODAY)
    validate_event(event.event_type, 1, event.payload)
    assert event.payload["status"] == "awaiting_fault"
    with_fault = domain.create_order(CATALOG, "o2", command(fault_code=fault_of("water_heater")),
                                     customer(), product(), TODAY)
    assert with_fault.payload["status"] == "created"


def test_non_repairs_need_no_fault_code():
    for order_type in ("install", "maintenance"):
        event = domain.create_order(CATALOG, "o1", command(order_type=order_type), customer(),
                                    product(), TODAY)
        assert event.payload["status"] == "created"


def test_free_text_is_not_a_fault_code():
    with pytest.raises(ValidationFailed) as caught:
        domain.create_order(CATALOG, "o1", command(fault_code="no hot water"), customer(),
                            product(), TODAY)
    assert caught.value.code == "unknown_fault_code"


def test_warranty_is_decided_at_intake_per_component_and_parts_and_labour():
    old = product("air_conditioner", purchased=date(2022, 6, 1))
    event = domain.create_order(CATALOG, "o1", command(fault_code=fault_of("air_conditioner")),
                                customer(), old, TODAY)
    by_component = {w["component"]: w for w in event.payload["warranty"]}
    assert by_component["unit"]["parts_covered"] is False
    assert event.payload["in_warranty"] is False
    assert any(w["parts_covered"] for c, w in by_component.items() if c != "unit"), \
        "a key part stays covered after the unit's warranty ends"
    assert any(w["parts_covered"] != w["labour_covered"] for w in by_component.values())


def test_a_new_product_is_in_warranty():
    event = domain.create_order(CATALOG, "o1", command(order_type="install"), customer(),
                                product(purchased=date(2026, 10, 30)), TODAY)
    assert event.payload["in_warranty"] is True


def test_a_complaint_must_name_the_order_it_is_about_and_goes_to_the_complaint_group():
    with pytest.raises(ValidationFailed):
        domain.create_order(CATALOG, "o2", command(order_type="complaint"), customer(),
                            product(), TODAY)
    earlier = domain.Order("o1", version=1, status="created", order_type="install",
                           product_id="p1")
    event = domain.create_order(CATALOG, "o2", command(order_type="complaint",
                                                       related_order_id="o1"),
                                customer(), product(), TODAY, related=earlier)
    assert event.payload["routed_to"] == "complaint_group"
    with pytest.raises(NotFound):
        domain.create_order(CATALOG, "o3", command(order_type="complaint",
                                                   related_order_id="nope"),
                            customer(), product(), TODAY, related=None)


def test_an_order_is_a_fold_of_its_events():
    created = domain.create_order(CATALOG, "o1", command(), customer(), product(), TODAY)
    order = domain.Order.fold("o1", [(created.event_type, created.payload)])
    fault = domain.record_fault(CATALOG, order, fault_of("water_heater"), product()["model"])
    order.apply(fault.event_type, fault.payload)
    assert (order.version, order.status, order.fault_code) == (2, "created",
                                                               fault_of("water_heater"))
    cancelled = domain.cancel_order(order, "customer_request", "")
    order.apply(cancelled.event_type, cancelled.payload)
    assert order.status == "cancelled"
    with pytest.raises(Conflict) as caught:
        domain.cancel_order(order, "duplicate", "")
    assert caught.value.code == "invalid_transition"


def test_only_a_repair_records_a_fault_and_not_after_it_is_under_way():
    install = domain.Order("o1", version=1, status="created", order_type="install")
    with pytest.raises(Conflict):
        domain.record_fault(CATALOG, install, fault_of("water_heater"), model_of("water_heater"))
    on_site = domain.Order("o2", version=4, status="on_site", order_type="repair")
    with pytest.raises(Conflict):
        domain.record_fault(CATALOG, on_site, fault_of("water_heater"), model_of("water_heater"))


def test_dates_in_the_future_and_unknown_models_are_refused():
    with pytest.raises(ValidationFailed):
        domain.register_product(CATALOG, "c1", "p1", {
            "model": model_of("gas_hob"), "serial": "x", "purchase_date": date(2027, 1, 1),
            "installation_date": None}, TODAY)
    with pytest.raises(ValidationFailed) as caught:
        domain.register_product(CATALOG, "c1", "p1", {
            "model": "NOPE-1", "serial": "x", "purchase_date": TODAY,
            "installation_date": None}, TODAY)
    assert caught.value.code == "unknown_model"


def test_customer_registration_trims_the_name_and_normalises_the_phone():
    payload = customer()
    assert payload["name"] == "刘洋" and payload["phone"] == "13912345678"
