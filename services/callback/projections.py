"""The callback service's read model: one row per verification task (the agents' queue)."""

from __future__ import annotations

import json

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, Text

from serviceloop.eventstore import Envelope, define_log_tables
from serviceloop.projections import Projector, insert, update

metadata = MetaData()
events = define_log_tables(metadata)

tasks = Table(
    "tasks", metadata,
    Column("task_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("partner_id", String(64), nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("category", String(40), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("due_at", String(32), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("report", Text, nullable=False),  # JSON: what the partner reported
    Column("review_of", String(64)),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", String(32)),
    Column("leased_by", String(40)),
    Column("lease_until", String(32)),
    Column("send_key", String(80)),  # the automatic send under way (its idempotency key)
    Column("provider_message_id", String(80)),
    Column("reply_by", String(32)),
    Column("outcome", String(16)),
    Column("outcome_detail", Text),  # JSON: reasons, satisfaction, notes
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_tasks_queue", "status", "channel", "priority", "due_at"),
    Index("ix_tasks_provider_message", "provider_message_id"),
)

READ_MODELS = [tasks]


def _task_created(conn: Connection, e: Envelope) -> None:
    p = e.payload
    insert(conn, tasks, dict(
        task_id=p["task_id"], order_id=p["order_id"], partner_id=p["partner_id"],
        order_type=p["order_type"], category=p["category"], phone=p["phone"],
        channel=p["channel"], status="open", priority=p["priority"], due_at=p["due_at"],
        visit=p["visit"], report=json.dumps(p["report"], sort_keys=True, ensure_ascii=False),
        review_of=p["review_of"], attempts=0, next_attempt_at=e.occurred_at,
        created_at=e.occurred_at, updated_at=e.occurred_at, version=e.stream_version))


# Every other event changes the task's row: what each sets, beside `updated_at` and `version`.
# The projection writes these; an agent's command answers with them (`task_after`), so it
# need not read the row back after its commit.

def _leased(e: Envelope) -> dict:
    return dict(status="leased", leased_by=e.payload["agent_id"],
                lease_until=e.payload["lease_until"])


def _send_started(e: Envelope) -> dict:
    return dict(status="sending", send_key=e.payload["idempotency_key"],
                next_attempt_at=e.payload["retry_at"])


def _confirmation_requested(e: Envelope) -> dict:
    return dict(status="awaiting_reply", provider_message_id=e.payload["provider_message_id"],
                reply_by=e.payload["reply_by"], send_key=None, next_attempt_at=None)


def _problem_reported(e: Envelope) -> dict:
    # a person calls now: the agents' attempts are counted afresh
    return dict(status="open", channel="agent", priority=e.payload["priority"],
                attempts=0, next_attempt_at=e.occurred_at, reply_by=None)


def _unanswered(e: Envelope) -> dict:
    p = e.payload
    return dict(status="open", attempts=p["attempt"], next_attempt_at=p["next_attempt_at"],
                leased_by=None, lease_until=None, reply_by=None)


def _outcome(status: str):  # noqa: ANN202
    def changes(e: Envelope) -> dict:
        p = e.payload
        detail = {k: p[k] for k in ("reasons", "satisfaction", "notes", "customer_paid_cents",
                                    "complaint_requested", "attempts") if k in p}
        return dict(status=status, outcome=status, leased_by=None, lease_until=None,
                    reply_by=None, next_attempt_at=None,
                    outcome_detail=json.dumps(detail, sort_keys=True, ensure_ascii=False))

    return changes


def _closed(e: Envelope) -> dict:
    return dict(status="closed")


def _returned(e: Envelope) -> dict:
    return dict(status="open", attempts=0, next_attempt_at=e.occurred_at,
                due_at=e.payload["due_at"], outcome=None)


_CHANGES = {
    "task_leased": _leased,
    "confirmation_send_started": _send_started,
    "confirmation_requested": _confirmation_requested,
    "problem_reported": _problem_reported,
    "callback_unanswered": _unanswered,
    "order_verified": _outcome("verified"),
    "order_disputed": _outcome("disputed"),
    "order_unverified": _outcome("unverified"),
    "unverified_closed": _closed,
    "task_returned": _returned,
}


def _changes(e: Envelope) -> dict:
    return {"updated_at": e.occurred_at, "version": e.stream_version,
            **_CHANGES[e.event_type](e)}


def _update(conn: Connection, e: Envelope) -> None:
    update(conn, tasks, "task_id", e.payload["task_id"], **_changes(e))


def task_after(row: dict, envelopes: list[Envelope]) -> dict:
    """The task's row (as read, column -> value) as the projection leaves it after
    `envelopes`, events of that task's stream that change it."""
    for envelope in envelopes:
        row = {**row, **_changes(envelope)}
    return row


projector = Projector(READ_MODELS, {
    "verification_task_created": _task_created,
    **{event_type: _update for event_type in _CHANGES},
})
