"""Choosing a partner for an order: who qualifies, who wins, and why nobody did."""

from __future__ import annotations

import random
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dispatch.assignment import (
    Candidate,
    NotDispatchable,
    OrderToPlace,
    PartnerProfile,
    choose_partner,
    ready_for_dispatch,
)

TIANHE = ("广东省", "广州市", "天河区")
YUEXIU = ("广东省", "广州市", "越秀区")
WUHOU = ("四川省", "成都市", "武侯区")


def partner(partner_id: str, *, districts: tuple = (TIANHE,),
            categories: tuple = ("water_heater",), capacity: int = 20, rating: float = 4.0,
            active: bool = True) -> PartnerProfile:
    return PartnerProfile(partner_id, f"shop {partner_id}", frozenset(districts),
                          frozenset(categories), capacity, rating, active)


def order(**overrides: object) -> OrderToPlace:
    fields: dict = {"order_id": "o-1", "order_type": "repair", "category": "water_heater",
                    "district": TIANHE, "status": "created", "fault_code": "WH-E1",
                    "excluded_partners": frozenset(), **overrides}
    return OrderToPlace(**fields)


def refusal(placed: OrderToPlace) -> str:
    with pytest.raises(NotDispatchable) as refused:
        ready_for_dispatch(placed)
    return refused.value.code


# -- ready for dispatch ----------------------------------------------------------------------


def test_a_complaint_is_never_dispatched() -> None:
    complaint = order(order_type="complaint", fault_code=None)
    assert refusal(complaint) == "complaint_not_dispatched"
    with pytest.raises(NotDispatchable) as refused:
        choose_partner(complaint, [partner("P1")], {})
    assert refused.value.code == "complaint_not_dispatched"


def test_a_repair_waits_for_its_fault_code() -> None:
    assert refusal(order(status="awaiting_fault", fault_code=None)) == "fault_code_required"
    assert refusal(order(status="created", fault_code=None)) == "fault_code_required"
    assert refusal(order(status="reopened", fault_code=None)) == "fault_code_required"
    with pytest.raises(NotDispatchable):
        choose_partner(order(status="awaiting_fault", fault_code=None), [partner("P1")], {})


def test_a_repair_with_its_fault_code_is_ready() -> None:
    ready_for_dispatch(order(status="created", fault_code="WH-E1"))
    ready_for_dispatch(order(status="reopened", fault_code="WH-E1"))


@pytest.mark.parametrize("order_type", ["install", "maintenance"])
def test_installs_and_maintenance_need_no_fault_code(order_type: str) -> None:
    ready_for_dispatch(order(order_type=order_type, fault_code=None))


@pytest.mark.parametrize("status", ["assigned", "accepted", "completed", "cancelled", "closed"])
def test_an_order_past_created_is_not_ready(status: str) -> None:
    assert refusal(order(status=status)) == "not_ready"
    assert refusal(order(order_type="install", status=status, fault_code=None)) == "not_ready"


def test_a_cancelled_repair_without_fault_code_is_not_ready_rather_than_waiting() -> None:
    assert refusal(order(status="cancelled", fault_code=None)) == "not_ready"


# -- who qualifies --------------------------------------------------------------------------


def test_only_partners_covering_the_district_are_considered() -> None:
    partners = [partner("P1", districts=(YUEXIU,), rating=5.0),
                partner("P2", districts=(TIANHE, YUEXIU), rating=3.0),
                partner("P3", districts=(WUHOU,), rating=5.0)]
    choice = choose_partner(order(), partners, {})
    assert choice.partner_id == "P2"
    assert [c.partner_id for c in choice.considered] == ["P2"]


def test_a_district_of_the_same_name_in_another_city_does_not_count() -> None:
    elsewhere = ("广东省", "深圳市", "天河区")
    choice = choose_partner(order(), [partner("P1", districts=(elsewhere,))], {})
    assert choice.partner_id is None
    assert choice.reason == "no_partner_covers_district"


def test_skills_must_match_the_category() -> None:
    partners = [partner("P1", categories=("air_conditioner",), rating=5.0),
                partner("P2", categories=("air_conditioner", "water_heater"), rating=2.0)]
    choice = choose_partner(order(), partners, {})
    assert choice.partner_id == "P2"
    assert [c.partner_id for c in choice.considered] == ["P2"]


def test_an_inactive_partner_is_never_chosen() -> None:
    partners = [partner("P1", rating=5.0, active=False), partner("P2", rating=1.0)]
    assert choose_partner(order(), partners, {}).partner_id == "P2"


def test_a_full_partner_is_skipped() -> None:
    partners = [partner("P1", rating=5.0, capacity=10), partner("P2", rating=3.0, capacity=10)]
    choice = choose_partner(order(), partners, {"P1": 10, "P2": 9})
    assert choice.partner_id == "P2"
    # the full partner is recorded as considered, ranked after everyone with room
    assert choice.considered == (Candidate("P2", 3.0, 9, 1), Candidate("P1", 5.0, 10, 0))


def test_a_partner_over_its_capacity_is_skipped_too() -> None:
    partners = [partner("P1", rating=5.0, capacity=10), partner("P2", rating=3.0, capacity=0)]
    choice = choose_partner(order(), partners, {"P1": 12})
    assert choice.partner_id is None
    assert choice.reason == "no_capacity_left"
    assert [c.capacity_left for c in choice.considered] == [0, 0]


def test_excluded_partner_is_not_chosen_again() -> None:
    partners = [partner("P1", rating=5.0), partner("P2", rating=3.0)]
    first = choose_partner(order(), partners, {})
    assert first.partner_id == "P1"
    again = choose_partner(order(excluded_partners=frozenset({"P1"})), partners, {})
    assert again.partner_id == "P2"
    assert [c.partner_id for c in again.considered] == ["P2"]


# -- who wins -------------------------------------------------------------------------------


def test_better_rated_wins_then_less_loaded() -> None:
    partners = [partner("P1", rating=4.5, capacity=20), partner("P2", rating=4.8, capacity=20),
                partner("P3", rating=4.8, capacity=10)]
    load = {"P1": 0, "P2": 10, "P3": 4}
    choice = choose_partner(order(), partners, load)
    assert choice.partner_id == "P3"  # 4/10 beats 10/20 at the same rating; P1 is rated lower
    assert [c.partner_id for c in choice.considered] == ["P3", "P2", "P1"]


def test_at_equal_load_ratio_more_capacity_left_wins() -> None:
    partners = [partner("P1", capacity=20), partner("P2", capacity=40)]
    choice = choose_partner(order(), partners, {"P1": 3, "P2": 6})
    assert choice.partner_id == "P2"


def test_a_full_tie_goes_to_the_lowest_partner_id() -> None:
    partners = [partner("P9"), partner("P10"), partner("P2")]
    assert choose_partner(order(), partners, {}).partner_id == "P10"


def test_choice_is_deterministic() -> None:
    partners = [partner(f"P{i}", rating=float(i % 3), capacity=5 + i % 4) for i in range(12)]
    load = {f"P{i}": i % 5 for i in range(12)}
    first = choose_partner(order(), partners, load)
    for seed in range(20):
        shuffled = partners[:]
        random.Random(seed).shuffle(shuffled)
        assert choose_partner(order(), shuffled, load) == first


def test_partners_may_be_given_as_a_one_shot_iterable() -> None:
    choice = choose_partner(order(), iter([partner("P1", rating=3.0), partner("P2")]), {})
    assert choice.partner_id == "P2"
    assert len(choice.considered) == 2


def test_the_choice_explains_itself_in_one_sentence() -> None:
    partners = [partner("P1", rating=4.5), partner("P2", rating=4.8),
                partner("P3", rating=4.0)]
    choice = choose_partner(order(), partners, {"P2": 3})
    assert choice.reason == "best_rated_least_loaded"
    assert choice.explanation == (
        "3 partners cover 天河区 for water_heater; chose P2 (rating 4.8, 3/20 today)")


# -- why nobody ------------------------------------------------------------------------------


def test_each_no_partner_reason() -> None:
    elsewhere = partner("P1", districts=(WUHOU,))
    wrong_skill = partner("P2", categories=("air_conditioner",))
    qualified = partner("P3", capacity=2)
    inactive = partner("P4", active=False)
    excluded = order(excluded_partners=frozenset({"P3"}))

    cases = [
        ([], order(), {}, "no_partner_covers_district"),
        ([elsewhere, inactive], order(), {}, "no_partner_covers_district"),
        ([elsewhere, wrong_skill], order(), {}, "no_partner_qualified_for_category"),
        ([wrong_skill, qualified], excluded, {}, "all_candidates_excluded"),
        ([wrong_skill, qualified], order(), {"P3": 2}, "no_capacity_left"),
        # excluded takes precedence only when everyone qualified is excluded
        ([qualified, replace(qualified, partner_id="P5")], excluded, {"P5": 2},
         "no_capacity_left"),
    ]
    for partners, placed, load, reason in cases:
        choice = choose_partner(placed, partners, load)
        assert (choice.partner_id, choice.reason) == (None, reason), partners
        assert choice.explanation


def test_no_partner_explanations_name_the_gap() -> None:
    nobody = choose_partner(order(), [], {})
    assert "天河区" in nobody.explanation
    unskilled = choose_partner(order(), [partner("P1", categories=("fridge",))], {})
    assert "water_heater" in unskilled.explanation
    full = choose_partner(order(excluded_partners=frozenset({"P1"})),
                          [partner("P1"), partner("P2", capacity=1)], {"P2": 1})
    assert full.explanation == (
        "2 partners cover 天河区 for water_heater; 1 excluded, 1 at daily capacity")


# -- property -------------------------------------------------------------------------------

DISTRICTS = (TIANHE, YUEXIU, WUHOU)
CATEGORIES = ("water_heater", "air_conditioner", "fridge")


@st.composite
def markets(draw: st.DrawFn) -> tuple[OrderToPlace, list[PartnerProfile], dict[str, int]]:
    count = draw(st.integers(min_value=0, max_value=8))
    partners = [
        PartnerProfile(
            partner_id=f"P{i}", name=f"shop {i}",
            districts=frozenset(draw(st.sets(st.sampled_from(DISTRICTS)))),
            categories=frozenset(draw(st.sets(st.sampled_from(CATEGORIES)))),
            daily_capacity=draw(st.integers(min_value=0, max_value=6)),
            rating=draw(st.sampled_from([0.0, 3.5, 4.0, 4.8, 5.0])),
            active=draw(st.booleans()),
        )
        for i in range(count)
    ]
    ids = [p.partner_id for p in partners]
    load = draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 8))) if ids else {}
    excluded = frozenset(draw(st.sets(st.sampled_from(ids)))) if ids else frozenset()
    placed = order(order_type=draw(st.sampled_from(["install", "repair", "maintenance"])),
                   category=draw(st.sampled_from(CATEGORIES)),
                   district=draw(st.sampled_from(DISTRICTS)), excluded_partners=excluded)
    return placed, partners, load


def qualifies(p: PartnerProfile, placed: OrderToPlace, load: dict[str, int]) -> bool:
    return (p.active and placed.district in p.districts and placed.category in p.categories
            and p.partner_id not in placed.excluded_partners
            and load.get(p.partner_id, 0) < p.daily_capacity)


def rank(p: PartnerProfile, load: dict[str, int]) -> tuple:
    used = load.get(p.partner_id, 0)
    return (-p.rating, Fraction(used, p.daily_capacity), used - p.daily_capacity, p.partner_id)


@given(markets())
def test_the_chosen_partner_is_qualified_and_nobody_qualified_outranks_it(market: tuple) -> None:
    placed, partners, load = market
    choice = choose_partner(placed, partners, load)
    qualified = [p for p in partners if qualifies(p, placed, load)]
    if not qualified:
        assert choice.partner_id is None
        assert choice.reason != "best_rated_least_loaded"
        return
    chosen = next(p for p in partners if p.partner_id == choice.partner_id)
    assert qualifies(chosen, placed, load)
    assert chosen.partner_id not in placed.excluded_partners
    assert load.get(chosen.partner_id, 0) < chosen.daily_capacity
    assert all(rank(chosen, load) <= rank(other, load) for other in qualified)
    assert choice.reason == "best_rated_least_loaded"
    assert choice.considered[0].partner_id == chosen.partner_id
    assert all(c.partner_id not in placed.excluded_partners for c in choice.considered)
