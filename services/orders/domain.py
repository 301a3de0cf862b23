"""The service order and the customer as plain Python: commands in, events out.

No nameko, no SQLAlchemy, no clock reads: `today` and identifiers are passed in.
State is a fold of the stream's events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from contracts.errors import Conflict, NotFound, ValidationFailed
from contracts.orders import CANCELLABLE_STATUSES
from serviceloop.eventstore import NewEvent
from services.orders.catalog import Catalog, UnknownCatalogEntry

# -- phone numbers --------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s\-().]")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_LANDLINE = re.compile(r"^0\d{2,3}\d{7,8}$")
_HOTLINE = re.compile(r"^[48]00\d{7}$")


def normalise_phone(raw: str) -> str:
    """One form per number: 11-digit mobiles, 0-prefixed landlines; +86/0086 dropped."""
    digits = _SEPARATORS.sub("", raw or "")
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if _MOBILE.match(digits) or _LANDLINE.match(digits) or _HOTLINE.match(digits):
        return digits
    if not digits.startswith("0") and re.fullmatch(r"[2-9]\d{9,10}", digits):
        return "0" + digits  # a landline given without its trunk prefix
    raise ValidationFailed(f"{raw!r} is not a phone number", {"phone": ["not a phone number"]},
                           code="invalid_phone")


# -- customer -------------------------------------------------------------------------------


def register_customer(customer_id: str, name: str, phone: str, address: dict) -> NewEvent:
    return NewEvent("customer_registered", {
        "customer_id": customer_id, "name": name.strip(), "phone": normalise_phone(phone),
        "address": address,
    })


def register_product(catalog: Catalog, customer_id: str, product_id: str, product: dict,
                     today: date) -> NewEvent:
    try:
        model = catalog.model(product["model"])
    except UnknownCatalogEntry:
        raise ValidationFailed(f"unknown model {product['model']!r}",
                               {"model": ["not in the catalogue"]}, code="unknown_model") from None
    if product["purchase_date"] > today:
        raise ValidationFailed("purchase date is in the future",
                               {"purchase_date": ["after today"]})
    installed = product.get("installation_date")
    if installed and installed > today:
        raise ValidationFailed("installation date is in the future",
                               {"installation_date": ["after today"]})
    terms = catalog.warranty(model.code, product["purchase_date"], installed, today)
    return NewEvent("product_registered", {
        "customer_id": customer_id, "product_id": product_id, "category": model.category,
        "model": model.code, "serial": product["serial"].strip(),
        "purchase_date": product["purchase_date"].isoformat(),
        "installation_date": installed.isoformat() if installed else None,
        "warranty": [{"component": t.component, "parts_until": t.parts_until.isoformat(),
                      "labour_until": t.labour_until.isoformat()} for t in terms],
    })


def warranty_on(terms: list[dict], on: date) -> list[dict]:
    """Per component and per parts/labour: is it covered on `on`?"""
    return [{
        **term,
        "parts_covered": on <= date.fromisoformat(term["parts_until"]),
        "labour_covered": on <= date.fromisoformat(term["labour_until"]),
    } for term in terms]


# -- order ----------------------------------------------------------------------------------


@dataclass
class Order:
    order_id: str
    version: int = 0
    status: str | None = None
    order_type: str | None = None
    category: str | None = None
    product_id: str | None = None
    fault_code: str | None = None
    partner_id: str | None = None
    window_start: str | None = None
    window_end: str | None = None
    dispatch_version: int = 0
    history: list[str] = field(default_factory=list)

    @classmethod
    def fold(cls, order_id: str, events: list[tuple[str, dict]]) -> Order:
        order = cls(order_id)
        for event_type, payload in events:
            order.apply(event_type, payload)
        return order

    def apply(self, event_type: str, payload: dict) -> None:
        self.version += 1
        self.history.append(event_type)
        if event_type == "order_created":
            self.status = payload["status"]
            self.order_type = payload["order_type"]
            self.category = payload["category"]
            self.product_id = payload["product_id"]
            self.fault_code = payload["fault_code"]
        elif event_type == "order_fault_recorded":
            self.fault_code = payload["fault_code"]
            self.status = payload["status"]
        elif event_type == "order_cancelled":
            self.status = "cancelled"
        elif event_type == "order_progressed":
            self.status = payload["status"]
            self.partner_id = payload["partner_id"]
            self.window_start = payload["window_start"]
            self.window_end = payload["window_end"]
            self.dispatch_version = payload["dispatch_version"]

    @property
    def exists(self) -> bool:
        return self.version > 0


def create_order(catalog: Catalog, order_id: str, command: dict, customer: dict,
                 product: dict, today: date, related: Order | None = None,
                 about_partner_id: str | None = None) -> NewEvent:
    """Intake: warranty decided now, a repair waits for its catalogue fault code."""
    order_type = command["order_type"]
    fault_code = command.get("fault_code")
    check_intake(command)
    if fault_code is not None:
        _check_fault(catalog, fault_code, product["model"])
    if command.get("related_order_id") and related is None:
        raise NotFound("the related order does not exist", {"related_order_id": ["unknown"]})
    if related is not None and related.product_id != product["product_id"]:
        raise ValidationFailed("the related order is for another product",
                               {"related_order_id": ["different product"]})
    status = "awaiting_fault" if order_type == "repair" and fault_code is None else "created"
    warranty = warranty_on(product["warranty"], today)
    unit = next(w for w in warranty if w["component"] == "unit")
    return NewEvent("order_created", {
        "order_id": order_id,
        "request_id": command.get("request_id"),
        "order_type": order_type,
        "channel": command["channel"],
        "status": status,
        # a complaint goes to the complaint group, never to the partner complained about
        "routed_to": "complaint_group" if order_type == "complaint" else "dispatch",
        "customer_id": customer["customer_id"],
        "product_id": product["product_id"],
        "phone": customer["phone"],
        "address": customer["address"],
        "category": product["category"],
        "model": product["model"],
        "serial": product["serial"],
        "description": command.get("description") or "",
        "fault_code": fault_code,
        "related_order_id": command.get("related_order_id"),
        "about_partner_id": about_partner_id,
        "warranty": warranty,
        "in_warranty": unit["parts_covered"],
    })


def check_intake(command: dict) -> None:
    """Rules on the command alone, checked before anything is looked up."""
    if command["order_type"] == "complaint" and not command.get("related_order_id"):
        raise ValidationFailed("a complaint is about an earlier order",
                               {"related_order_id": ["required for a complaint"]})


def record_fault(catalog: Catalog, order: Order, fault_code: str, model: str) -> NewEvent:
    _require(order)
    if order.order_type != "repair":
        raise Conflict("only a repair records a fault code", {"order_id": [order.order_type]},
                       code="not_a_repair")
    if order.status not in ("awaiting_fault", "created"):
        raise Conflict(f"the order is {order.status}: its fault can no longer be changed",
                       {"status": [order.status]}, code="invalid_transition")
    _check_fault(catalog, fault_code, model)
    return NewEvent("order_fault_recorded", {
        "order_id": order.order_id, "fault_code": fault_code, "status": "created",
    })


def cancel_order(order: Order, reason: str, note: str) -> NewEvent:
    _require(order)
    if order.status not in CANCELLABLE_STATUSES:
        raise Conflict(f"an order that is {order.status} cannot be cancelled",
                       {"status": [order.status]}, code="invalid_transition")
    return NewEvent("order_cancelled", {
        "order_id": order.order_id, "reason": reason, "note": note,
        "previous_status": order.status,
    })


# -- following dispatch ---------------------------------------------------------------------

# the status the call centre sees after each dispatch event; order_received,
# fault_code_received and order_withdrawn change nothing it sees, so orders does not follow them
DISPATCH_PROGRESS = {
    "order_assigned": "assigned",
    "order_accepted": "accepted",
    "appointment_scheduled": "scheduled",
    "appointment_cancelled": "accepted",
    "partner_arrived": "on_site",
    "order_completed": "completed",
    "order_rejected": "rejected",
    "assignment_timed_out": "sla_breached",
    "sla_breached": "sla_breached",
    "order_escalated": "escalated",
    "order_reopened": "reopened",
}
NOT_FOLLOWED = ("cancelled", "closed")


def progress(order: Order, event_type: str, event_id: str, dispatch_version: int,
             payload: dict) -> NewEvent | None:
    """What dispatch's event `event_type` (version `dispatch_version` of its stream for the
    order) changes in the order as the call centre sees it; None when nothing.

    Dispatch's event types come on separate queues and may overtake each other, so the
    latest dispatch version wins: an older or repeated one changes nothing. Once cancelled
    or closed here, the order no longer follows dispatch.
    """
    _require(order)
    status = DISPATCH_PROGRESS.get(event_type)
    if (status is None or order.status in NOT_FOLLOWED
            or dispatch_version <= order.dispatch_version):
        return None
    partner_id = payload.get("partner_id", order.partner_id)
    window = (order.window_start, order.window_end)
    if event_type in ("order_assigned", "appointment_cancelled"):
        window = (None, None)  # a new partner, or the appointment is off: none agreed
    elif event_type == "appointment_scheduled":
        window = (payload["window_start"], payload["window_end"])
    elif event_type in ("order_escalated", "order_reopened"):
        partner_id, window = None, (None, None)  # nobody holds the order until assigned
    return NewEvent("order_progressed", {
        "order_id": order.order_id, "status": status, "partner_id": partner_id,
        "window_start": window[0], "window_end": window[1],
        "detail": _progress_detail(event_type, payload)[:2000],
        "dispatch_event_type": event_type, "dispatch_event_id": event_id,
        "dispatch_version": dispatch_version,
    })


def _progress_detail(event_type: str, p: dict) -> str:
    if event_type in ("order_assigned", "order_escalated"):
        return p["explanation"]
    if event_type == "order_rejected":
        return f"{p['reason_code']}: {p['note']}" if p["note"] else p["reason_code"]
    if event_type == "assignment_timed_out":
        return "not_accepted"
    if event_type == "sla_breached":
        return p["kind"]
    if event_type == "appointment_cancelled":
        return p["reason_code"]
    if event_type == "order_reopened":
        return ", ".join(p["reasons"])
    return ""


def _require(order: Order) -> None:
    if not order.exists:
        raise NotFound(f"order {order.order_id} does not exist", {"order_id": ["unknown"]})


def _check_fault(catalog: Catalog, fault_code: str, model: str) -> None:
    try:
        catalog.fault(fault_code)
    except UnknownCatalogEntry:
        raise ValidationFailed(f"unknown fault code {fault_code!r}",
                               {"fault_code": ["not in the catalogue"]},
                               code="unknown_fault_code") from None
    if not catalog.fault_belongs_to(fault_code, model):
        raise ValidationFailed(f"fault {fault_code} is not a fault of model {model}",
                               {"fault_code": ["wrong category for this product"]},
                               code="unknown_fault_code")


# -- following the callback -----------------------------------------------------------------

# callback event -> (outcome, the status the call centre then sees)
CALLBACK_OUTCOMES = {
    "order_verified": ("verified", "verified"),
    "order_disputed": ("disputed", "disputed"),
    "order_unverified": ("unverified", "unverified"),
    "unverified_closed": ("closed_unverified", "closed"),
    "task_returned": ("sent_back", "completed"),
}
# the status each outcome applies to: anything else means the order moved on (a re-visit)
_APPLIES_TO = {"verified": ("completed",), "disputed": ("completed",),
               "unverified": ("completed",), "closed_unverified": ("unverified",),
               "sent_back": ("unverified",)}


# dispatch's statuses of a visit not yet reported done
_BEFORE_COMPLETION = ("assigned", "accepted", "scheduled", "on_site")


def awaits_completion(order: Order, event_type: str, payload: dict) -> bool:
    """True when the callback's outcome may be about a visit whose completion orders has not
    seen yet: dispatch's `order_completed` comes on another queue and can be overtaken.
    The caller then checks its log for that completion (the task id is its event id)."""
    outcome, _ = CALLBACK_OUTCOMES[event_type]
    return (outcome in ("verified", "unverified") and order.status in _BEFORE_COMPLETION
            and not payload["task_id"].startswith("review-"))


def verification(order: Order, event_type: str, payload: dict,
                 complaint_order_id: str | None = None) -> NewEvent | None:
    """The callback's outcome for the order's latest visit; None when it no longer applies."""
    _require(order)
    outcome, status = CALLBACK_OUTCOMES[event_type]
    if payload["task_id"].startswith("review-") or order.status in NOT_FOLLOWED:
        return None
    if outcome == "disputed" and order.status != "completed":
        # dispatch's reopening (caused by this dispute) overtook it: record the dispute,
        # keep the newer status
        status = order.status
    elif order.status not in _APPLIES_TO[outcome]:
        return None
    if outcome == "disputed":
        detail = ", ".join(payload["reasons"])
    else:
        detail = payload.get("notes") or payload.get("note") or ""
    return NewEvent("order_verification_recorded", {
        "order_id": order.order_id, "outcome": outcome, "status": status,
        "task_id": payload["task_id"], "detail": detail[:2000],
        "complaint_order_id": complaint_order_id})
