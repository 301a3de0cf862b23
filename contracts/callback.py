"""The callback service's events and RPC payloads: verifying completed work with the customer.

A verification task is its own stream, `task-<task_id>`; its id is the id of the completion
event it verifies, so one completion can only ever make one task.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from contracts.dispatch import PartLineSchema
from contracts.orders import ORDER_TYPES
from contracts.registry import event

DISPUTE_REASONS = ("no_visit", "not_fixed", "part_not_replaced", "overcharged", "rude", "other")
# disputes that are about the partner: the next visit goes to another partner
PARTNER_FAULT_REASONS = ("no_visit", "part_not_replaced", "overcharged", "rude")
OUTCOMES = ("verified", "disputed", "no_answer")
TASK_STATUSES = ("open", "leased", "sending", "awaiting_reply", "verified", "disputed",
                 "unverified", "closed")
CHANNELS = ("agent", "auto")

_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
_time = dict(format="iso")
_agent = fields.String(required=True, validate=validate.Length(min=1, max=40))


class ReportSchema(Schema):
    """What the partner reported: what the agent reads out to the customer."""

    work_done = fields.String(required=True)
    fault_code = fields.String(required=True, allow_none=True)
    parts = fields.List(fields.Nested(PartLineSchema), required=True)
    installation_barcode = fields.String(required=True, allow_none=True)
    labour_fee_cents = fields.Integer(required=True, strict=True)
    travel_fee_cents = fields.Integer(required=True, strict=True)
    parts_fee_cents = fields.Integer(required=True, strict=True)
    customer_paid_cents = fields.Integer(required=True, strict=True)


# -- events ---------------------------------------------------------------------------------


@event("callback", "verification_task_created")
class VerificationTaskCreated(Schema):
    task_id = _id
    order_id = _id
    partner_id = _id
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    category = fields.String(required=True)
    phone = fields.String(required=True)
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    priority = fields.Integer(required=True)  # lower first
    due_at = fields.DateTime(required=True, **_time)
    visit = fields.Integer(required=True)  # 1 for the first completion, 2 after a re-visit …
    report = fields.Nested(ReportSchema, required=True)
    review_of = fields.String(required=True, allow_none=True)  # a sampled auto verification


@event("callback", "task_leased")
class TaskLeased(Schema):
    task_id = _id
    order_id = _id
    agent_id = _agent
    lease_until = fields.DateTime(required=True, **_time)


@event("callback", "confirmation_send_started")
class ConfirmationSendStarted(Schema):
    """The automatic channel claimed the sending of a confirmation request, before asking the
    provider: of two replicas that picked the task, only the one whose claim was appended
    sends. Unrecorded by `retry_at` (provider down, process gone), it may be claimed again
    with the same idempotency key, which the provider sends once."""

    task_id = _id
    order_id = _id
    attempt = fields.Integer(required=True)
    idempotency_key = fields.String(required=True, validate=validate.Length(min=1, max=80))
    retry_at = fields.DateTime(required=True, **_time)


@event("callback", "confirmation_requested")
class ConfirmationRequested(Schema):
    """The automatic channel sent the customer a request to confirm (SMS/IVR provider)."""

    task_id = _id
    order_id = _id
    provider_message_id = fields.String(required=True)
    attempt = fields.Integer(required=True)
    reply_by = fields.DateTime(required=True, **_time)


@event("callback", "callback_unanswered")
class CallbackUnanswered(Schema):
    task_id = _id
    order_id = _id
    attempt = fields.Integer(required=True)
    by = fields.String(required=True)  # agent:<id> or the channel
    detail = fields.String(required=True)
    next_attempt_at = fields.DateTime(required=True, allow_none=True, **_time)


@event("callback", "problem_reported")
class ProblemReported(Schema):
    """The customer answered the automatic request with a problem ("2"): the task goes to the
    agents' queue, first, for a person to call and record what is wrong."""

    task_id = _id
    order_id = _id
    reply = fields.String(required=True)
    priority = fields.Integer(required=True)


@event("callback", "order_verified")
class OrderVerified(Schema):
    task_id = _id
    order_id = _id
    partner_id = _id
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    satisfaction = fields.Integer(required=True, allow_none=True)
    customer_paid_cents = fields.Integer(required=True, allow_none=True)  # as the customer said
    notes = fields.String(required=True)
    visit = fields.Integer(required=True)


@event("callback", "order_disputed")
class OrderDisputed(Schema):
    task_id = _id
    order_id = _id
    partner_id = _id
    reasons = fields.List(fields.String(validate=validate.OneOf(DISPUTE_REASONS)),
                          required=True)
    about_partner = fields.Boolean(required=True)
    complaint_requested = fields.Boolean(required=True)
    satisfaction = fields.Integer(required=True, allow_none=True)
    customer_paid_cents = fields.Integer(required=True, allow_none=True)
    notes = fields.String(required=True)
    visit = fields.Integer(required=True)


@event("callback", "order_unverified")
class OrderUnverified(Schema):
    """No answer after the last attempt: held for a supervisor."""

    task_id = _id
    order_id = _id
    partner_id = _id
    attempts = fields.Integer(required=True)


@event("callback", "unverified_closed")
class UnverifiedClosed(Schema):
    task_id = _id
    order_id = _id
    supervisor_id = _agent
    note = fields.String(required=True)


@event("callback", "task_returned")
class TaskReturned(Schema):
    """A supervisor sent an unverified task back to the queue for more attempts."""

    task_id = _id
    order_id = _id
    supervisor_id = _agent
    note = fields.String(required=True)
    due_at = fields.DateTime(required=True, **_time)


# -- RPC payloads ---------------------------------------------------------------------------


class RecordOutcome(Schema):
    task_id = _id
    agent_id = _agent
    outcome = fields.String(required=True, validate=validate.OneOf(OUTCOMES))
    dispute_reasons = fields.List(fields.String(validate=validate.OneOf(DISPUTE_REASONS)),
                                  load_default=list, validate=validate.Length(max=6))
    complaint_requested = fields.Boolean(load_default=False)
    satisfaction = fields.Integer(load_default=None, allow_none=True, strict=True,
                                  validate=validate.Range(1, 5))
    customer_paid_cents = fields.Integer(load_default=None, allow_none=True, strict=True,
                                         validate=validate.Range(0, 10_000_000))
    notes = fields.String(load_default="", validate=validate.Length(max=2000))


class SupervisorDecision(Schema):
    task_id = _id
    supervisor_id = _agent
    decision = fields.String(required=True, validate=validate.OneOf(("close", "send_back")))
    note = fields.String(load_default="", validate=validate.Length(max=2000))


class ProviderReply(Schema):
    """What the SMS/IVR provider posts back to /callback/v1/replies."""

    message_id = fields.String(required=True, validate=validate.Length(min=1, max=80))
    reply = fields.String(required=True, validate=validate.Length(max=160))
