"""Each audit rule alone, then together; and finance's CSV files."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from contracts.errors import ValidationFailed
from services.settlement import csvfiles, ratecard, reports, rules
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


def test_a_waived_return_releases_the_part_line_like_a_returned_one():
    # record_part_return puts a waived serial among the returned ones (kind "waived")
    waived = outcome(claim(returned_serials=frozenset({"OLD-1"})))
    assert waived["part-1"] == (APPROVED, [], 11000)


def test_the_check_in_limit_is_the_configured_one():
    assert outcome(claim(checkin_km=5.0, max_checkin_km=10.0))["labour"][0] == APPROVED
    assert outcome(claim(checkin_km=12.0, max_checkin_km=10.0))["labour"][:2] == (
        HELD, ["checkin_far_from_customer"])


def test_the_check_in_limit_comes_from_config_else_the_environment(monkeypatch):
    from services.settlement.service import SettlementSettings

    assert SettlementSettings().max_checkin_km == 2.0
    monkeypatch.setenv("SETTLEMENT_MAX_CHECKIN_KM", "7.5")
    assert SettlementSettings().max_checkin_km == 7.5
    for bad in ("far", "0", "-3"):
        monkeypatch.setenv("SETTLEMENT_MAX_CHECKIN_KM", bad)
        with pytest.raises(ValueError, match="SETTLEMENT_MAX_CHECKIN_KM"):
            SettlementSettings()


CARD = {"labour": [
    {"order_type": "repair", "category": "water_heater", "region": "*", "cents": 7000},
    {"order_type": "repair", "category": "water_heater", "region": "广东省", "cents": 7500},
    {"order_type": "repair", "category": "*", "region": "*", "cents": 5000},
    {"order_type": "install", "category": "*", "region": "浙江省", "cents": 4000}],
    "travel": [{"up_to_km": 20, "region": "*", "cents": 1800},
               {"up_to_km": 50, "region": "*", "cents": 3000},
               {"up_to_km": 30, "region": "浙江省", "cents": 1200}]}


def test_a_regional_rate_wins_over_the_default_where_it_differs():
    assert ratecard.labour_rate(CARD, "repair", "water_heater", "广东省") == 7500
    assert ratecard.labour_rate(CARD, "repair", "water_heater", "浙江省") == 7000
    assert ratecard.labour_rate(CARD, "repair", "washer", "广东省") == 5000
    assert ratecard.labour_rate(CARD, "install", "washer", "浙江省") == 4000
    assert ratecard.labour_rate(CARD, "install", "washer", "广东省") is None
    # a region with travel bands of its own uses only those, up to its last band
    assert ratecard.travel_rate(CARD, 10, "浙江省") == 1200
    assert ratecard.travel_rate(CARD, 45, "浙江省") == 1200
    assert ratecard.travel_rate(CARD, 10, "广东省") == 1800
    assert ratecard.travel_rate(CARD, 21, "广东省") == 3000
    assert ratecard.travel_rate(CARD, 99, "广东省") == 3000
    assert ratecard.travel_rate(None, 10, "广东省") is None


def _line(line_id: str, decision: str, claimed: int, approved: int, reasons: list) -> dict:
    return {"line_id": line_id, "decision": decision, "claimed_cents": claimed,
            "approved_cents": approved, "reasons": reasons}


def _row(order_id: str, lines: list[dict], **extra) -> dict:
    cents = {"claimed_cents": sum(line["claimed_cents"] for line in lines),
             "payable_cents": 0, "cut_cents": 0, "held_cents": 0, "rejected_cents": 0}
    return {"claim_id": f"c-{order_id}", "order_id": order_id, "partner_id": "P1",
            "completed_on": "2026-11-05", "lines": lines, "settled_cents": None,
            "callback": "verified", "satisfaction": None, **cents, **extra}


def test_a_statement_line_says_which_line_was_held_or_rejected_and_why():
    lines = [_line("labour", "cut", 8000, 6000, ["labour_above_rate_card"]),
             _line("travel", "approved", 1500, 1500, []),
             _line("part-1", "held", 11000, 0, ["old_part_not_returned"]),
             _line("part-2", "rejected", 4000, 0, ["part_serial_already_claimed"])]
    body = reports.statement("2026-11", "P1", [_row("o1", lines, payable_cents=7500,
                                                    cut_cents=2000, held_cents=11000,
                                                    rejected_cents=4000)])
    (line,) = body["lines"]
    assert line["decisions"] == [
        {"line_id": "labour", "decision": "cut", "reasons": ["labour_above_rate_card"],
         "claimed_cents": 8000, "approved_cents": 6000},
        {"line_id": "part-1", "decision": "held", "reasons": ["old_part_not_returned"],
         "claimed_cents": 11000, "approved_cents": 0},
        {"line_id": "part-2", "decision": "rejected",
         "reasons": ["part_serial_already_claimed"], "claimed_cents": 4000,
         "approved_cents": 0}]
    assert (body["payable_cents"], body["cut_cents"], body["held_cents"],
            body["rejected_cents"]) == (7500, 2000, 11000, 4000)
    from serviceloop.cli.settlement import line_reasons, statement_csv

    assert line_reasons(line) == ("labour cut: labour_above_rate_card; part-1 held: "
                                  "old_part_not_returned; part-2 rejected: "
                                  "part_serial_already_claimed")
    header, row = statement_csv(body).splitlines()
    assert header.endswith(",reasons") and row.endswith(
        ",labour cut: labour_above_rate_card; part-1 held: old_part_not_returned; "
        "part-2 rejected: part_serial_already_claimed")


def test_reconciliation_finds_each_kind_of_difference_with_totals():
    ours = [_row("o1", [_line("labour", "approved", 6000, 6000, []),
                        _line("travel", "approved", 1500, 1500, [])]),
            _row("o2", [_line("labour", "rejected", 6000, 0, ["callback_disputed"])]),
            _row("o3", [_line("labour", "approved", 5000, 5000, [])]),
            _row("o9", [_line("labour", "approved", 5000, 5000, [])],
                 completed_on="2026-10-30")]  # last period's: not forgotten
    theirs = [{"order_id": "o1", "line_id": "labour", "claimed_cents": 6500},
              {"order_id": "o1", "line_id": "travel", "claimed_cents": 1500},
              {"order_id": "o1", "line_id": "part-1", "claimed_cents": 9000},
              {"order_id": "o2", "line_id": "labour", "claimed_cents": 6000},
              {"order_id": "zz", "line_id": "labour", "claimed_cents": 100}]
    report = reports.reconcile("2026-11", "P1", "2026-11-01", "2026-11-30", ours, theirs)
    found = {(d["order_id"], d["line_id"]): (d["kind"], d["difference_cents"])
             for d in report["differences"]}
    assert found == {("o1", "labour"): ("amount_differs", 500),
                     ("o1", "part-1"): ("line_not_ours", 9000),
                     ("o2", "labour"): ("line_rejected", 6000),
                     ("zz", "labour"): ("order_not_ours", 100),
                     ("o3", "*"): ("order_forgotten", -5000)}
    assert report["totals"] == {
        "order_not_ours": {"count": 1, "difference_cents": 100},
        "line_not_ours": {"count": 1, "difference_cents": 9000},
        "amount_differs": {"count": 1, "difference_cents": 500},
        "line_rejected": {"count": 1, "difference_cents": 6000},
        "order_forgotten": {"count": 1, "difference_cents": -5000}}
    assert report["their_claimed_cents"] == 23100
    assert report["our_claimed_cents"] == 6000 + 1500 + 6000 + 5000
    assert report["difference_cents"] == 23100 - 18500


def test_the_scorecard_from_known_figures():
    ok = [_line("labour", "approved", 6000, 6000, []),
          _line("travel", "approved", 1500, 1500, [])]
    repeat = [_line("labour", "rejected", 6000, 0, ["repeat_repair_within_30_days"]),
              _line("travel", "approved", 1500, 1500, [])]
    disputed = [_line("labour", "rejected", 6000, 0, ["callback_disputed"]),
                _line("travel", "rejected", 1500, 0, ["callback_disputed"])]
    rows = [_row("o1", ok, satisfaction=5),
            _row("o2", repeat, satisfaction=4, rejected_cents=6000),
            _row("o3", disputed, callback="disputed", satisfaction=1, rejected_cents=7500),
            _row("o4", ok, callback="pending"),
            _row("o3", ok, claim_id="c-o3-again", satisfaction=5)]  # the re-visit
    (card,) = reports.scorecards(rows, {"P1": 2})
    assert card == {"partner_id": "P1", "completed": 5, "first_visit_fix_rate": 0.5,
                    "repeat_repairs": 1, "dispute_rate": 0.25, "mean_satisfaction": 3.75,
                    "sla_breaches": 2, "rejected_value_share": round(13500 / 37500, 4)}
    assert reports.scorecards([], {"P2": 1})[0]["dispute_rate"] is None
