"""A verification task as plain Python: state in, events out, no I/O and no clock reads.

A task is open (in the agents' queue, or due for the automatic channel), leased to one agent
at a time, and ends verified, disputed or — after the last unanswered attempt — unverified,
where a supervisor closes it or sends it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.callback import PARTNER_FAULT_REASONS
from contracts.errors import Conflict, ValidationFailed
from serviceloop.clock import isoformat, parse_time
from serviceloop.eventstore import NewEvent

CONFIRM_REPLIES = frozenset({"1", "y", "yes", "ok", "是", "确认", "满意"})


@dataclass(frozen=True)
class Settings:
    due_within: timedelta = timedelta(hours=48)
    lease: timedelta = timedelta(minutes=15)
    attempts: int = 3
    retry_after: tuple[timedelta, ...] = (timedelta(hours=2), timedelta(hours=6))
    reply_within: timedelta = timedelta(hours=12)
    auto_verify_installs: bool = True
    review_share: float = 0.1  # of automatic verifications, also checked by a person


@dataclass(frozen=True)
class Task:
    task_id: str
    order_id: str
    partner_id: str
    order_type: str
    channel: str
    status: str
    visit: int
    attempts: int
    leased_by: str | None
    lease_until: datetime | None
    report: dict
    review_of: str | None
    version: int

    @classmethod
    def from_row(cls, row: dict) -> Task:
        return cls(row["task_id"], row["order_id"], row["partner_id"], row["order_type"],
                   row["channel"], row["status"], row["visit"], row["attempts"],
                   row["leased_by"], parse_time(row["lease_until"]) if row["lease_until"]
                   else None, json.loads(row["report"]), row["review_of"], row["version"])


def priority(order_type: str, report: dict) -> int:
    """Lower is first: complaints and repairs with parts claimed, then repairs, then the rest."""
    if order_type == "complaint" or (order_type == "repair" and report["parts"]):
        return 1
    if order_type == "repair":
        return 2
    return 3


def task_for(completion: dict, completion_event_id: str, visit: int, now: datetime,
             settings: Settings) -> NewEvent:
    """The task an `order_completed` event makes (its id is the completion's event id)."""
    report = {key: completion[key] for key in (
        "work_done", "fault_code", "parts", "installation_barcode", "labour_fee_cents",
        "travel_fee_cents", "parts_fee_cents", "customer_paid_cents")}
    auto = settings.auto_verify_installs and completion["order_type"] == "install"
    return NewEvent("verification_task_created", {
        "task_id": completion_event_id, "order_id": completion["order_id"],
        "partner_id": completion["partner_id"], "order_type": completion["order_type"],
        "category": completion["category"], "phone": completion["phone"],
        "channel": "auto" if auto else "agent",
        "priority": priority(completion["order_type"], report),
        "due_at": isoformat(now + settings.due_within), "visit": visit, "report": report,
        "review_of": None})


def review_task(verified_task: dict, now: datetime, settings: Settings) -> NewEvent:
    """A person's check of an automatic verification (the quality sample)."""
    return NewEvent("verification_task_created", {
        **{k: verified_task[k] for k in ("order_id", "partner_id", "order_type", "category",
                                         "phone", "visit")},
        "task_id": f"review-{verified_task['task_id']}", "channel": "agent",
        "priority": 3, "due_at": isoformat(now + settings.due_within),
        "report": json.loads(verified_task["report"]), "review_of": verified_task["task_id"]})


def sampled(order_id: str, share: float) -> bool:
    """Whether an order falls in the review sample: a fixed function of its id, so a replay
    or a second replica decides the same."""
    bucket = int(hashlib.sha256(order_id.encode()).hexdigest()[:8], 16) % 10_000
    return bucket < share * 10_000


def lease(task: Task, agent_id: str, now: datetime, settings: Settings) -> NewEvent:
    """Hand a free task to an agent: an open one, or one whose lease ran out. The agent chose
    it from a list read a moment ago; meanwhile another may have taken or finished it."""
    expired = task.status == "leased" and task.lease_until is not None and task.lease_until < now
    if task.channel != "agent" or not (task.status == "open" or expired):
        raise Conflict(f"task {task.task_id} is {task.status}: no longer free to call",
                       {"task_id": [task.status]}, code="task_taken")
    return NewEvent("task_leased", {"task_id": task.task_id, "order_id": task.order_id,
                                    "agent_id": agent_id,
                                    "lease_until": isoformat(now + settings.lease)})


def record(task: Task, data: dict, now: datetime, settings: Settings) -> list[NewEvent]:
    """An agent's outcome for a task it holds."""
    if task.status != "leased" or task.leased_by != data["agent_id"]:
        raise Conflict(f"task {task.task_id} is not leased to agent {data['agent_id']}",
                       {"task_id": [task.status]}, code="task_not_leased_to_you")
    if task.lease_until and task.lease_until < now:
        raise Conflict(f"your lease on task {task.task_id} ran out; take the next task",
                       {"task_id": ["lease expired"]}, code="lease_expired")
    outcome = data["outcome"]
    if outcome == "disputed" and not data["dispute_reasons"]:
        raise ValidationFailed("a dispute needs what the customer disputes",
                               {"dispute_reasons": ["at least one"]}, code="reasons_required")
    if outcome != "disputed" and (data["dispute_reasons"] or data["complaint_requested"]):
        raise ValidationFailed("dispute reasons and complaints go with a dispute only",
                               {"dispute_reasons": ["only with outcome disputed"]})
    if outcome == "no_answer":
        return unanswered(task, f"agent:{data['agent_id']}", "no answer", now, settings)
    common = {"task_id": task.task_id, "order_id": task.order_id,
              "partner_id": task.partner_id, "satisfaction": data["satisfaction"],
              "customer_paid_cents": data["customer_paid_cents"], "notes": data["notes"],
              "visit": task.visit}
    if outcome == "verified":
        return [NewEvent("order_verified", {**common, "channel": "agent"})]
    reasons = sorted(set(data["dispute_reasons"]))
    return [NewEvent("order_disputed", {
        **common, "reasons": reasons,
        "about_partner": any(r in PARTNER_FAULT_REASONS for r in reasons),
        "complaint_requested": data["complaint_requested"]})]


def unanswered(task: Task, by: str, detail: str, now: datetime,
               settings: Settings) -> list[NewEvent]:
    """One more attempt without an answer; after the last, the order is unverified."""
    attempt = task.attempts + 1
    last = attempt >= settings.attempts
    spacing = settings.retry_after[min(attempt - 1, len(settings.retry_after) - 1)]
    events = [NewEvent("callback_unanswered", {
        "task_id": task.task_id, "order_id": task.order_id, "attempt": attempt, "by": by,
        "detail": detail, "next_attempt_at": None if last else isoformat(now + spacing)})]
    if last:
        events.append(NewEvent("order_unverified", {
            "task_id": task.task_id, "order_id": task.order_id, "partner_id": task.partner_id,
            "attempts": attempt}))
    return events


def auto_reply(task: Task, reply: str, now: datetime, settings: Settings) -> list[NewEvent]:
    """The customer's reply to the automatic confirmation request."""
    if task.status != "awaiting_reply":
        raise Conflict(f"task {task.task_id} is not waiting for a reply",
                       {"message_id": [task.status]}, code="not_awaiting_reply")
    if reply.strip().lower() in CONFIRM_REPLIES:
        return [NewEvent("order_verified", {
            "task_id": task.task_id, "order_id": task.order_id, "partner_id": task.partner_id,
            "channel": "auto", "satisfaction": None, "customer_paid_cents": None,
            "notes": f"confirmed by reply {reply.strip()!r}", "visit": task.visit})]
    return unanswered(task, "channel:auto", f"reply {reply.strip()[:40]!r} did not confirm",
                      now, settings)


def supervise(task: Task, data: dict, now: datetime, settings: Settings) -> NewEvent:
    if task.status != "unverified":
        raise Conflict(f"task {task.task_id} is {task.status}, not unverified",
                       {"task_id": [task.status]}, code="not_unverified")
    base = {"task_id": task.task_id, "order_id": task.order_id,
            "supervisor_id": data["supervisor_id"], "note": data["note"]}
    if data["decision"] == "close":
        return NewEvent("unverified_closed", base)
    return NewEvent("task_returned", {**base, "due_at": isoformat(now + settings.due_within)})
