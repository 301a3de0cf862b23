"""The auditor's checks on logs captured from the running services (bench/data): each kind of
tampering is found at its first bad position, and each kind of open loop, and nothing else."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serviceloop import audit
from serviceloop.clock import isoformat
from serviceloop.eventstore import Envelope, canonical_json

CAPTURED = json.loads((Path(__file__).resolve().parents[2] / "bench" / "data" /
                       "audit_template.json").read_text())
CLOSED, OPEN = CAPTURED["closed_order"], CAPTURED["open_order"]
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def logs() -> dict[str, list[dict]]:
    return copy.deepcopy(CAPTURED["logs"])


def first_break(breaks: list[dict]) -> tuple[str, int]:
    assert breaks, "no break found"
    return min((b["service"], b["position"]) for b in breaks)


def rehash(log: list[dict], start: int) -> None:
    """Recompute the chain from index `start` on, as a forger who rewrites the tail would."""
    prev = log[start - 1]["hash"] if start else "0" * 64
    for body in log[start:]:
        body["prev_hash"] = prev
        envelope = Envelope.from_dict(body)
        body["hash"] = prev = envelope.computed_hash()


def test_the_captured_logs_verify_clean(logs):
    assert audit.verify(logs) == []
    assert audit.verify_against(logs, audit.checkpoint(logs, "then")) == []


def test_an_edited_payload_is_found_at_its_position(logs):
    logs["dispatch"][6]["payload"]["labour_fee_cents"] = 9000  # order_completed
    breaks = audit.verify(logs)
    assert first_break(breaks) == ("dispatch", 7)
    assert [b["kind"] for b in breaks] == ["hash"]


def test_a_deleted_row_is_found_at_the_gap(logs):
    del logs["orders"][4]  # position 5
    breaks = audit.verify(logs)
    assert first_break(breaks) == ("orders", 5)
    assert {(b["position"], b["kind"]) for b in breaks} >= {(5, "gap"), (6, "chain")}


def test_reordered_positions_are_found_at_the_first_swap(logs):
    log = logs["settlement"]
    log[2], log[3] = log[3], log[2]
    breaks = audit.verify(logs)
    assert first_break(breaks) == ("settlement", 3)
    assert {b["kind"] for b in breaks} >= {"gap", "chain"}


def test_a_forged_hash_breaks_its_event_and_the_next_link(logs):
    logs["callback"][1]["hash"] = "f" * 64
    breaks = audit.verify(logs)
    assert [(b["position"], b["kind"]) for b in breaks] == [(2, "hash"), (3, "chain")]


def test_a_truncated_tail_is_found_by_what_points_at_it_and_by_the_checkpoint(logs):
    point = audit.checkpoint(logs, "then")
    completed = logs["dispatch"][6]["event_id"]
    del logs["dispatch"][6:]  # the completion and the second order's dispatch are gone
    breaks = audit.verify(logs)
    assert {b["kind"] for b in breaks} == {"causation"}  # the chain itself still holds
    assert any(completed in b["detail"] for b in breaks)
    assert audit.verify_against(logs, point) == [{
        "service": "dispatch", "position": 7, "kind": "shrunk",
        "detail": "position 7 missing: the log shrank from 9 to 6"}]


def test_a_row_deleted_below_the_checkpoint_is_named_by_the_checkpoint(logs):
    point = audit.checkpoint(logs, "then")
    del logs["dispatch"][2]  # position 3
    (found,) = audit.verify_against(logs, point)
    assert (found["service"], found["position"], found["kind"]) == ("dispatch", 3, "shrunk")
    assert found["detail"] == "position 3 missing: 8 of the 9 events the checkpoint saw are left"


def test_a_log_rewritten_with_every_hash_recomputed_fails_only_against_the_checkpoint(logs):
    point = audit.checkpoint(logs, "then")
    logs["settlement"][3]["payload"]["lines"][0]["approved_cents"] += 1
    rehash(logs["settlement"], 3)
    assert audit.verify(logs) == []
    kinds = {(b["service"], b["kind"]) for b in audit.verify_against(logs, point)}
    assert kinds == {("settlement", "head"), ("settlement", "merkle")}


def test_a_log_that_only_grew_since_its_checkpoint_passes(logs):
    point = audit.checkpoint({s: log[:-1] for s, log in logs.items()}, "earlier")
    assert audit.verify_against(logs, point) == []


def test_a_payload_that_breaks_its_contract_is_found(logs):
    body = logs["orders"][2]  # order_created
    body["payload"]["order_type"] = "teleport"
    rehash(logs["orders"], 2)
    (found,) = audit.verify(logs)
    assert (found["position"], found["kind"]) == (3, "contract")


# -- open loops ----------------------------------------------------------------------------


def loops_of(logs: dict) -> dict[str, str]:
    return {row["order_id"]: row["missing"] for row in audit.open_loops(logs, NOW)}


def without(logs: dict, service: str, event_type: str, order_id: str = CLOSED) -> dict:
    return {**logs, service: [e for e in logs[service] if not (
        e["event_type"] == event_type and e["correlation_id"] == order_id)]}


def unsettled(logs: dict) -> dict:
    """Before the period closed: no statement in settlement, so nothing closed in orders."""
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
    return without(logs, "orders", "order_settled")


def test_the_closed_loop_is_not_listed_and_the_assigned_one_is(logs):
    assert loops_of(logs) == {OPEN: "never_completed"}


def test_created_but_never_dispatched(logs):
    logs = without(logs, "dispatch", "order_assigned", OPEN)
    assert loops_of(logs)[OPEN] == "never_dispatched"


def test_completed_but_never_verified(logs):
    logs = unsettled(without(logs, "callback", "order_verified"))
    assert loops_of(logs)[CLOSED] == "never_verified"


def test_verified_but_never_settled(logs):
    logs = unsettled(logs)
    assert loops_of(logs) == {OPEN: "never_completed", CLOSED: "never_settled"}


def test_settled_without_verification_is_named(logs):
    logs = without(logs, "callback", "order_verified")
    (row,) = [r for r in audit.open_loops(logs, NOW) if r["order_id"] == CLOSED]
    assert row["missing"] == "settled_without_verification" and row["sla_broken"]


def test_paid_but_never_closed_in_orders(logs):
    logs = without(logs, "orders", "order_settled")  # orders never read the period's close
    (row,) = [r for r in audit.open_loops(logs, NOW) if r["order_id"] == CLOSED]
    assert row["missing"] == "settled_not_closed_in_orders"
    assert row["since"] == next(e["occurred_at"] for e in logs["settlement"]
                                if e["event_type"] == "period_closed")


def test_closed_in_orders_but_not_settled_is_named_by_what_the_other_log_lacks(logs):
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
    assert loops_of(logs) == {OPEN: "never_completed",
                              CLOSED: "closed_in_orders_but_never_settled"}
    logs = without(logs, "callback", "order_verified")
    (row,) = [r for r in audit.open_loops(logs, NOW) if r["order_id"] == CLOSED]
    assert row["missing"] == "closed_in_orders_but_never_verified"
    assert row["sla"] == "must never happen" and row["sla_broken"]


def test_an_order_closed_in_orders_and_never_dispatched_is_listed(logs):
    logs = without(logs, "dispatch", "order_assigned")
    assert loops_of(logs)[CLOSED] == "closed_in_orders_but_never_dispatched"


def close_unverified(logs: dict) -> dict:
    """The customer never answered and a supervisor closed the task: callback and orders
    both say closed, settlement pays nothing."""
    logs = unsettled(logs)
    (verified,) = [e for e in logs["callback"] if e["event_type"] == "order_verified"
                   and e["correlation_id"] == CLOSED]
    verified["event_type"] = "order_unverified"
    logs["callback"].append({**verified, "event_type": "unverified_closed", "payload": {
        "task_id": verified["payload"]["task_id"], "order_id": CLOSED,
        "supervisor_id": "s1", "note": "three calls, no answer"}})
    return logs


def test_closed_unverified_by_a_supervisor_is_closed_when_orders_agrees(logs):
    logs = close_unverified(logs)
    assert loops_of(logs)[CLOSED] == "closed_unverified_not_closed_in_orders"
    (recorded,) = [e for e in logs["orders"] if e["event_type"] == "order_verification_recorded"
                   and e["correlation_id"] == CLOSED]
    logs["orders"].append({**recorded, "payload": {
        **recorded["payload"], "outcome": "closed_unverified", "status": "closed"}})
    assert CLOSED not in loops_of(logs)


def test_disputed_and_never_revisited(logs):
    for event in logs["callback"]:
        if event["event_type"] == "order_verified":
            event["event_type"] = "order_disputed"
    logs = unsettled(logs)
    assert loops_of(logs)[CLOSED] == "disputed_never_revisited"


def test_a_dispute_revisited_and_verified_closes_the_loop(logs):
    (completed,) = [e for e in logs["dispatch"] if e["event_type"] == "order_completed"
                    and e["correlation_id"] == CLOSED]
    (verified,) = [e for e in logs["callback"] if e["event_type"] == "order_verified"
                   and e["correlation_id"] == CLOSED]
    # the second visit's completion and verification, after the first visit's dispute
    logs["dispatch"].append(copy.deepcopy(completed))
    logs["callback"].append({**copy.deepcopy(verified),
                             "payload": {**verified["payload"], "visit": 2}})
    verified["event_type"] = "order_disputed"
    assert CLOSED not in loops_of(logs)
    logs = unsettled(logs)
    logs["callback"].pop()  # the re-visit happened, its verification not yet
    assert loops_of(logs)[CLOSED] == "never_verified"
    logs["dispatch"].pop()  # nor the re-visit
    assert loops_of(logs)[CLOSED] == "disputed_never_revisited"


def statement_lines(logs: dict) -> list[dict]:
    return [line for e in logs["settlement"] if e["event_type"] == "period_closed"
            for line in e["payload"]["lines"] if line["order_id"] == CLOSED]


def test_work_the_customer_paid_for_is_settled_with_nothing_payable(logs):
    for line in statement_lines(logs):
        line["payable_cents"] = 0
    assert CLOSED not in loops_of(logs)  # decided for good, and orders closed it
    unclosed = without(logs, "orders", "order_settled")
    assert loops_of(unclosed)[CLOSED] == "settled_not_closed_in_orders"
    for line in statement_lines(unclosed):
        line["held_cents"] = 1000  # still held at the close: not settled yet
    assert loops_of(unclosed)[CLOSED] == "never_settled"


def test_unverified_after_every_attempt_is_held(logs):
    for event in logs["callback"]:
        if event["event_type"] == "order_verified":
            event["event_type"] = "order_unverified"
    logs = unsettled(logs)
    assert loops_of(logs)[CLOSED] == "unverified_held"


def test_a_task_sent_back_by_a_supervisor_is_waiting_for_verification_again(logs):
    logs = close_unverified(logs)
    closed = logs["callback"][-1]
    closed["event_type"] = "task_returned"
    assert loops_of(logs)[CLOSED] == "never_verified"


def test_a_cancelled_order_is_no_open_loop(logs):
    created = next(e for e in logs["orders"] if e["event_type"] == "order_created"
                   and e["correlation_id"] == OPEN)
    logs["orders"].append({**created, "event_type": "order_cancelled",
                           "payload": {"order_id": OPEN}})
    assert loops_of(logs) == {}


def test_since_and_partner_narrow_the_list(logs):
    assert audit.open_loops(logs, NOW, partner="p-nobody") == []
    assert audit.open_loops(logs, NOW, since=NOW) == []
    assert len(audit.open_loops(logs, NOW, partner=CAPTURED["partner_id"])) == 1


def test_ages_are_counted_from_the_last_step_to_the_moment_given(logs):
    # every captured event happened at 09:00; the open order was assigned then
    (row,) = audit.open_loops(logs, NOW)
    assert (row["since"], row["age_hours"], row["sla_broken"]) == (
        "2026-11-02T09:00:00.000000Z", 1.0, False)
    (row,) = audit.open_loops(logs, NOW + timedelta(hours=26, minutes=30))
    assert (row["age_hours"], row["sla_broken"]) == (27.5, True)


def test_loops_are_aged_at_the_services_time_never_before_the_newest_event(logs):
    newest = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    later, earlier = newest + timedelta(days=3), newest - timedelta(days=300)
    assert audit.loops_now(logs, later) == (later, "the services' clock")
    assert audit.loops_now(logs, earlier)[0] == newest  # a clock behind the services'
    assert audit.loops_now(logs, later, given=earlier) == (earlier, "--now")


def test_replay_puts_every_event_after_its_cause(logs):
    events = [{**e, "source": s} for s, log in logs.items() for e in log
              if e["correlation_id"] == CLOSED]
    ordered = audit.causal_order(reversed(events))
    seen = set()
    for event in ordered:
        assert event["causation_id"] in seen or event["causation_id"] not in {
            e["event_id"] for e in events}
        seen.add(event["event_id"])
    assert ordered[0]["event_type"] == "order_created"
    assert audit.state_as_of(ordered, NOW)["callback"]["last_event"] == "order_verified"
    assert canonical_json(ordered[-1]["payload"])  # every event kept whole


# -- the order's state in each service as of a moment --------------------------------------

# minutes after 09:00 at which each of the closed order's events happened: (service, position)
HISTORY = {("orders", 3): 0, ("dispatch", 2): 1, ("settlement", 3): 1, ("dispatch", 3): 2,
           ("orders", 4): 2, ("dispatch", 4): 10, ("orders", 5): 10, ("dispatch", 5): 11,
           ("dispatch", 6): 30, ("dispatch", 7): 60, ("orders", 6): 60, ("callback", 1): 61,
           ("settlement", 4): 61, ("callback", 2): 80, ("callback", 3): 90, ("orders", 7): 90,
           ("settlement", 5): 91, ("orders", 8): 200}


def at(minutes: int) -> datetime:
    return datetime(2026, 11, 2, 9, 0, tzinfo=UTC) + timedelta(minutes=minutes)


@pytest.fixture
def history(logs) -> list[dict]:
    """The closed order's events from the four logs, spread over the morning as above."""
    events = [{**e, "source": s} for s, log in logs.items() for e in log
              if e["correlation_id"] == CLOSED]
    for event in events:
        event["occurred_at"] = isoformat(at(HISTORY[event["source"], event["global_position"]]))
    return events


def test_before_the_order_existed_no_service_knew_it(history):
    assert audit.state_as_of(history, at(-1)) == dict.fromkeys(
        ("orders", "dispatch", "callback", "settlement"))


def test_just_after_assignment_orders_and_dispatch_name_the_partner(history):
    partner = CAPTURED["partner_id"]
    state = audit.state_as_of(history, at(5))
    assert {k: state["orders"][k] for k in ("status", "partner_id", "order_type", "events")} \
        == {"status": "assigned", "partner_id": partner, "order_type": "repair", "events": 2}
    assert {k: state["dispatch"][k] for k in ("status", "partner_id", "attempt", "visits")} \
        == {"status": "assigned", "partner_id": partner, "attempt": 1, "visits": 0}
    assert state["callback"] is None
    assert state["settlement"]["facts_recorded"] and "claim_id" not in state["settlement"]


def test_on_site_the_appointment_is_known_and_nothing_is_claimed(history):
    state = audit.state_as_of(history, at(45))
    assert state["orders"]["status"] == "accepted"  # what orders had heard from dispatch
    dispatch = state["dispatch"]
    assert (dispatch["status"], dispatch["window_start"], dispatch["window_end"],
            dispatch["within_window"]) == (
        "on_site", "2026-11-02T09:00:00.000000Z", "2026-11-02T11:00:00.000000Z", True)
    assert (state["callback"], state["dispatch"]["last_event"]) == (None, "partner_arrived")


def test_after_completion_the_task_is_leased_and_the_claim_held_for_the_callback(history):
    state = audit.state_as_of(history, at(85))
    assert (state["orders"]["status"], state["dispatch"]["status"],
            state["dispatch"]["visits"], state["dispatch"]["labour_fee_cents"]) == (
        "completed", "completed", 1, 6000)
    callback = state["callback"]
    assert (callback["task_status"], callback["visit"], callback["outcome"]) == (
        "leased", 1, None)
    settlement = state["settlement"]
    assert (settlement["callback"], settlement["decisions"], settlement["held_cents"],
            settlement["approved_cents"]) == (
        "pending", {"labour": "held", "travel": "held"}, 7500, 0)


def test_once_verified_the_claim_is_approved_and_once_paid_orders_closes(history):
    state = audit.state_as_of(history, at(120))
    assert (state["orders"]["status"], state["orders"]["verification"]) == (
        "verified", "verified")
    assert (state["callback"]["task_status"], state["callback"]["satisfaction"]) == (
        "verified", 5)
    assert (state["settlement"]["callback"], state["settlement"]["approved_cents"]) == (
        "verified", 7500)
    assert "paid_cents" not in state["orders"]
    closed = audit.state_as_of(history, at(200))["orders"]
    assert (closed["status"], closed["paid_cents"], closed["settled_period"],
            closed["last_event"]) == ("closed", 7500, "2026-11", "order_settled")


def test_the_progress_bar_shows_count_total_and_share():
    assert audit.progress_bar("orders", 1200, 2400, width=10) == (
        "orders      [#####·····]     1,200/2,400      50%")
    assert audit.progress_bar("dispatch", 0, 0, width=4).endswith("[####]         0/0         100%")
    grown = audit.progress_bar("callback", 5, 3, width=4)  # the log grew while being read
    assert "5/5" in grown and grown.endswith("100%")


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_verification_finds_exactly_what_one_pass_finds(logs, workers):
    logs["orders"][6]["payload"]["status"] = "closed"
    del logs["dispatch"][3]
    logs["callback"][1]["hash"] = "f" * 64
    one_pass = audit.verify(logs, workers=1)
    assert len(one_pass) >= 4
    assert audit.verify(logs, workers=workers) == one_pass
    assert audit.verify(CAPTURED["logs"], workers=workers) == []


def test_an_automatic_confirmation_shows_sending_then_a_problem_goes_to_a_person():
    def event(position: int, kind: str, **payload: object) -> dict:
        return {"correlation_id": "o-1", "event_type": kind, "global_position": position,
                "occurred_at": f"2026-11-02T08:0{position}:00Z", "actor": "system",
                "payload": {"task_id": "t-1", "order_id": "o-1", **payload}}

    created = event(1, "verification_task_created", review_of=None, visit=1, channel="auto",
                    due_at="2026-11-04T08:00:00Z")
    sending = event(2, "confirmation_send_started", attempt=1, idempotency_key="t-1:2")
    problem = event(3, "problem_reported", reply="2", priority=1)
    assert audit.fold_service("callback", [created, sending])["task_status"] == "sending"
    state = audit.fold_service("callback", [created, sending, problem])
    assert (state["task_status"], state["channel"], state["attempts"]) == ("open", "agent", 0)
