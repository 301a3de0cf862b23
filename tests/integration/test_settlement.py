"""Settlement through the whole loop: orders, dispatch, callback and settlement on a real
broker and database; partners over the gateway, agents and finance over RPC."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from nameko.standalone.rpc import ServiceRpcProxy

from bench.settlement import WARRANTY, ProducerLog, stand_in
from contracts.errors import ValidationFailed
from serviceloop.clock import isoformat
from serviceloop.consumer import deliver
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
        container_factory(SettlementService, {**service_config(settlement=urls["settlement"]),
                                              "SETTLEMENT_MAX_CHECKIN_KM": "10"}),
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


def cli(monkeypatch, capsys, system, *argv: str) -> str:  # noqa: ANN001
    """`serviceloop …` in this process, against the test's broker; its standard output."""
    from serviceloop.cli import main

    monkeypatch.setenv("AMQP_URI", system.broker_uri)
    capsys.readouterr()
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_a_claim_is_held_until_verified_cut_to_the_card_and_the_part_waits_for_its_return(
        loop, monkeypatch, capsys):
    partner = loop.register_partner()
    order_id = loop.repair("13600000001")
    # checked in 5 km from the address: within SETTLEMENT_MAX_CHECKIN_KM=10 (default 2)
    claim = complete(loop, partner, order_id, labour_fee_cents=8000, travel_fee_cents=1000,
                     travel_distance_km=12, at={"lat": 23.175, "lon": 113.33}, parts=[
                         {"part_code": "WH-P-HEATER-2KW", "old_serial": "OLD-1",
                          "new_serial": "NEW-1", "fee_cents": 11000},
                         {"part_code": "WH-P-THERMOSTAT", "old_serial": "OLD-2",
                          "new_serial": "NEW-2", "fee_cents": 4000}])
    assert {k: v[0] for k, v in decisions(claim).items()} == {
        "labour": "held", "travel": "held", "part-1": "held", "part-2": "held"}
    assert "callback_not_verified" in decisions(claim)["labour"][1]
    assert claim["payable_cents"] == 0

    verify(loop, order_id, satisfaction=5)
    claim = latest(loop, order_id, 2)
    lines = decisions(claim)
    assert lines["labour"] == ("cut", ["labour_above_rate_card"])
    assert lines["travel"] == ("approved", [])
    assert lines["part-1"] == lines["part-2"] == ("held", ["old_part_not_returned"])
    assert claim["payable_cents"] == 6000 + 1000 and claim["cut_cents"] == 2000

    # the statement says which line was cut or held and why, in JSON and CSV alike
    period = loop.clock.now().strftime("%Y-%m")
    (statement,) = loop.settlement.run(period)
    (line,) = statement["lines"]
    assert [(d["line_id"], d["decision"], d["reasons"]) for d in line["decisions"]] == [
        ("labour", "cut", ["labour_above_rate_card"]),
        ("part-1", "held", ["old_part_not_returned"]),
        ("part-2", "held", ["old_part_not_returned"])]
    exported = json.loads(cli(monkeypatch, capsys, loop, "settlement", "statement", period,
                              "--partner", partner.partner_id, "--json"))
    assert exported == statement
    (row,) = csv.DictReader(io.StringIO(cli(
        monkeypatch, capsys, loop, "settlement", "statement", period, "--partner",
        partner.partner_id, "--csv")))
    assert (row["order_id"], row["held_cents"], row["reasons"]) == (
        order_id, "15000", "labour cut: labour_above_rate_card; "
        "part-1 held: old_part_not_returned; part-2 held: old_part_not_returned")

    part_back = {"serial": "OLD-1", "parts_centre": "广州"}
    returned = loop.settlement.record_part_return(part_back, request_id="return-OLD-1")
    assert returned["claims"] == [claim["claim_id"]]
    assert loop.settlement.record_part_return(part_back, request_id="return-OLD-1") == returned
    claim = latest(loop, order_id, 3)
    assert decisions(claim)["part-1"] == ("approved", [])
    assert decisions(claim)["part-2"] == ("held", ["old_part_not_returned"])
    assert claim["payable_cents"] == 6000 + 1000 + 11000

    # the other old part's return waived by a named person, through the command line
    waived = json.loads(cli(monkeypatch, capsys, loop, "settlement", "parts-returned",
                            "OLD-2", "--waived-by", "李经理", "--note", "客户留下旧件", "--json"))
    assert waived == {"serial": "OLD-2", "kind": "waived", "waived_by": "李经理",
                      "claims": [claim["claim_id"]]}
    claim = latest(loop, order_id, 4)
    assert decisions(claim)["part-2"] == ("approved", [])
    assert claim["payable_cents"] == 6000 + 1000 + 11000 + 4000
    (recorded,) = loop.settlement.stream("part-OLD-2")
    assert recorded["payload"]["kind"] == "waived"
    assert recorded["payload"]["waived_by"] == "李经理"
    assert recorded["payload"]["note"] == "客户留下旧件"


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
    one, two, three = (loop.repair(f"1360000000{n}") for n in (4, 5, 8))
    complete(loop, partner, three, labour_fee_cents=5000)
    verify(loop, three, outcome="disputed", dispute_reasons=["not_fixed"])  # the only task
    complete(loop, partner, one, labour_fee_cents=6000)
    complete(loop, partner, two, labour_fee_cents=6000)
    latest(loop, three, 2)
    period = loop.clock.now().strftime("%Y-%m")
    theirs = ("order_id,line_id,claimed_cents\n"
              f"{one},labour,6500\n{one},travel,0\n{one},part-1,9000\n"
              f"{three},labour,5000\nnot-an-order,labour,100\n")
    report = loop.settlement.reconcile(period, partner.partner_id, theirs)
    found = {(d["order_id"], d["line_id"]): (d["kind"], d["difference_cents"])
             for d in report["differences"]}
    assert found == {(one, "labour"): ("amount_differs", 500),
                     (one, "part-1"): ("line_not_ours", 9000),
                     (three, "labour"): ("line_rejected", 5000),
                     ("not-an-order", "labour"): ("order_not_ours", 100),
                     (two, "*"): ("order_forgotten", -6000)}
    assert {kind: (t["count"], t["difference_cents"])
            for kind, t in report["totals"].items()} == {
        "order_not_ours": (1, 100), "line_not_ours": (1, 9000), "amount_differs": (1, 500),
        "line_rejected": (1, 5000), "order_forgotten": (1, -6000)}
    assert report["their_claimed_cents"] == 6500 + 9000 + 5000 + 100
    assert report["our_claimed_cents"] == 6000 + 6000 + 5000
    assert report["difference_cents"] == 20600 - 17000


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
    # checked in ~52 km from the customer's address: beyond SETTLEMENT_MAX_CHECKIN_KM=10
    complete(loop, partner, done, labour_fee_cents=6000, at={"lat": 23.60, "lon": 113.33})
    verify(loop, done, satisfaction=4)
    claim = latest(loop, done, 2)
    assert decisions(claim) == {"labour": ("held", ["checkin_far_from_customer"]),
                                "travel": ("held", ["checkin_far_from_customer"])}
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


# -- the service's own evidence, delivered straight to its consumers -----------------------
# The real SettlementService class on a real database without nameko or the other services
# (as bench/settlement.py builds it): cheap enough for dated cards and whole periods.


class Ledger:
    def __init__(self, url: str) -> None:
        import contracts.callback
        import contracts.dispatch
        import contracts.orders  # noqa: F401 - the producers' contracts, for validation

        self.service = stand_in(url, datetime(2026, 9, 1, 8, tzinfo=UTC))
        self.logs = {s: ProducerLog(s) for s in ("orders", "dispatch", "callback")}
        self.completions: dict[str, dict] = {}

    def deliver(self, source: str, handler: str, envelope: dict) -> None:
        at = datetime.fromisoformat(envelope["occurred_at"].replace("Z", "+00:00"))
        self.service.clock.set(at + timedelta(seconds=5))
        assert deliver(self.service, getattr(SettlementService, handler).handler,
                       f"settlement.{handler}", source, envelope, attempts=1) == "handled"

    def repair(self, order_id: str, on: str, *, partner: str = "P1", serial: str = "",
               province: str = "广东省", labour: int = 8000, travel: int = 2500,
               km: int = 10, parts: tuple = (), part_code: str = "WH-P-HEATER-2KW",
               part_cents: int = 11000) -> None:
        """An order created and completed on `on` (YYYY-MM-DD, 10:00 UTC)."""
        at = datetime.fromisoformat(f"{on}T10:00:00+00:00")
        serial = serial or f"S-{order_id}"
        address = {"province": province, "city": "市", "district": "区", "street": "路1号",
                   "lat": 23.13, "lon": 113.33}
        self.deliver("orders", "on_order_created", self.logs["orders"].envelope(
            f"order-{order_id}", 1, "order_created", {
                "order_id": order_id, "request_id": None, "order_type": "repair",
                "channel": "phone", "status": "created", "routed_to": "dispatch",
                "customer_id": f"cus-{order_id}", "product_id": f"prd-{serial}",
                "phone": "13900000000", "address": address, "category": "water_heater",
                "model": "WH-E60A", "serial": serial, "description": "no hot water",
                "fault_code": "WH-E1", "related_order_id": None, "about_partner_id": None,
                "warranty": WARRANTY, "in_warranty": True}, at - timedelta(hours=2), order_id))
        parts = [{"part_code": part_code, "old_serial": old, "new_serial": f"N-{old}",
                  "quantity": 1, "fee_cents": part_cents, "charged_to": "manufacturer"}
                 for old in parts]
        completion = self.logs["dispatch"].envelope(f"order-{order_id}", 6, "order_completed", {
            "order_id": order_id, "partner_id": partner, "order_type": "repair",
            "category": "water_heater", "model": "WH-E60A", "serial": serial,
            "phone": "13900000000", "in_warranty": True, "fault_code": "WH-E1",
            "work_done": "换加热管", "parts": parts, "installation_barcode": None,
            "labour_fee_cents": labour, "travel_fee_cents": travel, "travel_distance_km": km,
            "parts_fee_cents": sum(p["fee_cents"] for p in parts), "customer_paid_cents": 0,
            "confirmation_matched": True, "arrived_at": (at - timedelta(hours=1)).isoformat(),
            "arrival_lat": 23.13, "arrival_lon": 113.33}, at, order_id,
            actor=f"partner:{partner}")
        self.completions[order_id] = completion
        self.deliver("dispatch", "on_order_completed", completion)

    def callback(self, order_id: str, outcome: str = "verified", satisfaction: int = 5) -> None:
        completion = self.completions[order_id]
        at = datetime.fromisoformat(completion["occurred_at"].replace("Z", "+00:00"))
        p = completion["payload"]
        payload = {"task_id": completion["event_id"], "order_id": order_id,
                   "partner_id": p["partner_id"], "channel": "agent",
                   "satisfaction": satisfaction, "customer_paid_cents": 0, "notes": "",
                   "visit": 1}
        if outcome == "disputed":
            del payload["channel"]
            payload.update(reasons=["not_fixed"], about_partner=False,
                           complaint_requested=False)
        self.deliver("callback", f"on_order_{outcome}", self.logs["callback"].envelope(
            f"task-{completion['event_id']}", 3, f"order_{outcome}", payload,
            at + timedelta(hours=3), order_id, actor="agent:a1"))

    def lines(self, order_id: str) -> dict:
        (claim,) = self.service.claims_for_order(order_id)
        return {line["line_id"]: (line["decision"], line["approved_cents"])
                for line in claim["lines"]}


@pytest.fixture
def ledger(database_for, backend):
    book = Ledger(database_for("settlement", backend))
    book.service.load_rates(RATES)
    book.service.load_rates(PARTS)
    yield book
    book.service.db.engine.dispose()


OCTOBER_CARD = """effective_from,kind,order_type,category,region,up_to_km,cents
2026-10-15,labour,repair,water_heater,*,,7000
2026-10-15,labour,repair,water_heater,广东省,,7500
2026-10-15,travel,,,*,20,1800
2026-10-15,travel,,,浙江省,30,1200
"""
BACK_DATED_CARD = RATES.replace("2026-01-01", "2026-09-01").replace(",6000\n", ",6500\n")
BACK_DATED_PARTS = PARTS.replace("2026-01-01", "2026-09-01") + "2026-09-01,WH-P-HEATER-3KW,13000\n"


def test_a_claim_is_priced_with_the_card_in_force_on_its_day_and_a_regional_rate_wins(ledger):
    ledger.service.load_rates(OCTOBER_CARD)  # loaded ahead of its day
    ledger.repair("before", "2026-10-14")
    ledger.repair("guangdong", "2026-10-15")
    ledger.repair("zhejiang", "2026-10-20", province="浙江省")
    for order_id in ("before", "guangdong", "zhejiang"):
        ledger.callback(order_id)
    assert ledger.lines("before") == {"labour": ("cut", 6000), "travel": ("cut", 1500)}
    assert ledger.lines("guangdong") == {"labour": ("cut", 7500), "travel": ("cut", 1800)}
    assert ledger.lines("zhejiang") == {"labour": ("cut", 7000), "travel": ("cut", 1200)}
    assert ledger.service.current_rates("2026-10-14")["rates"]["labour"][0]["cents"] == 6000


def test_a_back_dated_card_reprices_open_claims_and_a_closed_period_keeps_its_card(ledger):
    service = ledger.service
    ledger.repair("sept", "2026-09-10", parts=("OLD-S",))
    service.record_part_return({"serial": "OLD-U", "parts_centre": "广州"})
    ledger.repair("unlisted", "2026-09-12", parts=("OLD-U",), part_code="WH-P-HEATER-3KW",
                  part_cents=13000)
    ledger.repair("octo", "2026-10-10")
    for order_id in ("sept", "unlisted", "octo"):
        ledger.callback(order_id)
    assert ledger.lines("octo")["labour"] == ("cut", 6000)
    assert ledger.lines("unlisted")["part-1"] == ("held", 0)  # part_not_on_price_list
    (september,) = service.run("2026-09")
    assert september["payable_cents"] == 2 * (6000 + 1500)  # both parts wait

    service.load_rates(BACK_DATED_CARD)  # in force from 2026-09-01, loaded in October
    service.load_rates(BACK_DATED_PARTS)
    assert ledger.lines("octo")["labour"] == ("cut", 6500)  # open: the card now in force
    assert ledger.lines("sept")["labour"] == ("cut", 6000)  # settled: its card stays …
    assert ledger.lines("unlisted") == {  # … but a line no card priced gets the new price
        "labour": ("cut", 6000), "travel": ("cut", 1500), "part-1": ("approved", 13000)}
    service.record_part_return({"serial": "OLD-S", "waived_by": "李经理"})
    assert ledger.lines("sept") == {"labour": ("cut", 6000), "travel": ("cut", 1500),
                                    "part-1": ("approved", 11000)}
    assert service.statement("2026-09", "P1") == september

    # a period's figures, then every read model dropped and rebuilt from the log: the same
    preview = service.preview("2026-10", "P1")
    assert [(line["order_id"], line["kind"], line["payable_cents"])
            for line in preview["lines"]] == [("sept", "adjustment", 11000),
                                                ("unlisted", "adjustment", 13000),
                                                ("octo", "claim", 6500 + 1500)]
    with service.db.engine.begin() as conn:
        before = projector.checksums(conn)
        assert projector.rebuild(conn, EventStore(events)) > 0  # every table emptied first
        assert projector.checksums(conn) == before
    assert service.preview("2026-10", "P1") == preview
    (october,) = service.run("2026-10")
    assert october == preview and october["payable_cents"] == 11000 + 13000 + 8000
    assert october["adjustments_cents"] == 24000 and october["cut_cents"] == 1500 + 1000


def test_the_scorecard_counts_repeats_disputes_and_the_value_rejected(ledger):
    ledger.repair("first", "2026-10-02", serial="WH-1", labour=6000, travel=1500)
    ledger.repair("again", "2026-10-12", serial="WH-1", labour=6000, travel=1500)
    ledger.repair("disputed", "2026-10-20", labour=6000, travel=1500)
    ledger.repair("other", "2026-10-21", partner="P2", labour=6000, travel=1500)
    ledger.callback("first", satisfaction=5)
    ledger.callback("again", satisfaction=4)
    ledger.callback("disputed", "disputed", satisfaction=1)
    assert ledger.lines("again")["labour"] == ("rejected", 0)
    cards = {c["partner_id"]: c for c in ledger.service.scorecard("2026-10")}
    assert cards["P1"] == {
        "partner_id": "P1", "completed": 3, "first_visit_fix_rate": round(2 / 3, 4),
        "repeat_repairs": 1, "dispute_rate": round(1 / 3, 4), "mean_satisfaction": 3.33,
        "sla_breaches": 0, "rejected_value_share": round((6000 + 7500) / 22500, 4)}
    assert cards["P2"]["completed"] == 1 and cards["P2"]["dispute_rate"] is None
    assert cards["P2"]["repeat_repairs"] == 0 and cards["P2"]["rejected_value_share"] == 0
