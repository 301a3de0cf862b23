"""The orders service's events and RPC payloads (fields live here and nowhere else)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate, validates_schema
from marshmallow import ValidationError as _VE

from contracts.registry import event

ORDER_TYPES = ("install", "repair", "maintenance", "complaint")
CHANNELS = ("phone", "web", "sms", "email", "dealer")
ORDER_STATUSES = (
    "awaiting_fault", "created", "assigned", "accepted", "scheduled", "on_site", "completed",
    "verified", "disputed", "reopened", "unverified", "settled", "closed", "escalated",
    "cancelled",
    # transient: dispatch appends the next assignment or an escalation in the same transaction
    "rejected", "sla_breached",
)
OPEN_STATUSES = tuple(s for s in ORDER_STATUSES if s not in ("closed", "cancelled"))
# Not on_site: the partner is at the customer's home doing the work. Cancelling then would
# withdraw the order under a visit that still ends in fitted parts and a claim; the visit is
# completed and, if the customer disagrees, disputed at the callback instead.
CANCELLABLE_STATUSES = ("awaiting_fault", "created", "assigned", "accepted", "scheduled",
                        "escalated", "reopened", "rejected", "sla_breached")
CANCEL_REASONS = ("customer_request", "duplicate", "resolved_by_phone", "product_not_ours",
                  "unreachable", "other")
ROUTES = ("dispatch", "complaint_group")

_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
_text = validate.Length(min=1, max=2000)


class AddressSchema(Schema):
    province = fields.String(required=True, validate=validate.Length(min=1, max=40))
    city = fields.String(required=True, validate=validate.Length(min=1, max=40))
    district = fields.String(required=True, validate=validate.Length(min=1, max=40))
    street = fields.String(required=True, validate=validate.Length(min=1, max=200))
    lat = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-90, 90))
    lon = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-180, 180))


class ComponentWarrantySchema(Schema):
    component = fields.String(required=True)
    parts_until = fields.Date(required=True)
    labour_until = fields.Date(required=True)
    parts_covered = fields.Boolean(required=True)
    labour_covered = fields.Boolean(required=True)


class WarrantyTermSchema(Schema):
    component = fields.String(required=True)
    parts_until = fields.Date(required=True)
    labour_until = fields.Date(required=True)


# -- events ---------------------------------------------------------------------------------


@event("orders", "customer_registered")
class CustomerRegistered(Schema):
    customer_id = _id
    name = fields.String(required=True, validate=validate.Length(min=1, max=80))
    phone = fields.String(required=True)
    address = fields.Nested(AddressSchema, required=True)


@event("orders", "product_registered")
class ProductRegistered(Schema):
    customer_id = _id
    product_id = _id
    category = fields.String(required=True)
    model = fields.String(required=True)
    serial = fields.String(required=True)
    purchase_date = fields.Date(required=True)
    installation_date = fields.Date(required=True, allow_none=True)
    warranty = fields.List(fields.Nested(WarrantyTermSchema), required=True)


@event("orders", "order_created")
class OrderCreated(Schema):
    order_id = _id
    request_id = fields.String(required=True, allow_none=True)
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    status = fields.String(required=True, validate=validate.OneOf(("awaiting_fault", "created")))
    routed_to = fields.String(required=True, validate=validate.OneOf(ROUTES))
    customer_id = _id
    product_id = _id
    phone = fields.String(required=True)
    address = fields.Nested(AddressSchema, required=True)
    category = fields.String(required=True)
    model = fields.String(required=True)
    serial = fields.String(required=True)
    description = fields.String(required=True, validate=validate.Length(max=2000))
    fault_code = fields.String(required=True, allow_none=True)
    related_order_id = fields.String(required=True, allow_none=True)
    about_partner_id = fields.String(required=True, allow_none=True)
    warranty = fields.List(fields.Nested(ComponentWarrantySchema), required=True)
    in_warranty = fields.Boolean(required=True)


@event("orders", "order_fault_recorded")
class OrderFaultRecorded(Schema):
    order_id = _id
    fault_code = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))


@event("orders", "order_cancelled")
class OrderCancelled(Schema):
    order_id = _id
    reason = fields.String(required=True, validate=validate.OneOf(CANCEL_REASONS))
    note = fields.String(required=True, validate=validate.Length(max=2000))
    previous_status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))


@event("orders", "order_progressed")
class OrderProgressed(Schema):
    """Dispatch worked the order: its status, partner and appointment as the call centre sees
    them after the dispatch event `dispatch_event_id` (the causation), which was version
    `dispatch_version` of dispatch's stream for the order. Fields the dispatch event did not
    speak about carry their previous value."""

    order_id = _id
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))
    partner_id = fields.String(required=True, allow_none=True,
                               validate=validate.Length(min=1, max=64))
    window_start = fields.DateTime(required=True, allow_none=True, format="iso")
    window_end = fields.DateTime(required=True, allow_none=True, format="iso")
    detail = fields.String(required=True, validate=validate.Length(max=2000))
    dispatch_event_type = fields.String(required=True, validate=validate.Length(min=1, max=80))
    dispatch_event_id = fields.String(required=True, validate=validate.Length(equal=36))
    dispatch_version = fields.Integer(required=True, strict=True,
                                      validate=validate.Range(min=1))


VERIFICATION_OUTCOMES = ("verified", "disputed", "unverified", "closed_unverified",
                         "sent_back")


@event("orders", "order_verification_recorded")
class OrderVerificationRecorded(Schema):
    """The callback's answer about the order's latest visit, as the call centre sees it."""

    order_id = _id
    outcome = fields.String(required=True, validate=validate.OneOf(VERIFICATION_OUTCOMES))
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))
    task_id = fields.String(required=True)
    detail = fields.String(required=True, validate=validate.Length(max=2000))
    complaint_order_id = fields.String(required=True, allow_none=True)


@event("orders", "order_settled")
class OrderSettled(Schema):
    """The verified work was paid in a closed settlement period: the order's loop is closed."""

    order_id = _id
    period = fields.String(required=True)
    partner_id = fields.String(required=True)
    payable_cents = fields.Integer(required=True, strict=True)


# -- RPC payloads ---------------------------------------------------------------------------


class ProductInput(Schema):
    model = fields.String(required=True, validate=validate.Length(min=1, max=40))
    serial = fields.String(required=True, validate=validate.Length(min=1, max=64))
    purchase_date = fields.Date(required=True)
    installation_date = fields.Date(load_default=None, allow_none=True)

    @validates_schema
    def _installed_after_purchase(self, data: dict, **_: object) -> None:
        installed = data.get("installation_date")
        if installed and installed < data["purchase_date"]:
            raise _VE("installation cannot precede purchase", "installation_date")


class RegisterCustomer(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=80))
    phone = fields.String(required=True, validate=validate.Length(min=5, max=32))
    address = fields.Nested(AddressSchema, required=True)
    products = fields.List(fields.Nested(ProductInput), load_default=list)
    agent_id = fields.String(load_default="system", validate=validate.Length(min=1, max=40))


class RegisterProduct(ProductInput):
    customer_id = _id
    agent_id = fields.String(load_default="system", validate=validate.Length(min=1, max=40))


class CreateOrder(Schema):
    request_id = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=8, max=64))
    product_id = _id
    order_type = fields.String(required=True, validate=validate.OneOf(ORDER_TYPES))
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    fault_code = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=1, max=40))
    related_order_id = fields.String(load_default=None, allow_none=True)
    agent_id = fields.String(required=True, validate=validate.Length(min=1, max=40))


class FileComplaint(Schema):
    request_id = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=8, max=64))
    order_id = _id
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    description = fields.String(required=True, validate=_text)
    agent_id = fields.String(required=True, validate=validate.Length(min=1, max=40))


class RecordFault(Schema):
    order_id = _id
    fault_code = fields.String(required=True, validate=validate.Length(min=1, max=40))
    agent_id = fields.String(required=True, validate=validate.Length(min=1, max=40))


class CancelOrder(Schema):
    order_id = _id
    reason = fields.String(required=True, validate=validate.OneOf(CANCEL_REASONS))
    note = fields.String(load_default="", validate=validate.Length(max=2000))
    agent_id = fields.String(required=True, validate=validate.Length(min=1, max=40))


class ListOrders(Schema):
    status = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(ORDER_STATUSES))
    phone = fields.String(load_default=None, allow_none=True)
    product_id = fields.String(load_default=None, allow_none=True)
    customer_id = fields.String(load_default=None, allow_none=True)
    created_from = fields.Date(load_default=None, allow_none=True)
    created_to = fields.Date(load_default=None, allow_none=True)
    page = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1))
    page_size = fields.Integer(load_default=50, strict=True, validate=validate.Range(1, 500))


# -- RPC answers ----------------------------------------------------------------------------


class OrderView(Schema):
    order_id = fields.String()
    order_type = fields.String()
    channel = fields.String()
    status = fields.String()
    routed_to = fields.String()
    customer_id = fields.String()
    product_id = fields.String()
    phone = fields.String()
    category = fields.String()
    model = fields.String()
    serial = fields.String()
    description = fields.String()
    fault_code = fields.String(allow_none=True)
    related_order_id = fields.String(allow_none=True)
    in_warranty = fields.Boolean()
    warranty = fields.List(fields.Dict())
    cancel_reason = fields.String(allow_none=True)
    partner_id = fields.String(allow_none=True)
    window_start = fields.String(allow_none=True)
    window_end = fields.String(allow_none=True)
    dispatch_detail = fields.String(allow_none=True)
    dispatch_version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()
    version = fields.Integer()
    district = fields.String()


class ProductView(Schema):
    product_id = fields.String()
    category = fields.String()
    model = fields.String()
    serial = fields.String()
    purchase_date = fields.String()
    installation_date = fields.String(allow_none=True)
    warranty_end = fields.String()
    in_warranty_today = fields.Boolean()
    warranty = fields.List(fields.Dict())


class CustomerView(Schema):
    customer_id = fields.String()
    name = fields.String()
    phone = fields.String()
    address = fields.Dict()
    registered_at = fields.String()
