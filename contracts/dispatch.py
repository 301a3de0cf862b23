"""The dispatch service's events, RPC payloads and partner-gateway bodies.

The gateway's request and response bodies here are also the source of the OpenAPI document
(`contracts.openapi`): what a partner may send is exactly what these schemas load, and an
unknown field is refused (marshmallow's default RAISE), so a partner cannot set anything the
contract does not give it.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate, validates_schema
from marshmallow import ValidationError as _VE

from contracts.orders import ORDER_TYPES, AddressSchema
from contracts.registry import event

# dispatch's own view of an order (what the gateway shows a partner is a subset)
DISPATCH_STATUSES = (
    "awaiting_fault",  # a repair without its catalogue fault code
    "complaint",  # a complaint: the complaint group's, never a partner's
    "ready",  # ready for a partner: passes at once to assigned or escalated
    "assigned", "accepted", "scheduled", "on_site", "completed",
    "escalated",  # nobody qualified is left: a person assigns it (dispatch.assign)
    "withdrawn",  # cancelled in orders: no partner may touch it any more
)
PARTNER_STATUSES = ("assigned", "accepted", "scheduled", "on_site", "completed")
REJECT_REASONS = ("out_of_area", "not_qualified", "no_capacity", "parts_unavailable",
                  "customer_unreachable", "other")
APPOINTMENT_CANCEL_REASONS = ("customer_request", "partner_unavailable", "parts_unavailable",
                              "other")
SLA_KINDS = ("not_scheduled", "not_on_site")
CHARGED_TO = ("manufacturer", "customer")
MAX_CENTS = 10_000_000  # 100 000.00 in any currency: more is a typing error, not a claim

_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
_cents = dict(strict=True, validate=validate.Range(min=0, max=MAX_CENTS))
_note = fields.String(load_default="", validate=validate.Length(max=2000))
_time = dict(format="iso")


class RegionSchema(Schema):
    """A covered area; `city` or `district` "*" covers all of the province or city."""

    province = fields.String(required=True, validate=validate.Length(min=1, max=40))
    city = fields.String(required=True, validate=validate.Length(min=1, max=40))
    district = fields.String(required=True, validate=validate.Length(min=1, max=40))


class CandidateSchema(Schema):
    partner_id = fields.String(required=True)
    rating = fields.Float(required=True)
    load_today = fields.Integer(required=True)
    capacity_left = fields.Integer(required=True)


class PartLineSchema(Schema):
    """One part replaced at the customer's home."""

    part_code = fields.String(required=True, validate=validate.Length(min=1, max=40))
    old_serial = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=1, max=64))
    new_serial = fields.String(required=True, validate=validate.Length(min=1, max=64))
    quantity = fields.Integer(load_default=1, strict=True, validate=validate.Range(1, 20))
    fee_cents = fields.Integer(required=True, **_cents)
    charged_to = fields.String(load_default="manufacturer", validate=validate.OneOf(CHARGED_TO))


class CoordinatesSchema(Schema):
    lat = fields.Float(required=True, allow_nan=False, validate=validate.Range(-90, 90))
    lon = fields.Float(required=True, allow_nan=False, validate=validate.Range(-180, 180))
    accuracy_m = fields.Integer(load_default=None, allow_none=True, strict=True,
                                validate=validate.Range(0, 100_000))


# -- events ---------------------------------------------------------------------------------


@event("dispatch", "partner_registered")
class PartnerRegistered(Schema):
    partner_id = _id
    name = fields.String(required=True)
    regions = fields.List(fields.Nested(RegionSchema), required=True)
    categories = fields.List(fields.String(), required=True)
    daily_capacity = fields.Integer(required=True)
    rating = fields.Float(required=True)
    secret_fingerprint = fields.String(required=True)


@event("dispatch", "partner_updated")
class PartnerUpdated(Schema):
    """The partner's whole profile after the change."""

    partner_id = _id
    name = fields.String(required=True)
    regions = fields.List(fields.Nested(RegionSchema), required=True)
    categories = fields.List(fields.String(), required=True)
    daily_capacity = fields.Integer(required=True)
    rating = fields.Float(required=True)
    active = fields.Boolean(required=True)


@event("dispatch", "partner_secret_rotated")
class PartnerSecretRotated(Schema):
    partner_id = _id
    secret_fingerprint = fields.String(required=True)


@event("dispatch", "order_received")
class OrderReceived(Schema):
    """Dispatch's copy of an order from orders (its own log holds all it decides on)."""

    order_id = _id
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    status = fields.String(required=True,
                           validate=validate.OneOf(("awaiting_fault", "ready", "complaint")))
    category = fields.String(required=True)
    model = fields.String(required=True)
    serial = fields.String(required=True)
    description = fields.String(required=True)
    fault_code = fields.String(required=True, allow_none=True)
    phone = fields.String(required=True)
    address = fields.Nested(AddressSchema, required=True)
    in_warranty = fields.Boolean(required=True)
    related_order_id = fields.String(required=True, allow_none=True)
    confirmation_code = fields.String(required=True)


@event("dispatch", "fault_code_received")
class FaultCodeReceived(Schema):
    order_id = _id
    fault_code = fields.String(required=True)


@event("dispatch", "order_assigned")
class OrderAssigned(Schema):
    order_id = _id
    partner_id = _id
    attempt = fields.Integer(required=True)
    assigned_by = fields.String(required=True)  # system | agent:<id>
    reason = fields.String(required=True)
    explanation = fields.String(required=True)
    considered = fields.List(fields.Nested(CandidateSchema), required=True)
    day = fields.Date(required=True)  # counts against this day's capacity
    accept_by = fields.DateTime(required=True, **_time)


@event("dispatch", "order_accepted")
class OrderAccepted(Schema):
    order_id = _id
    partner_id = _id
    schedule_by = fields.DateTime(required=True, **_time)


@event("dispatch", "order_rejected")
class OrderRejected(Schema):
    order_id = _id
    partner_id = _id
    reason_code = fields.String(required=True, validate=validate.OneOf(REJECT_REASONS))
    note = fields.String(required=True)


@event("dispatch", "assignment_timed_out")
class AssignmentTimedOut(Schema):
    """Not accepted in time: the order goes to the next partner."""

    order_id = _id
    partner_id = _id
    due_at = fields.DateTime(required=True, **_time)


@event("dispatch", "sla_breached")
class SlaBreached(Schema):
    order_id = _id
    partner_id = _id
    kind = fields.String(required=True, validate=validate.OneOf(SLA_KINDS))
    due_at = fields.DateTime(required=True, **_time)


@event("dispatch", "order_escalated")
class OrderEscalated(Schema):
    order_id = _id
    reason = fields.String(required=True)
    explanation = fields.String(required=True)
    considered = fields.List(fields.Nested(CandidateSchema), required=True)


@event("dispatch", "appointment_scheduled")
class AppointmentScheduled(Schema):
    order_id = _id
    partner_id = _id
    window_start = fields.DateTime(required=True, **_time)
    window_end = fields.DateTime(required=True, **_time)


@event("dispatch", "appointment_cancelled")
class AppointmentCancelled(Schema):
    order_id = _id
    partner_id = _id
    reason_code = fields.String(required=True,
                                validate=validate.OneOf(APPOINTMENT_CANCEL_REASONS))
    note = fields.String(required=True)
    schedule_by = fields.DateTime(required=True, **_time)


@event("dispatch", "partner_arrived")
class PartnerArrived(Schema):
    order_id = _id
    partner_id = _id
    lat = fields.Float(required=True, allow_none=True)
    lon = fields.Float(required=True, allow_none=True)
    accuracy_m = fields.Integer(required=True, allow_none=True)
    within_window = fields.Boolean(required=True)


@event("dispatch", "order_completed")
class OrderCompleted(Schema):
    """Everything callback and settlement need about the visit, in one event."""

    order_id = _id
    partner_id = _id
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    category = fields.String(required=True)
    model = fields.String(required=True)
    serial = fields.String(required=True)
    phone = fields.String(required=True)  # whom the callback calls
    in_warranty = fields.Boolean(required=True)
    fault_code = fields.String(required=True, allow_none=True)  # what the partner found
    work_done = fields.String(required=True)
    parts = fields.List(fields.Nested(PartLineSchema), required=True)
    installation_barcode = fields.String(required=True, allow_none=True)
    labour_fee_cents = fields.Integer(required=True, strict=True)
    travel_fee_cents = fields.Integer(required=True, strict=True)
    travel_distance_km = fields.Integer(required=True, strict=True)
    parts_fee_cents = fields.Integer(required=True, strict=True)
    customer_paid_cents = fields.Integer(required=True, strict=True)
    confirmation_matched = fields.Boolean(required=True)
    arrived_at = fields.DateTime(required=True, allow_none=True, **_time)
    arrival_lat = fields.Float(required=True, allow_none=True)
    arrival_lon = fields.Float(required=True, allow_none=True)


@event("dispatch", "order_reopened")
class OrderReopened(Schema):
    """The customer disputed the visit at the callback: the order goes out again, to another
    partner when the dispute was about the partner."""

    order_id = _id
    partner_id = _id  # who did the disputed visit
    reasons = fields.List(fields.String(), required=True)
    partner_excluded = fields.Boolean(required=True)


@event("dispatch", "order_withdrawn")
class OrderWithdrawn(Schema):
    """Cancelled in orders: taken from the partner (if any) and out of every timer."""

    order_id = _id
    partner_id = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True)


# -- RPC payloads (head office, supervisors) -----------------------------------------------


class RegisterPartner(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=80))
    regions = fields.List(fields.Nested(RegionSchema), required=True,
                          validate=validate.Length(min=1, max=500))
    categories = fields.List(fields.String(validate=validate.Length(min=1, max=40)),
                             required=True, validate=validate.Length(min=1, max=100))
    daily_capacity = fields.Integer(required=True, strict=True, validate=validate.Range(0, 10_000))
    rating = fields.Float(load_default=3.0, allow_nan=False, validate=validate.Range(0, 5))
    agent_id = fields.String(load_default="system", validate=validate.Length(min=1, max=40))


class UpdatePartner(Schema):
    partner_id = _id
    name = fields.String(validate=validate.Length(min=1, max=80))
    regions = fields.List(fields.Nested(RegionSchema), validate=validate.Length(min=1, max=500))
    categories = fields.List(fields.String(validate=validate.Length(min=1, max=40)),
                             validate=validate.Length(min=1, max=100))
    daily_capacity = fields.Integer(strict=True, validate=validate.Range(0, 10_000))
    rating = fields.Float(allow_nan=False, validate=validate.Range(0, 5))
    active = fields.Boolean()
    agent_id = fields.String(load_default="system", validate=validate.Length(min=1, max=40))


class AssignOrder(Schema):
    order_id = _id
    partner_id = _id
    agent_id = fields.String(required=True, validate=validate.Length(min=1, max=40))


class ListDispatchOrders(Schema):
    status = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(DISPATCH_STATUSES))
    partner_id = fields.String(load_default=None, allow_none=True)
    page = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1))
    page_size = fields.Integer(load_default=50, strict=True, validate=validate.Range(1, 500))


# -- partner gateway: requests ------------------------------------------------------------


class ListQuery(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(PARTNER_STATUSES))
    page = fields.Integer(load_default=1, strict=False, validate=validate.Range(1, 100_000))
    page_size = fields.Integer(load_default=20, strict=False, validate=validate.Range(1, 100))
    nonce = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                          metadata={"description": "any unique value: makes a repeated GET "
                                                   "a new signed request (replays are refused)"})


class NonceQuery(Schema):
    nonce = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                          metadata={"description": "any unique value: makes a repeated GET "
                                                   "a new signed request (replays are refused)"})


class AcceptRequest(Schema):
    note = _note


class RejectRequest(Schema):
    reason_code = fields.String(required=True, validate=validate.OneOf(REJECT_REASONS))
    note = _note


class ScheduleRequest(Schema):
    window_start = fields.AwareDateTime(required=True, format="iso")
    window_end = fields.AwareDateTime(required=True, format="iso")

    @validates_schema
    def _window(self, data: dict, **_: object) -> None:
        start, end = data.get("window_start"), data.get("window_end")
        if start and end:
            if end <= start:
                raise _VE("the window must end after it starts", "window_end")
            if (end - start).total_seconds() > 12 * 3600:
                raise _VE("a window is at most 12 hours", "window_end")


class ArriveRequest(Schema):
    coordinates = fields.Nested(CoordinatesSchema, load_default=None, allow_none=True)


class CompleteRequest(Schema):
    work_done = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    fault_code = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=1, max=40))
    parts = fields.List(fields.Nested(PartLineSchema), load_default=list,
                        validate=validate.Length(max=50))
    installation_barcode = fields.String(load_default=None, allow_none=True,
                                         validate=validate.Length(min=4, max=64))
    labour_fee_cents = fields.Integer(required=True, **_cents)
    travel_fee_cents = fields.Integer(load_default=0, **_cents)
    travel_distance_km = fields.Integer(load_default=0, strict=True,
                                        validate=validate.Range(0, 2000))
    customer_paid_cents = fields.Integer(load_default=0, **_cents)
    confirmation_code = fields.String(load_default=None, allow_none=True,
                                      validate=validate.Length(min=4, max=12))

    @validates_schema
    def _serials(self, data: dict, **_: object) -> None:
        seen: set[str] = set()
        for line in data.get("parts") or ():
            serial = line.get("new_serial")
            if serial in seen:
                raise _VE(f"new serial {serial} appears twice", "parts")
            seen.add(serial)


class CancelAppointmentRequest(Schema):
    reason_code = fields.String(required=True,
                                validate=validate.OneOf(APPOINTMENT_CANCEL_REASONS))
    note = _note


# -- partner gateway: responses -----------------------------------------------------------


class AppointmentView(Schema):
    window_start = fields.String(required=True)
    window_end = fields.String(required=True)


class CustomerContactView(Schema):
    phone = fields.String(required=True)
    address = fields.Nested(AddressSchema, required=True)


class PartnerOrderView(Schema):
    """`released`: the answer to a reject, after which the order is no longer the partner's."""

    order_id = fields.String(required=True)
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    status = fields.String(required=True,
                           validate=validate.OneOf((*PARTNER_STATUSES, "released")))
    category = fields.String(required=True)
    model = fields.String(required=True)
    serial = fields.String(required=True)
    description = fields.String(required=True)
    fault_code = fields.String(required=True, allow_none=True)
    in_warranty = fields.Boolean(required=True)
    customer = fields.Nested(CustomerContactView, required=True)
    assigned_at = fields.String(required=True)
    accept_by = fields.String(required=True, allow_none=True)
    schedule_by = fields.String(required=True, allow_none=True)
    appointment = fields.Nested(AppointmentView, required=True, allow_none=True)
    arrived_at = fields.String(required=True, allow_none=True)
    completed_at = fields.String(required=True, allow_none=True)
    version = fields.Integer(required=True)


class PartnerOrderPage(Schema):
    items = fields.List(fields.Nested(PartnerOrderView), required=True)
    page = fields.Integer(required=True)
    page_size = fields.Integer(required=True)
    total = fields.Integer(required=True)


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    correlation_id = fields.String()
    fields = fields.Dict(required=True)  # last: the name shadows marshmallow.fields below it


class ErrorResponse(Schema):
    error = fields.Nested(ErrorBody, required=True)
