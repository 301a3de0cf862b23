"""A verification task's rules: when it is due and in what order, who may take it (one agent
at a time), what a dispute means for the next visit, and how the automatic channel claims,
sends and reads the customer's reply."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from contracts.errors import Conflict
from services.callback import domain

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = domain.Settings()
OPEN = domain.Task("t-1", "o-1", "p-1", "repair", "agent", "open", 1, 0, None, None,
                   {"parts": []}, None, 1)


def test_an_open_task_is_leased_until_the_lease_runs_out():
    event = domain.lease(OPEN, "a-1", NOW, SETTINGS)
    assert event.event_type == "task_leased"
    assert event.payload["agent_id"] == "a-1"
    assert event.payload["lease_until"] == "2026-11-23T10:15:00.000000Z"


def test_a_task_whose_lease_ran_out_can_be_taken_by_another_agent():
    held = replace(OPEN, status="leased", leased_by="a-1", lease_until=NOW - timedelta(seconds=1))
    assert domain.lease(held, "a-2", NOW, SETTINGS).payload["agent_id"] == "a-2"


@pytest.mark.parametrize("taken", [
    {"status": "leased", "leased_by": "a-1", "lease_until": NOW + timedelta(minutes=5)},
    {"status": "verified"},
    {"status": "disputed"},
    {"status": "unverified"},
    {"status": "awaiting_reply", "channel": "sms"},
])
def test_a_task_taken_or_finished_meanwhile_is_refused(taken):
    # the agent picked it from a list read a moment before another agent took or verified it
    with pytest.raises(Conflict) as refused:
        domain.lease(replace(OPEN, **taken), "a-2", NOW, SETTINGS)
    assert refused.value.code == "task_taken"


def completion(order_type: str, parts: list | None = None) -> dict:
    return {"order_id": "o-1", "partner_id": "p-1", "order_type": order_type,
            "category": "water_heater", "phone": "13700000000", "work_done": "换加热管",
            "fault_code": "WH-E1", "parts": parts or [], "installation_barcode": None,
            "labour_fee_cents": 8000, "travel_fee_cents": 0, "parts_fee_cents": 0,
            "customer_paid_cents": 0}


PART = {"part_code": "WH-P-ELEMENT", "old_serial": "O1", "new_serial": "N1", "fee_cents": 1}


def test_a_completed_order_is_due_for_verification_within_48_hours_by_default():
    event = domain.task_for(completion("repair"), "e-1", 1, NOW, domain.Settings())
    assert event.payload["due_at"] == "2026-11-25T10:00:00.000000Z"
    shorter = domain.Settings(due_within=timedelta(hours=24))
    assert domain.task_for(completion("repair"), "e-1", 1, NOW, shorter).payload["due_at"] \
        == "2026-11-24T10:00:00.000000Z"


@pytest.mark.parametrize(("order_type", "parts", "priority"), [
    ("complaint", [], 1),
    ("repair", [PART], 1),
    ("repair", [], 2),
    ("maintenance", [], 3),
    ("install", [], 3),
])
def test_repairs_with_parts_claimed_and_complaints_are_called_first(order_type, parts,
                                                                    priority):
    event = domain.task_for(completion(order_type, parts), "e-1", 1, NOW, SETTINGS)
    assert event.payload["priority"] == priority


LEASED = replace(OPEN, status="leased", leased_by="a-1", lease_until=NOW + timedelta(minutes=5))


def outcome(**data) -> dict:
    return {"agent_id": "a-1", "outcome": "disputed", "dispute_reasons": [],
            "complaint_requested": False, "satisfaction": None, "customer_paid_cents": None,
            "notes": "", **data}


@pytest.mark.parametrize(("reason", "about_partner"), [
    ("no_visit", True), ("part_not_replaced", True), ("overcharged", True), ("rude", True),
    ("not_fixed", False), ("other", False),
])
def test_each_dispute_reason_says_whether_the_next_visit_goes_to_another_partner(
        reason, about_partner):
    [event] = domain.record(LEASED, outcome(dispute_reasons=[reason]), NOW, SETTINGS)
    assert event.event_type == "order_disputed"
    assert (event.payload["reasons"], event.payload["about_partner"]) == ([reason],
                                                                          about_partner)


def test_a_dispute_is_about_the_partner_if_any_of_its_reasons_is():
    [event] = domain.record(LEASED, outcome(dispute_reasons=["not_fixed", "rude", "not_fixed"],
                                            complaint_requested=True), NOW, SETTINGS)
    assert event.payload["reasons"] == ["not_fixed", "rude"]
    assert event.payload["about_partner"] and event.payload["complaint_requested"]


# -- the automatic channel ------------------------------------------------------------------

AUTO = replace(OPEN, order_type="install", channel="auto", version=1, next_attempt_at=NOW)
AWAITING = replace(AUTO, status="awaiting_reply", version=3, next_attempt_at=None,
                   reply_by=NOW + timedelta(hours=12))


@pytest.mark.parametrize("reply", ["1", " 1 ", "OK", "确认"])
def test_a_confirming_reply_verifies_the_order(reply):
    [event] = domain.auto_reply(AWAITING, reply, NOW, SETTINGS)
    assert (event.event_type, event.payload["channel"]) == ("order_verified", "auto")


@pytest.mark.parametrize("reply", ["2", " 2", "有问题", "NO"])
def test_a_reply_reporting_a_problem_goes_to_the_top_of_the_agents_queue(reply):
    [event] = domain.auto_reply(AWAITING, reply, NOW, SETTINGS)
    assert event.event_type == "problem_reported"
    assert (event.payload["reply"], event.payload["priority"]) == (reply.strip(), 1)


@pytest.mark.parametrize("reply", ["", "3", "maybe", "12"])
def test_any_other_reply_counts_as_no_answer(reply):
    events = domain.auto_reply(AWAITING, reply, NOW, SETTINGS)
    assert [e.event_type for e in events] == ["callback_unanswered"]
    assert events[0].payload["attempt"] == 1


def test_a_due_confirmation_is_claimed_with_a_key_of_its_own_before_it_is_sent():
    claim = domain.start_send(AUTO, NOW, SETTINGS)
    assert claim.event_type == "confirmation_send_started"
    assert claim.payload["idempotency_key"] == "t-1:1"  # the task's version: one per send
    assert claim.payload["retry_at"] == "2026-11-23T10:05:00.000000Z"
    again = domain.start_send(replace(AUTO, attempts=1, version=5), NOW, SETTINGS)
    assert again.payload["idempotency_key"] == "t-1:5"
    # sent back by a supervisor: attempt 1 again, and yet a new message
    sent_back = domain.start_send(replace(AUTO, attempts=0, version=9), NOW, SETTINGS)
    assert (sent_back.payload["attempt"], sent_back.payload["idempotency_key"]) == (1, "t-1:9")


def test_a_claim_is_taken_again_only_after_it_ran_out_and_with_the_same_key():
    sending = replace(AUTO, status="sending", version=2, send_key="t-1:1",
                      next_attempt_at=NOW + timedelta(minutes=5))
    with pytest.raises(Conflict) as taken:
        domain.start_send(sending, NOW, SETTINGS)  # another replica is sending it
    assert taken.value.code == "not_due"
    later = NOW + timedelta(minutes=6)
    assert domain.start_send(sending, later, SETTINGS).payload["idempotency_key"] == "t-1:1"


@pytest.mark.parametrize("state", [
    {"status": "awaiting_reply"}, {"status": "verified"},
    {"next_attempt_at": NOW + timedelta(minutes=1)}, {"channel": "agent"},
])
def test_a_confirmation_not_due_is_not_claimed(state):
    with pytest.raises(Conflict):
        domain.start_send(replace(AUTO, **state), NOW, SETTINGS)


def test_a_send_is_recorded_only_by_the_claim_it_was_for():
    sending = replace(AUTO, status="sending", version=2, send_key="t-1:1")
    recorded = domain.sent(sending, "t-1:1", "m-1", NOW, SETTINGS)
    assert (recorded.event_type, recorded.payload["attempt"]) == ("confirmation_requested", 1)
    with pytest.raises(Conflict):
        domain.sent(sending, "t-1:0", "m-0", NOW, SETTINGS)
    with pytest.raises(Conflict):
        domain.sent(replace(sending, status="awaiting_reply"), "t-1:1", "m-1", NOW, SETTINGS)


def test_no_reply_is_counted_only_once_the_reply_time_passed():
    with pytest.raises(Conflict):
        domain.reply_overdue(AWAITING, NOW, SETTINGS)
    late = NOW + timedelta(hours=12, seconds=1)
    assert [e.event_type for e in domain.reply_overdue(AWAITING, late, SETTINGS)] == [
        "callback_unanswered"]
