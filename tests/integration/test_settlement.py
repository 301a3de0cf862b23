"""Settlement through the whole loop: orders, dispatch, callback and settlement on a real
broker and database; partners over the gateway, agents and finance over RPC."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from nameko.standalone.rpc import ServiceRpcProxy

from contracts.errors import ValidationFailed
from serviceloop.clock import isoformat
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore
from services.callback.service import CallbackService
from services.dispatch.service import DispatchService
from services.orders.service import OrdersService
from services.settlement.projections import events, projector
from services.settlement.service import SettlementService
from tests.helpers import wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    declare,
    dispatch_config,
    free_port,
    start_relay,
)

RATES = """effective_from,kind,order_type,category,region,up_to_km,cents
2026-01-01,labour,repair,water_heater,*,,6000
2026-01-01,labour,install,*,*,,5000
2026-01-01,travel,,,*,20,1500
2026-01-01,travel,,,*,50,3000
"""
PARTS = """effective_from,part_code,cents
2026-01-01,WH-P-HEATER-2KW,11000
2026-01-01,WH-P-THERMOSTAT,4000
"""
SERVICES = ("orders", "dispatch", "callback", "settlement")


@pytest.fixture
def loop(container_factory, service_config, database_for, backend, broker_uri, clock):
    declare(broker_uri)
    urls = {s: database_for(s, backend) for s in SERVICES}
    port = free_port()
    containers = [
        container_factory(OrdersService, service_config(orders=urls["orders"])),
        container_factory(DispatchService, dispatch_config(service_config, urls["dispatch"],
                                                           port)),
        container_factory(CallbackService, {**service_config(callback=urls["callback"]),
                                            "WEB_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
                                            "AUTO_VERIFY_INSTALLS": "false"}),
        container_factory(SettlementService, service_config(settlement=urls["settlement"])),
    ]
    for container in containers:
        container.start()
    relays = [start_relay(s, broker_uri, urls[s]) for s in SERVICES]
    config = containers[0].config
    with ServiceRpcProxy("orders", config, timeout=20) as orders_rpc, \
            ServiceRpcProxy("dispatch", config, timeout=20) as dispatch_rpc, \
            ServiceRpcProxy("callback", config, timeout=20) as callback_rpc, \
            ServiceRpcProxy("settlement", config, timeout=20) as settlement_rpc:
        system = DispatchSystem(orders_rpc, dispatch_rpc, f"http://127.0.0.1:{port}", clock,
                                relays)
        system.callback, system.settlement = callback_rpc, settlement_rpc
        system.settlement_url = urls["settlement"]
        system.service_urls = urls
        system.broker_uri = broker_uri
        system.settlement.load_rates(RATES)
        system.settlement.load_rates(PARTS)
        yield system
        system.close()


def post(system, partner, order_id, action, body=None):  # noqa: ANN001, ANN201
    answer = system.signed(partner, "POST", f"/api/v1/orders/{order_id}/{action}", body or {},
                           key=str(uuid.uuid4()))
    assert answer.status_code == 200, answer.text
    return answer.json()


def complete(system, partner, order_id, **report):  # noqa: ANN001, ANN201
    wait_until(lambda: system.dispatch_status(order_id) == "assigned", message="assignment")
    post(system, partner, order_id, "accept")
    now = system.clock.now()
    post(system, partner, order_id, "schedule", {
        "window_start": isoformat(now), "window_end": isoformat(now + timedelta(hours=2))})
    post(system, partner, order_id, "arrive", {"coordinates": report.pop(
        "at", {"lat": 23.13, "lon": 113.33})})
    post(system, partner, order_id, "complete", {
        "work_done": "换加热管", "fault_code": "WH-E1", **report})
    return wait_until(lambda: system.settlement.claims_for_order(order_id),
                      message="the claim")[-1]


def verify(system, order_id: str, outcome: str = "verified", **extra) -> None:  # noqa: ANN001
    task = wait_until(lambda: [t for t in system.callback.tasks_for_order(order_id)
                               if t["status"] == "open"], message="the task")[0]
    leased = system.callback.next_task("a1")
    assert leased["task_id"] == task["task_id"]
    system.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a1",
                                    "outcome": outcome, **extra})


def decisions(claim: dict) -> dict:
    return {line["line_id"]: (line["decision"], line["reasons"]) for line in claim["lines"]}


def latest(system, order_id: str, version: int) -> dict:  # noqa: ANN001
    return wait_until(lambda: next((c for c in system.settlement.claims_for_order(order_id)
                                    if c["version"] >= version), None),
                      message=f"claim version {version}")


def test_a_claim_is_held_until_verified_cut_to_the_card_and_the_part_waits_for_its_return(
        loop):
    partner = loop.register_partner()
    order_id = loop.repair("13600000001")
    claim = complete(loop, partner, order_id, labour_fee_cents=8000, travel_fee_cents=1000,
                     travel_distance_km=12, parts=[{
                         "part_code": "WH-P-HEATER-2KW", "old_serial": "OLD-1",
                         "new_serial": "NEW-1", "fee_cents": 11000}])
    assert {k: v[0] for k, v in decisions(claim).items()} == {
        "labour": "held", "travel": "held", "part-1": "held"}
    assert "callback_not_verified" in decisions(claim)["labour"][1]
    assert claim["payable_cents"] == 0

    verify(loop, order_id, satisfaction=5)
    claim = latest(loop, order_id, 2)
    lines = decisions(claim)
    assert lines["labour"] == ("cut", ["labour_above_rate_card"])
    assert lines["travel"] == ("approved", [])
    assert lines["part-1"] == ("held", ["old_part_not_returned"])
    assert claim["payable_cents"] == 6000 + 1000 and claim["cut_cents"] == 2000

    returned = loop.settlement.record_part_return({"serial": "OLD-1", "parts_centre": "广州"})
    assert returned["claims"] == [claim["claim_id"]]
    claim = latest(loop, order_id, 3)
    assert decisions(claim)["part-1"] == ("approved", [])
    assert claim["payable_cents"] == 6000 + 1000 + 11000


def test_a_dispute_rejects_and_the_rejection_stands(loop):
    partner = loop.register_partner()
    order_id = loop.repair("13600000002")
    complete(loop, partner, order_id, labour_fee_cents=6000)
    verify(loop, order_id, outcome="disputed", dispute_reasons=["not_fixed"])
    claim = latest(loop, order_id, 2)
    assert {d for d, _ in decisions(claim).values()} == {"rejected"}
    assert claim["payable_cents"] == 0 and claim["rejected_cents"] == 6000


def test_a_period_closes_into_statements_and_late_evidence_is_next_periods_adjustment(loop):
    partner = loop.register_partner()
    order_id = loop.repair("13600000003")
    complete(loop, partner, order_id, labour_fee_cents=6000, travel_fee_cents=1500,
             travel_distance_km=5)
    period = loop.clock.now().strftime("%Y-%m")
    (statement,) = loop.settlement.run(period)
    assert statement["partner_id"] == partner.partner_id
    assert statement["payable_cents"] == 0 and statement["held_cents"] == 7500
    assert loop.settlement.run(period) == [statement]  # closed: the same to the cent
    assert loop.settlement.partners_to_close(period) == [partner.partner_id]
    assert loop.settlement.run(period, partner.partner_id) == [statement]
    assert loop.settlement.run(period, "P-nobody") == []

    verify(loop, order_id)
    latest(loop, order_id, 2)
    assert loop.settlement.statement(period, partner.partner_id) == statement
    loop.clock.advance(days=31)
    following = loop.clock.now().strftime("%Y-%m")
    (next_statement,) = loop.settlement.run(following)
    (adjustment,) = next_statement["lines"]
    assert adjustment["kind"] == "adjustment" and adjustment["payable_cents"] == 7500
    assert next_statement["adjustments_cents"] == next_statement["payable_cents"] == 7500

    engine = make_engine(loop.settlement_url)
    with engine.begin() as conn:
        before = projector.checksums(conn)
        projector.rebuild(conn, EventStore(events))
        assert projector.checksums(conn) == before
    engine.dispose()
    assert loop.settlement.run(period) == [statement]


def test_reconciliation_lists_every_kind_of_difference(loop):
    partner = loop.register_partner()
    one, two = loop.repair("13600000004"), loop.repair("13600000005")
    complete(loop, partner, one, labour_fee_cents=6000)
    complete(loop, partner, two, labour_fee_cents=6000)
    period = loop.clock.now().strftime("%Y-%m")
    theirs = ("order_id,line_id,claimed_cents\n"
              f"{one},labour,6500\n{one},travel,0\nnot-an-order,labour,100\n")
    report = loop.settlement.reconcile(period, partner.partner_id, theirs)
    kinds = {(d["order_id"], d["kind"]) for d in report["differences"]}
    assert kinds == {(one, "amount_differs"), ("not-an-order", "order_not_ours"),
                     (two, "order_forgotten")}
    assert report["their_claimed_cents"] == 6600
    assert report["our_claimed_cents"] == 12000


def test_bad_csv_is_refused_with_line_numbers_and_loads_nothing(loop):
    before = loop.settlement.current_rates()
    bad = RATES + "2026-01-01,labour,repair,water_heater,*,,60.5\n" \
                  "2026-01-01,labour,repair,water_heater,*,,6000\n"
    with pytest.raises(ValidationFailed) as refused:
        loop.settlement.load_rates(bad)
    assert set(refused.value.fields) == {"line 6", "line 7"}
    with pytest.raises(ValidationFailed) as wrong:
        loop.settlement.load_rates("order,cents\nx,1\n")
    assert wrong.value.code == "wrong_columns"
    assert loop.settlement.current_rates() == before


def test_the_scorecard_counts_completions_satisfaction_and_sla_breaches(loop):
    partner = loop.register_partner()
    done, late = loop.repair("13600000006"), loop.repair("13600000007")
    complete(loop, partner, done, labour_fee_cents=6000)
    verify(loop, done, satisfaction=4)
    latest(loop, done, 2)
    wait_until(lambda: loop.dispatch_status(late) == "assigned", message="assignment")
    post(loop, partner, late, "accept")
    loop.clock.advance(hours=25)  # accepted, never scheduled within 24 hours
    assert loop.dispatch.run_timers()["sla_breached"] == 1
    period = loop.clock.now().strftime("%Y-%m")
    (card,) = wait_until(lambda: [c for c in loop.settlement.scorecard(period)
                                  if c["sla_breaches"]], message="the breach in the scorecard")
    assert card["partner_id"] == partner.partner_id
    assert card["completed"] == 1 and card["mean_satisfaction"] == 4
    assert card["first_visit_fix_rate"] == 1.0 and card["sla_breaches"] == 1
    assert loop.settlement.scorecard("2026-12") == []
