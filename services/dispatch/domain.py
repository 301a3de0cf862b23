"""An order's life at dispatch as plain Python: state in, events out, no I/O, no clock reads.

The service reads the order's row (the fold of its stream), calls one function here with
`now` and the partner acting, and appends what comes back. Who may do what:

- only the partner the order is currently assigned to may act on it; a partner who had it
  before (rejected, timed out) gets a 409 `order_reassigned`, anyone else a 404;
- assigned → accepted → scheduled ⇄ (cancel appointment) accepted → on_site → completed;
- timers end an assignment that sat too long; the next partner is chosen at once.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from contracts.errors import Conflict, NotFound, ValidationFailed
from serviceloop.clock import isoformat, parse_time
from serviceloop.eventstore import NewEvent
from services.dispatch.assignment import Choice, OrderToPlace, PartnerProfile

ARRIVAL_EARLY_GRACE = timedelta(minutes=30)


@dataclass(frozen=True)
class Timers:
    """How long a partner has for each step (configuration: see DispatchSettings)."""

    accept_within: timedelta = timedelta(hours=2)
    schedule_within: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class DispatchOrder:
    order_id: str
    order_type: str
    status: str
    category: str
    model: str
    serial: str
    phone: str
    district: tuple[str, str, str]
    fault_code: str | None
    in_warranty: bool
    confirmation_code: str
    partner_id: str | None
    attempt: int
    excluded: frozenset[str]
    accept_by: datetime | None
    schedule_by: datetime | None
    window_start: datetime | None
    window_end: datetime | None
    arrived_at: str | None
    arrival_lat: float | None
    arrival_lon: float | None
    version: int

    @classmethod
    def from_row(cls, row: dict) -> DispatchOrder:
        return cls(
            order_id=row["order_id"], order_type=row["order_type"], status=row["status"],
            category=row["category"], model=row["model"], serial=row["serial"],
            phone=row["phone"], district=(row["province"], row["city"], row["district"]),
            fault_code=row["fault_code"], in_warranty=bool(row["in_warranty"]),
            confirmation_code=row["confirmation_code"], partner_id=row["partner_id"],
            attempt=row["attempt"], excluded=frozenset(json.loads(row["excluded"])),
            accept_by=_time(row["accept_by"]), schedule_by=_time(row["schedule_by"]),
            window_start=_time(row["window_start"]), window_end=_time(row["window_end"]),
            arrived_at=row["arrived_at"], arrival_lat=row["arrival_lat"],
            arrival_lon=row["arrival_lon"], version=row["version"],
        )

    def to_place(self) -> OrderToPlace:
        # assignment's vocabulary: orders' statuses, where a ready order is "created"
        status = {"ready": "created", "escalated": "created"}.get(self.status, self.status)
        return OrderToPlace(self.order_id, self.order_type, self.category, self.district,
                            status, self.fault_code, self.excluded)


def _time(value: str | None) -> datetime | None:
    return parse_time(value) if value else None


# -- from orders ----------------------------------------------------------------------------


def receive(order_created: dict) -> NewEvent:
    """Dispatch's copy of a new order, with the code the customer gives the partner at the end."""
    p = order_created
    if p["order_type"] == "complaint" or p["routed_to"] != "dispatch":
        status = "complaint"
    elif p["status"] == "awaiting_fault":
        status = "awaiting_fault"
    else:
        status = "ready"
    return NewEvent("order_received", {
        "order_id": p["order_id"], "order_type": p["order_type"], "status": status,
        "category": p["category"], "model": p["model"], "serial": p["serial"],
        "description": p["description"], "fault_code": p["fault_code"], "phone": p["phone"],
        "address": p["address"], "in_warranty": p["in_warranty"],
        "related_order_id": p["related_order_id"],
        "confirmation_code": f"{secrets.randbelow(10**6):06d}",
    })


def fault_code_received(order: DispatchOrder, fault_code: str) -> NewEvent | None:
    if order.status != "awaiting_fault":
        return None  # already had one (the repair came in with its code)
    return NewEvent("fault_code_received", {"order_id": order.order_id, "fault_code": fault_code})


def with_fault(order: DispatchOrder, fault_code: str) -> DispatchOrder:
    """The order once its fault code has come: ready for a partner."""
    return replace(order, fault_code=fault_code, status="ready")


def reopen(order: DispatchOrder, disputed: dict) -> tuple[NewEvent, DispatchOrder] | None:
    """A disputed visit: the order is ready again, without the partner if it was at fault."""
    if order.status != "completed" or order.partner_id != disputed["partner_id"]:
        return None  # an old visit's dispute, or already reopened
    event = NewEvent("order_reopened", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "reasons": disputed["reasons"], "partner_excluded": disputed["about_partner"]})
    excluded = order.excluded | {order.partner_id} if disputed["about_partner"] \
        else order.excluded
    return event, replace(order, status="ready", partner_id=None, excluded=frozenset(excluded))


def withdraw(order: DispatchOrder, reason: str) -> NewEvent | None:
    if order.status in ("completed", "withdrawn"):
        return None
    return NewEvent("order_withdrawn", {"order_id": order.order_id,
                                        "partner_id": order.partner_id, "reason": reason})


# -- choosing a partner ---------------------------------------------------------------------


def placement(order: DispatchOrder, choice: Choice, now: datetime, timers: Timers,
              assigned_by: str = "system") -> NewEvent:
    """The event that records `choice`: an assignment, or an escalation if nobody is left."""
    considered = [c.__dict__ for c in choice.considered]
    if choice.partner_id is None:
        return NewEvent("order_escalated", {
            "order_id": order.order_id, "reason": choice.reason,
            "explanation": choice.explanation, "considered": considered,
        })
    return NewEvent("order_assigned", {
        "order_id": order.order_id, "partner_id": choice.partner_id,
        "attempt": order.attempt + 1, "assigned_by": assigned_by, "reason": choice.reason,
        "explanation": choice.explanation, "considered": considered,
        "day": now.date().isoformat(), "accept_by": isoformat(now + timers.accept_within),
    })


def assign_by_person(order: DispatchOrder, partner: PartnerProfile, load_today: int,
                     now: datetime, timers: Timers, agent_id: str) -> NewEvent:
    """A person hands an order to a partner of their choosing (usually an escalated one)."""
    if order.status not in ("escalated", "ready"):
        raise Conflict(f"order {order.order_id} is {order.status}: only an escalated order "
                       "is assigned by hand", {"order_id": [order.status]},
                       code="not_escalated")
    if not partner.active:
        raise Conflict(f"partner {partner.partner_id} is inactive",
                       {"partner_id": ["inactive"]}, code="partner_inactive")
    if order.category not in partner.categories:
        raise Conflict(f"partner {partner.partner_id} is not qualified for {order.category}",
                       {"partner_id": ["not qualified"]}, code="partner_not_qualified")
    explanation = (f"assigned by agent {agent_id} to {partner.partner_id} "
                   f"({load_today}/{partner.daily_capacity} today)")
    choice = Choice(partner.partner_id, "assigned_by_person", (), explanation)
    return placement(order, choice, now, timers, assigned_by=f"agent:{agent_id}")


def ended(order: DispatchOrder) -> DispatchOrder:
    """The order as it stands once its current assignment has ended (partner excluded)."""
    excluded = order.excluded | {order.partner_id} if order.partner_id else order.excluded
    return replace(order, status="ready", partner_id=None, excluded=frozenset(excluded),
                   accept_by=None, schedule_by=None, window_start=None, window_end=None)


# -- what a partner does --------------------------------------------------------------------


# the statuses in which an order is its partner's to see and act on
HELD = frozenset(("assigned", "accepted", "scheduled", "on_site", "completed"))


def check_owner(order: DispatchOrder | None, partner_id: str, order_id: str,
                ever_assigned: bool) -> DispatchOrder:
    """The order, if `partner_id` holds it now; otherwise 409 (it had it) or 404 (never)."""
    if order is not None and order.partner_id == partner_id and order.status in HELD:
        return order
    if order is not None and ever_assigned:
        raise Conflict(f"order {order_id} is no longer assigned to you",
                       {"order_id": ["reassigned"]}, code="order_reassigned")
    raise NotFound(f"no order {order_id} is assigned to you", {"order_id": ["not found"]},
                   code="order_not_found")


def accept(order: DispatchOrder, now: datetime, timers: Timers) -> NewEvent:
    _require(order, ("assigned",), "accept")
    return NewEvent("order_accepted", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "schedule_by": isoformat(now + timers.schedule_within)})


def reject(order: DispatchOrder, reason_code: str, note: str) -> NewEvent:
    _require(order, ("assigned", "accepted"), "reject")
    return NewEvent("order_rejected", {"order_id": order.order_id,
                                       "partner_id": order.partner_id,
                                       "reason_code": reason_code, "note": note})


def schedule(order: DispatchOrder, start: datetime, end: datetime, now: datetime) -> NewEvent:
    _require(order, ("accepted", "scheduled"), "schedule")
    if end <= now:
        raise ValidationFailed("the window has already ended",
                               {"window_end": ["must be in the future"]}, code="window_in_past")
    if start - now > timedelta(days=60):
        raise ValidationFailed("appointments are booked at most 60 days ahead",
                               {"window_start": ["too far ahead"]}, code="window_too_far")
    return NewEvent("appointment_scheduled", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "window_start": isoformat(start), "window_end": isoformat(end)})


def cancel_appointment(order: DispatchOrder, reason_code: str, note: str, now: datetime,
                       timers: Timers) -> NewEvent:
    _require(order, ("scheduled",), "cancel the appointment of")
    return NewEvent("appointment_cancelled", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "reason_code": reason_code, "note": note,
        "schedule_by": isoformat(now + timers.schedule_within)})


def arrive(order: DispatchOrder, coordinates: dict | None, now: datetime) -> NewEvent:
    _require(order, ("scheduled",), "arrive for")
    coordinates = coordinates or {}
    within = (order.window_start - ARRIVAL_EARLY_GRACE <= now <= order.window_end
              if order.window_start and order.window_end else False)
    return NewEvent("partner_arrived", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "lat": coordinates.get("lat"), "lon": coordinates.get("lon"),
        "accuracy_m": coordinates.get("accuracy_m"), "within_window": within})


def complete(order: DispatchOrder, data: dict) -> NewEvent:
    _require(order, ("on_site",), "complete")
    fault_code = data["fault_code"] or order.fault_code
    errors: dict[str, list[str]] = {}
    if order.order_type == "install" and not data["installation_barcode"]:
        errors["installation_barcode"] = ["required for an installation"]
    if order.order_type == "repair" and not fault_code:
        errors["fault_code"] = ["required for a repair"]
    if errors:
        raise ValidationFailed("the completion report is incomplete", errors,
                               code="incomplete_report")
    parts = [dict(line) for line in data["parts"]]
    code = data["confirmation_code"]
    return NewEvent("order_completed", {
        "order_id": order.order_id, "partner_id": order.partner_id,
        "order_type": order.order_type, "category": order.category, "model": order.model,
        "serial": order.serial, "phone": order.phone, "in_warranty": order.in_warranty,
        "fault_code": fault_code,
        "work_done": data["work_done"], "parts": parts,
        "installation_barcode": data["installation_barcode"],
        "labour_fee_cents": data["labour_fee_cents"],
        "travel_fee_cents": data["travel_fee_cents"],
        "travel_distance_km": data["travel_distance_km"],
        "parts_fee_cents": sum(line["fee_cents"] * line["quantity"] for line in parts),
        "customer_paid_cents": data["customer_paid_cents"],
        "confirmation_matched": bool(code) and secrets.compare_digest(
            code.encode(), order.confirmation_code.encode()),
        "arrived_at": order.arrived_at, "arrival_lat": order.arrival_lat,
        "arrival_lon": order.arrival_lon,
    })


_SEQUENCE = ("assigned", "accepted", "scheduled", "on_site", "completed")


def _require(order: DispatchOrder, allowed: tuple[str, ...], action: str) -> None:
    """409 unless the order is in one of `allowed`; the code says which way it is off.

    Behind (e.g. completing an order never accepted): `not_<the step it still needs>`;
    past it (accepting twice): `already_<where it is>`.
    """
    if order.status in allowed:
        return
    where = _SEQUENCE.index(order.status) if order.status in _SEQUENCE else -1
    if 0 <= where < min(_SEQUENCE.index(s) for s in allowed):
        code = f"not_{_SEQUENCE[where + 1]}"
    elif where >= 0:
        code = f"already_{order.status}"
    else:
        code = "invalid_state"
    raise Conflict(f"cannot {action} order {order.order_id}: it is {order.status}",
                   {"status": [order.status]}, code=code)


# -- timers ---------------------------------------------------------------------------------


def overdue(order: DispatchOrder, now: datetime) -> NewEvent | None:
    """The event that ends an assignment whose deadline has passed, if any."""
    base = {"order_id": order.order_id, "partner_id": order.partner_id}
    if order.status == "assigned" and order.accept_by and order.accept_by <= now:
        return NewEvent("assignment_timed_out", {**base, "due_at": isoformat(order.accept_by)})
    if order.status == "accepted" and order.schedule_by and order.schedule_by <= now:
        return NewEvent("sla_breached", {**base, "kind": "not_scheduled",
                                         "due_at": isoformat(order.schedule_by)})
    if order.status == "scheduled" and order.window_end and order.window_end <= now:
        return NewEvent("sla_breached", {**base, "kind": "not_on_site",
                                         "due_at": isoformat(order.window_end)})
    return None
