"""A verification task as plain Python: state in, events out, no I/O and no clock reads.

A task is open (in the agents' queue, or due for the automatic channel), leased to one agent
at a time, and ends verified, disputed or — after the last unanswered attempt — unverified,
where a supervisor closes it or sends it back. An automatic task is claimed (`sending`) before
the provider is asked, then waits for the customer's reply (`awaiting_reply`); a reply that
reports a problem hands it to the agents.
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
# "reply 2 if there is a problem": a person calls the customer back
PROBLEM_REPLIES = frozenset({"2", "n", "no", "否", "不", "有问题", "不满意"})
FIRST = 1  # the agents' queue's top priority


@dataclass(frozen=True)
class Settings:
    due_within: timedelta = timedelta(hours=48)
    lease: timedelta = timedelta(minutes=15)
    attempts: int = 3
    retry_after: tuple[timedelta, ...] = (timedelta(hours=2), timedelta(hours=6))
    reply_within: timedelta = timedelta(hours=12)
    send_retry: timedelta = timedelta(minutes=5)  # a claimed send never recorded: try again
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
    next_attempt_at: datetime | None = None
    send_key: str | None = None  # the idempotency key of the automatic send under way
    reply_by: datetime | None = None

    @classmethod
    def from_row(cls, row: dict) -> Task:
        return cls(row["task_id"], row["order_id"], row["partner_id"], row["order_type"],
                   row["channel"], row["status"], row["visit"], row["attempts"],
                   row["leased_by"], _time(row["lease_until"]), json.loads(row["report"]),
                   row["review_of"], row["version"], _time(row["next_attempt_at"]),
                   row["send_key"], _time(row["reply_by"]))


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def priority(order_type: str, report: dict) -> int:
    """Lower is first: complaints and repairs with parts claimed, then repairs, then the rest."""
    if order_type == "complaint" or (order_type == "repair" and report["parts"]):
        return FIRST
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


def start_send(task: Task, now: datetime, settings: Settings) -> NewEvent:
    """Claim the sending of the automatic confirmation request, before the provider is asked.

    Appended with the task's version, the claim lets one of two replicas (or two timer passes)
    that picked the same task send, never both. A claim whose sending was never recorded
    (the provider was down, the process died) is taken again after `send_retry`, with the
    same idempotency key: a request the provider did get is not sent a second time.
    """
    due = task.next_attempt_at is not None and task.next_attempt_at <= now
    if task.channel != "auto" or task.status not in ("open", "sending") or not due:
        raise Conflict(f"task {task.task_id} is {task.status}: no confirmation to send now",
                       {"task_id": [task.status]}, code="not_due")
    key = task.send_key if task.status == "sending" else f"{task.task_id}:{task.version}"
    return NewEvent("confirmation_send_started", {
        "task_id": task.task_id, "order_id": task.order_id, "attempt": task.attempts + 1,
        "idempotency_key": key, "retry_at": isoformat(now + settings.send_retry)})


def sent(task: Task, key: str, message_id: str, now: datetime, settings: Settings) -> NewEvent:
    """The provider took the request this claim (`key`) was for: wait for the reply."""
    if task.status != "sending" or task.send_key != key:
        raise Conflict(f"task {task.task_id} is {task.status}: its send was taken over",
                       {"task_id": [task.status]}, code="send_taken_over")
    return NewEvent("confirmation_requested", {
        "task_id": task.task_id, "order_id": task.order_id, "provider_message_id": message_id,
        "attempt": task.attempts + 1, "reply_by": isoformat(now + settings.reply_within)})


def reply_overdue(task: Task, now: datetime, settings: Settings) -> list[NewEvent]:
    """The customer did not reply to the automatic request in time: an unanswered attempt."""
    if task.status != "awaiting_reply" or task.reply_by is None or task.reply_by >= now:
        raise Conflict(f"task {task.task_id} is {task.status}: no reply is overdue",
                       {"task_id": [task.status]}, code="reply_not_overdue")
    return unanswered(task, "channel:auto", "no reply in time", now, settings)


def auto_reply(task: Task, reply: str, now: datetime, settings: Settings) -> list[NewEvent]:
    """The customer's reply to the automatic confirmation request: "1" confirms, "2" reports
    a problem (a person calls back), anything else counts as no answer."""
    if task.status != "awaiting_reply":
        raise Conflict(f"task {task.task_id} is not waiting for a reply",
                       {"message_id": [task.status]}, code="not_awaiting_reply")
    answer = reply.strip()
    if answer.lower() in CONFIRM_REPLIES:
        return [NewEvent("order_verified", {
            "task_id": task.task_id, "order_id": task.order_id, "partner_id": task.partner_id,
            "channel": "auto", "satisfaction": None, "customer_paid_cents": None,
            "notes": f"confirmed by reply {answer!r}", "visit": task.visit})]
    if answer.lower() in PROBLEM_REPLIES:
        return [NewEvent("problem_reported", {"task_id": task.task_id,
                                              "order_id": task.order_id, "reply": answer,
                                              "priority": FIRST})]
    return unanswered(task, "channel:auto", f"reply {answer[:40]!r} did not confirm",
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
