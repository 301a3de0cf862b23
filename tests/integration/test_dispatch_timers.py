"""Dispatch's timers with a moved clock, re-dispatch, escalation, a person assigning, and the
orders that never reach a partner."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import eventlet
import pytest

from contracts.errors import Conflict
from serviceloop.clock import isoformat
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore
from services.dispatch import service as dispatch_service
from services.dispatch.projections import events, projector
from tests.helpers import wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    running_system,
)


@pytest.fixture
def system(container_factory, service_config, database_for, backend, broker_uri, clock):
    with running_system(container_factory, service_config, broker_uri, clock,
                        database_for("orders", backend), database_for("dispatch", backend),
                        ACCEPT_WITHIN_MINUTES=30, SCHEDULE_WITHIN_MINUTES=600,
                        GATEWAY_RATE_PER_SECOND=5, GATEWAY_BURST=5) as running:
        yield running


def wait_status(system: DispatchSystem, order_id: str, status: str) -> dict:
    wait_until(lambda: system.dispatch_status(order_id) == status,
               message=f"{order_id} to be {status}")
    return system.dispatch.get_order(order_id)


def types(system: DispatchSystem, order_id: str) -> list[str]:
    return [e["event_type"] for e in system.dispatch.order_history(order_id)]


def post(system, partner, order_id, action, body=None):  # noqa: ANN001, ANN201
    return system.signed(partner, "POST", f"/api/v1/orders/{order_id}/{action}", body or {},
                         key=str(uuid.uuid4()))


def test_not_accepted_in_time_goes_to_the_next_partner_then_escalates(system):
    best = system.register_partner("甲", rating=5.0)
    second = system.register_partner("乙", rating=3.0)
    order_id = system.repair("13900000001")
    assert wait_status(system, order_id, "assigned")["partner_id"] == best.partner_id

    system.clock.advance(minutes=29)
    system.dispatch.run_timers()
    assert system.dispatch.get_order(order_id)["partner_id"] == best.partner_id
    system.clock.advance(minutes=2)
    system.dispatch.run_timers()
    view = system.dispatch.get_order(order_id)
    assert (view["status"], view["partner_id"]) == ("assigned", second.partner_id)
    assert view["excluded"] == [best.partner_id]
    late = post(system, best, order_id, "accept")
    assert (late.status_code, late.json()["error"]["code"]) == (409, "order_reassigned")

    system.clock.advance(minutes=31)
    system.dispatch.run_timers()
    view = system.dispatch.get_order(order_id)
    assert view["status"] == "escalated" and view["partner_id"] is None
    assert "excluded" in view["escalation"]
    assert types(system, order_id) == [
        "order_received", "order_assigned", "assignment_timed_out", "order_assigned",
        "assignment_timed_out", "order_escalated"]
    assert [o["order_id"] for o in system.dispatch.escalations()] == [order_id]

    by_hand = {"order_id": order_id, "partner_id": best.partner_id, "agent_id": "sup1"}
    assigned = system.dispatch.assign(by_hand, request_id="assign-1")
    # asked again (the answer lost): the first answer, not a second assignment or a conflict
    assert system.dispatch.assign(by_hand, request_id="assign-1") == assigned
    view = system.dispatch.get_order(order_id)
    assert (view["status"], view["partner_id"]) == ("assigned", best.partner_id)
    assert types(system, order_id)[-2:] == ["order_escalated", "order_assigned"]
    assert system.dispatch.order_history(order_id)[-1]["actor"] == "agent:sup1"
    assert post(system, best, order_id, "accept").status_code == 200


def test_not_scheduled_or_not_on_site_in_time_is_an_sla_breach_and_re_dispatch(system):
    first = system.register_partner("甲", rating=5.0)
    second = system.register_partner("乙", rating=4.0)
    order_id = system.repair("13900000002")
    wait_status(system, order_id, "assigned")
    assert post(system, first, order_id, "accept").status_code == 200
    system.clock.advance(minutes=601)
    system.dispatch.run_timers()
    history = system.dispatch.order_history(order_id)
    breach = next(e for e in history if e["event_type"] == "sla_breached")
    assert breach["payload"]["kind"] == "not_scheduled"
    assert system.dispatch.get_order(order_id)["partner_id"] == second.partner_id

    assert post(system, second, order_id, "accept").status_code == 200
    now = system.clock.now()
    window = {"window_start": isoformat(now + timedelta(hours=1)),
              "window_end": isoformat(now + timedelta(hours=3))}
    assert post(system, second, order_id, "schedule", window).status_code == 200
    system.clock.advance(hours=2, minutes=59)
    system.dispatch.run_timers()
    assert system.dispatch.get_order(order_id)["status"] == "scheduled"
    system.clock.advance(minutes=2)
    system.dispatch.run_timers()
    view = system.dispatch.get_order(order_id)
    assert view["status"] == "escalated"  # both partners are excluded now
    kinds = [e["payload"]["kind"] for e in system.dispatch.order_history(order_id)
             if e["event_type"] == "sla_breached"]
    assert kinds == ["not_scheduled", "not_on_site"]


def test_a_rejected_order_goes_to_the_next_partner_and_capacity_is_respected(system):
    busy = system.register_partner("满", rating=5.0, capacity=1)
    spare = system.register_partner("空", rating=2.0, capacity=5)
    one = system.repair("13900000003")
    assert wait_status(system, one, "assigned")["partner_id"] == busy.partner_id
    two = system.repair("13900000004")
    view = wait_status(system, two, "assigned")
    assert view["partner_id"] == spare.partner_id  # the better one is full today
    rejected = post(system, busy, one, "reject", {"reason_code": "parts_unavailable"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "released"
    view = system.dispatch.get_order(one)
    assert (view["status"], view["partner_id"]) == ("assigned", spare.partner_id)
    loads = {p["partner_id"]: p["load_today"] for p in system.dispatch.list_partners()}
    assert loads == {busy.partner_id: 0, spare.partner_id: 2}
    chosen = next(e for e in system.dispatch.order_history(two)
                  if e["event_type"] == "order_assigned")["payload"]
    assert chosen["considered"][0]["partner_id"] == spare.partner_id
    assert chosen["considered"][1]["capacity_left"] == 0
    assert "chose" in chosen["explanation"]


def test_orders_placed_at_once_take_a_partners_last_slot_once(system, monkeypatch):
    busy = system.register_partner("满", rating=5.0, capacity=1)
    spare = system.register_partner("空", rating=2.0, capacity=5)
    products = [system.customer_with_heater(phone) for phone in ("13900000011", "13900000012")]
    choosing: list[str] = []
    second_in = eventlet.event.Event()
    choose = dispatch_service.choose_partner

    def slow_choice(order, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # the first placement waits (a bounded while) for the second to be choosing too:
        # under the assignment lock the second cannot get here until the first committed
        choosing.append(order.order_id)
        if len(choosing) == 2:
            second_in.send()
        elif len(choosing) == 1:
            with eventlet.Timeout(1.5, False):
                second_in.wait()
        return choose(order, *args, **kwargs)

    monkeypatch.setattr(dispatch_service, "choose_partner", slow_choice)
    placed = [system.orders.create_order({
        "product_id": product_id, "order_type": "repair", "channel": "phone",
        "description": "no hot water", "fault_code": "WH-E1", "agent_id": "a7"})["order_id"]
        for product_id in products]
    views = [wait_status(system, order_id, "assigned") for order_id in placed]
    assert set(choosing) == set(placed)  # (catch-up may deliver one again: a duplicate)
    assert sorted(v["partner_id"] for v in views) == sorted([busy.partner_id,
                                                             spare.partner_id])
    loads = {p["partner_id"]: p["load_today"] for p in system.dispatch.list_partners()}
    assert loads == {busy.partner_id: 1, spare.partner_id: 1}


def test_two_partners_accepting_at_once_after_a_re_dispatch_one_wins(system):
    first = system.register_partner("甲", rating=5.0)
    second = system.register_partner("乙", rating=4.0)
    order_id = system.repair("13900000005")
    wait_status(system, order_id, "assigned")
    system.clock.advance(minutes=31)
    system.dispatch.run_timers()
    assert system.dispatch.get_order(order_id)["partner_id"] == second.partner_id
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda p: post(system, p, order_id, "accept"), [first, second]))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409]
    assert answers[1].status_code == 200
    assert types(system, order_id).count("order_accepted") == 1


def test_a_repair_waits_for_its_fault_code_and_a_complaint_never_goes_to_a_partner(system):
    system.register_partner()
    waiting = system.repair("13900000006", fault_code=None)
    assert wait_status(system, waiting, "awaiting_fault")["partner_id"] is None
    system.orders.record_fault({"order_id": waiting, "fault_code": "WH-E1", "agent_id": "a7"})
    assert wait_status(system, waiting, "assigned")["fault_code"] == "WH-E1"

    complaint = system.orders.file_complaint({"order_id": waiting, "channel": "phone",
                                              "description": "rude", "agent_id": "a7"})
    view = wait_status(system, complaint["order_id"], "complaint")
    assert view["partner_id"] is None
    assert types(system, complaint["order_id"]) == ["order_received"]
    with pytest.raises(Conflict):
        system.dispatch.assign({"order_id": complaint["order_id"],
                                "partner_id": system.dispatch.list_partners()[0]["partner_id"],
                                "agent_id": "sup1"})


def test_an_order_cancelled_in_orders_is_withdrawn_from_its_partner(system):
    partner = system.register_partner()
    order_id = system.repair("13900000007")
    wait_status(system, order_id, "assigned")
    system.orders.cancel_order({"order_id": order_id, "reason": "customer_request",
                                "agent_id": "a7"})
    wait_status(system, order_id, "withdrawn")
    answer = post(system, partner, order_id, "accept")
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "order_reassigned")
    listed = system.signed(partner, "GET", "/api/v1/orders")
    assert listed.json()["total"] == 0
    assert system.dispatch.list_partners()[0]["load_today"] == 0


def test_a_partner_over_its_rate_gets_429_with_retry_after(system):
    partner = system.register_partner()
    answers = [system.signed(partner, "GET", f"/api/v1/orders?nonce={n}") for n in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_dispatch_read_models_rebuild_identically_from_its_log(system):
    busy = system.register_partner("满", rating=5.0, capacity=1)
    system.register_partner("空", rating=2.0, capacity=5)
    system.dispatch.update_partner({"partner_id": busy.partner_id, "rating": 4.5})
    one, two = system.repair("13900000008"), system.repair("13900000009", fault_code=None)
    wait_status(system, one, "assigned")
    wait_status(system, two, "awaiting_fault")
    assert post(system, busy, one, "reject", {"reason_code": "other"}).status_code == 200
    system.clock.advance(minutes=31)
    system.dispatch.run_timers()
    engine = make_engine(system.dispatch_url)
    with engine.begin() as conn:
        before = projector.checksums(conn)
        replayed = projector.rebuild(conn, EventStore(events))
        after = projector.checksums(conn)
    engine.dispose()
    assert replayed == len(system.dispatch.events_since(0, 1000))
    assert after == before
