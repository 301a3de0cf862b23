"""Choosing a service partner for an order: plain Python, no I/O, no clock.

The service loads the partners and today's load, calls `choose_partner`, and records the
`Choice` (who, why, and whom it considered) in its event; `partner_id is None` means escalate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from contracts.errors import Conflict

# order statuses (from orders) in which an order may be handed to a partner
DISPATCHABLE_STATUSES = frozenset({"created", "reopened"})

BEST_RATED_LEAST_LOADED = "best_rated_least_loaded"
NO_PARTNER_COVERS_DISTRICT = "no_partner_covers_district"
NO_PARTNER_QUALIFIED_FOR_CATEGORY = "no_partner_qualified_for_category"
ALL_CANDIDATES_EXCLUDED = "all_candidates_excluded"
NO_CAPACITY_LEFT = "no_capacity_left"


@dataclass(frozen=True)
class PartnerProfile:
    partner_id: str
    name: str
    districts: frozenset[tuple[str, str, str]]  # (province, city, district); "*" = all
    categories: frozenset[str]  # product categories it is qualified for
    daily_capacity: int
    rating: float  # 0..5, higher is better
    active: bool = True


@dataclass(frozen=True)
class OrderToPlace:
    order_id: str
    order_type: str  # install | repair | maintenance | complaint
    category: str
    district: tuple[str, str, str]
    status: str  # the order's status in orders
    fault_code: str | None
    # partners that rejected, timed out or were disputed for this order
    excluded_partners: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    partner_id: str
    rating: float
    load_today: int
    capacity_left: int


@dataclass(frozen=True)
class Choice:
    partner_id: str | None  # None: nobody qualified is left, escalate
    reason: str  # one of the reason constants above
    considered: tuple[Candidate, ...]  # qualified, not excluded, in ranked order
    explanation: str  # one sentence for people


class NotDispatchable(Conflict):
    """The order must not go to a partner (yet); `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def ready_for_dispatch(order: OrderToPlace) -> None:
    """Raise NotDispatchable unless the order may be handed to a partner now."""
    if order.order_type == "complaint":
        raise NotDispatchable(
            "complaint_not_dispatched",
            f"{order.order_id} is a complaint: it goes to the complaint group, never to a partner")
    if order.order_type == "repair" and order.status == "awaiting_fault":
        raise NotDispatchable(
            "fault_code_required",
            f"repair {order.order_id} waits for a catalogue fault code before dispatch")
    if order.status not in DISPATCHABLE_STATUSES:
        raise NotDispatchable("not_ready", f"{order.order_id} is {order.status}, not ready")
    if order.order_type == "repair" and order.fault_code is None:
        raise NotDispatchable(
            "fault_code_required",
            f"repair {order.order_id} has no catalogue fault code: free text is not enough")


def choose_partner(order: OrderToPlace, partners: Iterable[PartnerProfile],
                   load_today: Mapping[str, int]) -> Choice:
    """The best-rated, least-loaded qualified partner with capacity left today, or None and why.

    `considered` lists every active partner covering the district for the category and not
    excluded, ranked: those with capacity left first, so a full partner is recorded but never
    chosen.
    """
    ready_for_dispatch(order)
    covering = [p for p in partners if p.active and covers(p, order.district)]
    skilled = [p for p in covering if order.category in p.categories]
    eligible = [p for p in skilled if p.partner_id not in order.excluded_partners]
    ranked = sorted(eligible, key=lambda p: _rank(p, load_today.get(p.partner_id, 0)))
    considered = tuple(_candidate(p, load_today.get(p.partner_id, 0)) for p in ranked)
    where = order.district[2]
    what = order.category

    if not covering:
        return Choice(None, NO_PARTNER_COVERS_DISTRICT, considered,
                      f"no active partner covers {' '.join(order.district)}")
    if not skilled:
        return Choice(None, NO_PARTNER_QUALIFIED_FOR_CATEGORY, considered,
                      f"{_partners(len(covering))} cover {where} but none is qualified "
                      f"for {what}")
    if not eligible:
        return Choice(None, ALL_CANDIDATES_EXCLUDED, considered,
                      f"{_partners(len(skilled))} cover {where} for {what}; all are excluded "
                      f"for this order (rejected, timed out or disputed)")
    best = considered[0]
    if best.capacity_left <= 0:
        excluded = len(skilled) - len(eligible)
        also = f"{excluded} excluded, " if excluded else ""
        return Choice(None, NO_CAPACITY_LEFT, considered,
                      f"{_partners(len(skilled))} cover {where} for {what}; "
                      f"{also}{len(eligible)} at daily capacity")
    chosen = ranked[0]
    return Choice(best.partner_id, BEST_RATED_LEAST_LOADED, considered,
                  f"{_partners(len(skilled))} cover {where} for {what}; chose "
                  f"{best.partner_id} (rating {best.rating:g}, "
                  f"{best.load_today}/{chosen.daily_capacity} today)")


def covers(partner: PartnerProfile, district: tuple[str, str, str]) -> bool:
    """Whether the partner covers the district; "*" as city or district covers all of it."""
    province, city, name = district
    return bool({(province, city, name), (province, city, "*"), (province, "*", "*")}
                & partner.districts)


def _rank(partner: PartnerProfile, load: int) -> tuple[bool, float, Fraction, int, str]:
    """Sort key: capacity left, higher rating, lower load ratio, more left, partner id."""
    capacity = partner.daily_capacity
    full = load >= capacity
    # exact ratios, so 3/20 and 6/40 tie and fall through to the next rule
    ratio = Fraction(load, capacity) if capacity > 0 else Fraction(0)
    return (full, -partner.rating, ratio, load - capacity, partner.partner_id)


def _candidate(partner: PartnerProfile, load: int) -> Candidate:
    return Candidate(partner.partner_id, partner.rating, load,
                     max(partner.daily_capacity - load, 0))


def _partners(count: int) -> str:
    return f"{count} partner{'s' if count != 1 else ''}"
