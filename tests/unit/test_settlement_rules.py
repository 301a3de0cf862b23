"""Each audit rule alone, then together; and finance's CSV files."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from contracts.errors import ValidationFailed
from services.settlement import csvfiles, rules
from services.settlement.rules import APPROVED, CUT, HELD, REJECTED, Claim, Line

LABOUR = Line("labour", "labour", 6000, "manufacturer")
TRAVEL = Line("travel", "travel", 1500, "manufacturer")
HEATER = Line("part-1", "part", 11000, "manufacturer", "WH-P-HEATER-2KW", "OLD-1", "NEW-1")
COVERED = {"unit": {"parts_covered": True, "labour_covered": True}}


def claim(**changes) -> Claim:
    base = Claim(
        claim_id="c1", order_id="o1", partner_id="p1", order_type="repair",
        category="water_heater", serial="WH1", completed_on=date(2026, 11, 10),
        fault_code="WH-E1", installation_barcode=None, lines=(LABOUR, TRAVEL, HEATER),
        callback="verified", warranty=COVERED, labour_rate_cents=6000, travel_rate_cents=1500,
        part_prices={"WH-P-HEATER-2KW": 11000}, customer_paid_cents=0,
        customer_paid_confirmed=None, checkin_km=0.1, returned_serials=frozenset({"OLD-1"}))
    return replace(base, **changes)


def outcome(c: Claim) -> dict:
    return {d.line.line_id: (d.decision, d.reasons, d.approved_cents) for d in rules.decide(c)}


def test_a_clean_claim_is_approved_in_full_and_charged_to_the_manufacturer():
    decided = rules.decide(claim())
    assert [(d.decision, d.approved_cents, d.manufacturer_cents) for d in decided] == [
        (APPROVED, 6000, 6000), (APPROVED, 1500, 1500), (APPROVED, 11000, 11000)]


@pytest.mark.parametrize("state, decision, reason", [
    ("pending", HELD, "callback_not_verified"), ("unverified", HELD, "callback_not_verified"),
    ("disputed", REJECTED, "callback_disputed")])
def test_nothing_is_paid_before_the_customer_confirmed(state, decision, reason):
    for line_decision, reasons, approved in outcome(claim(callback=state)).values():
        assert (line_decision, reasons, approved) == (decision, [reason], 0)


def test_an_in_warranty_part_on_an_out_of_warranty_product_is_rejected():
    expired = {"unit": {"parts_covered": False, "labour_covered": False}}
    lines = outcome(claim(warranty=expired))
    assert lines["part-1"][:2] == (REJECTED, ["warranty_part_on_product_out_of_warranty"])
    # labour out of warranty is the customer's, not the manufacturer's
    decided = {d.line.line_id: d for d in rules.decide(claim(warranty=expired))}
    assert decided["labour"].customer_cents == 6000 and decided["labour"].manufacturer_cents == 0


def test_a_part_not_plausible_for_the_fault_is_held_for_review():
    tank = replace(HEATER, part_code="WH-P-TANK-60L")
    covered = {**COVERED, "inner_tank": {"parts_covered": True, "labour_covered": True}}
    lines = outcome(claim(lines=(tank,), part_prices={"WH-P-TANK-60L": 50000},
                          warranty=covered))
    assert lines["part-1"][:2] == (HELD, ["part_not_plausible_for_fault"])


def test_the_same_serial_barcode_or_order_claimed_twice_is_rejected():
    assert outcome(claim(serials_claimed_elsewhere=frozenset({"NEW-1"})))["part-1"][1] == [
        "part_serial_already_claimed"]
    install = claim(order_type="install", installation_barcode="B1", lines=(LABOUR,),
                    barcodes_claimed_elsewhere=frozenset({"B1"}))
    assert outcome(install)["labour"][:2] == (REJECTED, ["installation_barcode_already_claimed"])
    assert {d for d, _, _ in outcome(claim(order_paid_elsewhere=True)).values()} == {REJECTED}


def test_labour_and_travel_above_the_card_are_cut_to_it():
    lines = outcome(claim(lines=(replace(LABOUR, claimed_cents=9000),
                                 replace(TRAVEL, claimed_cents=4000))))
    assert lines["labour"] == (CUT, ["labour_above_rate_card"], 6000)
    assert lines["travel"] == (CUT, ["travel_above_rate_card"], 1500)


def test_a_repeat_repair_within_30_days_by_the_same_partner_earns_no_labour():
    assert outcome(claim(same_partner_repair_days_ago=12))["labour"][:2] == (
        REJECTED, ["repeat_repair_within_30_days"])
    assert outcome(claim(same_partner_repair_days_ago=45))["labour"][0] == APPROVED


def test_a_warranty_part_waits_for_the_old_part_and_a_far_check_in_holds_the_claim():
    assert outcome(claim(returned_serials=frozenset()))["part-1"][:2] == (
        HELD, ["old_part_not_returned"])
    far = outcome(claim(checkin_km=7.5))
    assert {d for d, _, _ in far.values()} == {HELD}
    assert rules.distance_km(23.13, 113.33, 23.13, 113.33) == 0
    assert 100 < rules.distance_km(23.13, 113.26, 22.54, 114.06) < 110  # 广州 → 深圳


def test_what_the_customer_confirmed_paying_must_match_what_the_partner_says():
    lines = outcome(claim(customer_paid_cents=5000, customer_paid_confirmed=3000))
    assert all("customer_paid_mismatch" in reasons for _, reasons, _ in lines.values())


def test_rules_together_the_most_severe_decides_and_every_reason_is_kept():
    together = claim(callback="pending", lines=(replace(LABOUR, claimed_cents=9000),),
                     same_partner_repair_days_ago=3)
    decision, reasons, approved = outcome(together)["labour"]
    assert decision == REJECTED and approved == 0
    assert reasons == ["callback_not_verified", "labour_above_rate_card",
                       "repeat_repair_within_30_days"]


def test_rate_card_csv_loads_and_bad_rows_are_refused_with_line_numbers():
    card = csvfiles.parse_rates(
        "effective_from,kind,order_type,category,region,up_to_km,cents\n"
        "2026-01-01,labour,repair,water_heater,广东省,,6000\n"
        "2026-01-01,travel,,,*,20,1500\n")
    assert card["effective_from"] == "2026-01-01"
    assert card["labour"] == [{"order_type": "repair", "category": "water_heater",
                               "region": "广东省", "cents": 6000}]
    with pytest.raises(ValidationFailed) as bad:
        csvfiles.parse_rates(
            "effective_from,kind,order_type,category,region,up_to_km,cents\n"
            "2026-01-01,labour,repair,water_heater,*,,-5\n"
            "2026-01-01,labour,fix,water_heater,*,,5\n"
            "2026-01-01,travel,,,*,20,1500\n"
            "2026-01-01,travel,,,*,20,1600\n")
    assert set(bad.value.fields) == {"line 2", "line 3", "line 5"}
    with pytest.raises(ValidationFailed):
        csvfiles.parse_parts("effective_from,part_code,cents\n2026-01-01,P1,1\n2026-01-01,P1,2\n")
    with pytest.raises(ValidationFailed) as columns:
        csvfiles.parse_partner_statement("order,amount\n1,2\n")
    assert columns.value.code == "wrong_columns"
