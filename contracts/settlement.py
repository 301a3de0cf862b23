"""The settlement service's events and RPC payloads (money is integer cents everywhere)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from contracts.orders import ORDER_TYPES, ComponentWarrantySchema
from contracts.registry import event

DECISIONS = ("approved", "cut", "held", "rejected")
CALLBACK_STATES = ("pending", "verified", "disputed", "unverified")
PERIOD = validate.Regexp(r"^\d{4}-(0[1-9]|1[0-2])$", error="a month: YYYY-MM")

_id = fields.String(required=True, validate=validate.Length(min=1, max=80))
_cents = dict(required=True, strict=True)


class LabourRate(Schema):
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    category = fields.String(required=True)  # a product category, or "*"
    region = fields.String(required=True)  # a province, or "*"
    cents = fields.Integer(**_cents, validate=validate.Range(min=0))


class TravelRate(Schema):
    up_to_km = fields.Integer(**_cents, validate=validate.Range(min=0))
    region = fields.String(required=True)
    cents = fields.Integer(**_cents, validate=validate.Range(min=0))


class PartPrice(Schema):
    part_code = fields.String(required=True)
    cents = fields.Integer(**_cents, validate=validate.Range(min=0))


class LineSchema(Schema):
    line_id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(("labour", "travel", "part")))
    part_code = fields.String(required=True, allow_none=True)
    old_serial = fields.String(required=True, allow_none=True)
    new_serial = fields.String(required=True, allow_none=True)
    charged_to = fields.String(required=True)
    quantity = fields.Integer(required=True, strict=True)
    claimed_cents = fields.Integer(**_cents)
    decision = fields.String(required=True, validate=validate.OneOf(DECISIONS))
    reasons = fields.List(fields.String(), required=True)
    approved_cents = fields.Integer(**_cents)
    manufacturer_cents = fields.Integer(**_cents)
    customer_cents = fields.Integer(**_cents)


class StatementLineDecision(Schema):
    """One claim line (labour, travel, part-N) that was not approved in full, and why."""

    line_id = fields.String(required=True)
    decision = fields.String(required=True, validate=validate.OneOf(DECISIONS[1:]))
    reasons = fields.List(fields.String(), required=True)
    claimed_cents = fields.Integer(**_cents)
    approved_cents = fields.Integer(**_cents)


class StatementLine(Schema):
    claim_id = fields.String(required=True)
    order_id = fields.String(required=True)
    completed_on = fields.Date(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(("claim", "adjustment")))
    claimed_cents = fields.Integer(**_cents)
    payable_cents = fields.Integer(**_cents)  # what this statement pays (a delta for adjustments)
    cut_cents = fields.Integer(**_cents)
    held_cents = fields.Integer(**_cents)
    rejected_cents = fields.Integer(**_cents)
    reasons = fields.List(fields.String(), required=True)  # every line's, merged
    # which line was cut, held or rejected and why (absent in statements closed before it)
    decisions = fields.List(fields.Nested(StatementLineDecision), load_default=list)


# -- events ---------------------------------------------------------------------------------


@event("settlement", "rate_card_loaded")
class RateCardLoaded(Schema):
    card_id = _id
    effective_from = fields.Date(required=True)
    labour = fields.List(fields.Nested(LabourRate), required=True)
    travel = fields.List(fields.Nested(TravelRate), required=True)


@event("settlement", "price_list_loaded")
class PriceListLoaded(Schema):
    list_id = _id
    effective_from = fields.Date(required=True)
    parts = fields.List(fields.Nested(PartPrice), required=True)


@event("settlement", "sla_breach_recorded")
class SlaBreachRecorded(Schema):
    """A dispatch SLA breach, kept for the partner's scorecard."""

    breach_id = fields.String(required=True)  # the dispatch event's id
    order_id = _id
    partner_id = _id
    kind = fields.String(required=True)
    due_at = fields.String(required=True)


@event("settlement", "order_facts_recorded")
class OrderFactsRecorded(Schema):
    """What settlement keeps of an order from orders: warranty, product, where."""

    order_id = _id
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    category = fields.String(required=True)
    product_id = fields.String(required=True)
    serial = fields.String(required=True)
    province = fields.String(required=True)
    lat = fields.Float(required=True, allow_none=True)
    lon = fields.Float(required=True, allow_none=True)
    warranty = fields.List(fields.Nested(ComponentWarrantySchema), required=True)


@event("settlement", "claim_decided")
class ClaimDecided(Schema):
    """A claim's lines and their decisions; appended again whenever new evidence changes them."""

    claim_id = _id  # the completion event's id
    order_id = _id
    partner_id = _id
    completed_on = fields.Date(required=True)
    serial = fields.String(required=True)
    order_type = fields.String(required=True)
    callback = fields.String(required=True, validate=validate.OneOf(CALLBACK_STATES))
    customer_paid_cents = fields.Integer(**_cents)
    customer_paid_confirmed = fields.Integer(required=True, strict=True, allow_none=True)
    installation_barcode = fields.String(required=True, allow_none=True)
    lines = fields.List(fields.Nested(LineSchema), required=True)
    # the completion's evidence the rules re-read when deciding again
    evidence = fields.Dict(required=True)
    satisfaction = fields.Integer(required=True, allow_none=True)
    cause = fields.String(required=True)  # what made this decision: completion, callback …


@event("settlement", "part_return_recorded")
class PartReturnRecorded(Schema):
    serial = _id  # the replaced (old) part's serial
    kind = fields.String(required=True, validate=validate.OneOf(("returned", "waived")))
    parts_centre = fields.String(required=True, allow_none=True)
    waived_by = fields.String(required=True, allow_none=True)
    note = fields.String(required=True)


@event("settlement", "period_closed")
class PeriodClosed(Schema):
    period = fields.String(required=True, validate=PERIOD)
    partner_id = _id
    lines = fields.List(fields.Nested(StatementLine), required=True)
    payable_cents = fields.Integer(**_cents)
    cut_cents = fields.Integer(**_cents)
    held_cents = fields.Integer(**_cents)
    rejected_cents = fields.Integer(**_cents)
    adjustments_cents = fields.Integer(**_cents)


# -- RPC payloads ---------------------------------------------------------------------------


class PartReturn(Schema):
    serial = _id
    parts_centre = fields.String(load_default=None, allow_none=True,
                                 validate=validate.Length(min=1, max=80))
    waived_by = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(min=1, max=80))
    note = fields.String(load_default="", validate=validate.Length(max=2000))
