"""The auditor's checks on logs captured from the running services (bench/data): each kind of
tampering is found at its first bad position, and each kind of open loop, and nothing else."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serviceloop import audit
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
        "service": "dispatch", "position": 6, "kind": "shrunk",
        "detail": "the checkpoint saw 9 events"}]


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


def test_the_closed_loop_is_not_listed_and_the_assigned_one_is(logs):
    assert loops_of(logs) == {OPEN: "never_completed"}


def test_created_but_never_dispatched(logs):
    logs = without(logs, "dispatch", "order_assigned", OPEN)
    assert loops_of(logs)[OPEN] == "never_dispatched"


def test_completed_but_never_verified(logs):
    logs = without(logs, "callback", "order_verified")
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
    assert loops_of(logs)[CLOSED] == "never_verified"


def test_verified_but_never_settled(logs):
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
    assert loops_of(logs) == {OPEN: "never_completed", CLOSED: "never_settled"}


def test_settled_without_verification_is_named(logs):
    logs = without(logs, "callback", "order_verified")
    (row,) = [r for r in audit.open_loops(logs, NOW) if r["order_id"] == CLOSED]
    assert row["missing"] == "settled_without_verification" and row["sla_broken"]


def test_disputed_and_never_revisited(logs):
    for event in logs["callback"]:
        if event["event_type"] == "order_verified":
            event["event_type"] = "order_disputed"
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
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
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
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
    assert CLOSED not in loops_of(logs)
    for line in statement_lines(logs):
        line["held_cents"] = 1000  # still held at the close: not settled yet
    assert loops_of(logs)[CLOSED] == "never_settled"


def test_unverified_after_every_attempt_is_held(logs):
    for event in logs["callback"]:
        if event["event_type"] == "order_verified":
            event["event_type"] = "order_unverified"
    logs = without(logs, "settlement", "period_closed", "period-2026-11")
    assert loops_of(logs)[CLOSED] == "unverified_held"


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
    assert audit.state_as_of(ordered, NOW)["callback"]["event_type"] == "order_verified"
    assert canonical_json(ordered[-1]["payload"])  # every event kept whole


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_verification_finds_exactly_what_one_pass_finds(logs, workers):
    logs["orders"][6]["payload"]["status"] = "closed"
    del logs["dispatch"][3]
    logs["callback"][1]["hash"] = "f" * 64
    one_pass = audit.verify(logs, workers=1)
    assert len(one_pass) >= 4
    assert audit.verify(logs, workers=workers) == one_pass
    assert audit.verify(CAPTURED["logs"], workers=workers) == []
