"""The audit of a claim: every line gets a decision and the reasons behind it.

Each rule is a small function `rule(claim, line) -> Finding | None`; a new rule is one new
function added to RULES. A line's decision is the most severe finding (rejected > held >
cut > approved); a cut also says the amount it cuts to. Plain Python: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from services.orders.catalog import CATALOG, UnknownCatalogEntry

APPROVED, CUT, HELD, REJECTED = "approved", "cut", "held", "rejected"
SEVERITY = {APPROVED: 0, CUT: 1, HELD: 2, REJECTED: 3}
REPEAT_REPAIR_DAYS = 30


@dataclass(frozen=True)
class Line:
    line_id: str  # labour | travel | part-<n>
    kind: str  # labour | travel | part
    claimed_cents: int
    charged_to: str  # manufacturer | customer (what the partner says)
    part_code: str | None = None
    old_serial: str | None = None
    new_serial: str | None = None
    quantity: int = 1


@dataclass(frozen=True)
class Claim:
    """A completion with every piece of evidence the rules look at."""

    claim_id: str
    order_id: str
    partner_id: str
    order_type: str
    category: str
    serial: str
    completed_on: date
    fault_code: str | None
    installation_barcode: str | None
    lines: tuple[Line, ...]
    callback: str  # pending | verified | disputed | unverified
    warranty: dict  # component -> {"parts_covered": bool, "labour_covered": bool}
    labour_rate_cents: int | None  # the rate card's, in force on completed_on
    travel_rate_cents: int | None
    part_prices: dict  # part_code -> cents, in force on completed_on
    customer_paid_cents: int  # what the partner says it collected
    customer_paid_confirmed: int | None  # what the customer told the callback
    checkin_km: float | None  # arrival to the customer's address, when both are known
    max_checkin_km: float = 2.0
    # evidence from other claims
    serials_claimed_elsewhere: frozenset[str] = frozenset()
    barcodes_claimed_elsewhere: frozenset[str] = frozenset()
    order_paid_elsewhere: bool = False
    same_partner_repair_days_ago: int | None = None
    returned_serials: frozenset[str] = frozenset()  # old parts returned or waived


@dataclass(frozen=True)
class Finding:
    decision: str
    reason: str
    cut_to: int | None = None


@dataclass
class LineDecision:
    line: Line
    decision: str = APPROVED
    reasons: list[str] = field(default_factory=list)
    approved_cents: int = 0
    manufacturer_cents: int = 0
    customer_cents: int = 0


Rule = Callable[[Claim, Line], Finding | None]


# -- the rules ------------------------------------------------------------------------------


def callback_outcome(claim: Claim, line: Line) -> Finding | None:
    """Nothing is paid before the customer confirmed the work; a dispute rejects."""
    if claim.callback == "disputed":
        return Finding(REJECTED, "callback_disputed")
    if claim.callback != "verified":
        return Finding(HELD, "callback_not_verified")
    return None


def warranty_part_out_of_warranty(claim: Claim, line: Line) -> Finding | None:
    if line.kind != "part" or line.charged_to != "manufacturer":
        return None
    component = _component(line.part_code)
    if not claim.warranty.get(component, {}).get("parts_covered", False):
        return Finding(REJECTED, "warranty_part_on_product_out_of_warranty")
    return None


def part_plausible_for_fault(claim: Claim, line: Line) -> Finding | None:
    if line.kind != "part":
        return None
    try:
        plausible = bool(claim.fault_code) and CATALOG.is_part_plausible(claim.fault_code,
                                                                          line.part_code)
    except UnknownCatalogEntry:
        plausible = False
    return None if plausible else Finding(HELD, "part_not_plausible_for_fault")


def duplicate_claim(claim: Claim, line: Line) -> Finding | None:
    if claim.order_paid_elsewhere:
        return Finding(REJECTED, "order_already_claimed")
    if line.kind == "part" and line.new_serial in claim.serials_claimed_elsewhere:
        return Finding(REJECTED, "part_serial_already_claimed")
    if (line.kind == "labour" and claim.installation_barcode
            and claim.installation_barcode in claim.barcodes_claimed_elsewhere):
        return Finding(REJECTED, "installation_barcode_already_claimed")
    return None


def above_rate_card(claim: Claim, line: Line) -> Finding | None:
    if line.kind == "labour":
        rate = claim.labour_rate_cents
    elif line.kind == "travel":
        rate = claim.travel_rate_cents
    else:
        price = claim.part_prices.get(line.part_code)
        rate = None if price is None else price * line.quantity
        if price is None:
            return Finding(HELD, "part_not_on_price_list")
    if rate is None:
        return Finding(HELD, "no_rate_in_force")
    if line.claimed_cents > rate:
        return Finding(CUT, f"{line.kind}_above_rate_card", cut_to=rate)
    return None


def repeat_repair(claim: Claim, line: Line) -> Finding | None:
    """The same product repaired again by the same partner within 30 days: no labour fee."""
    days = claim.same_partner_repair_days_ago
    if line.kind == "labour" and claim.order_type == "repair" and days is not None \
            and days <= REPEAT_REPAIR_DAYS:
        return Finding(REJECTED, "repeat_repair_within_30_days")
    return None


def old_part_returned(claim: Claim, line: Line) -> Finding | None:
    """An in-warranty part is paid once the replaced part is back at a parts centre (or a
    named person waived the return)."""
    if line.kind != "part" or line.charged_to != "manufacturer":
        return None
    if not line.old_serial or line.old_serial not in claim.returned_serials:
        return Finding(HELD, "old_part_not_returned")
    return None


def checkin_distance(claim: Claim, line: Line) -> Finding | None:
    if claim.checkin_km is not None and claim.checkin_km > claim.max_checkin_km:
        return Finding(HELD, "checkin_far_from_customer")
    return None


def customer_paid_matches(claim: Claim, line: Line) -> Finding | None:
    confirmed = claim.customer_paid_confirmed
    if confirmed is not None and confirmed != claim.customer_paid_cents:
        return Finding(HELD, "customer_paid_mismatch")
    return None


RULES: tuple[Rule, ...] = (
    callback_outcome, warranty_part_out_of_warranty, part_plausible_for_fault, duplicate_claim,
    above_rate_card, repeat_repair, old_part_returned, checkin_distance, customer_paid_matches,
)


# -- deciding -------------------------------------------------------------------------------


def decide(claim: Claim, rules: tuple[Rule, ...] = RULES) -> list[LineDecision]:
    decisions = []
    for line in claim.lines:
        result = LineDecision(line)
        amount = line.claimed_cents
        for rule in rules:
            finding = rule(claim, line)
            if finding is None:
                continue
            result.reasons.append(finding.reason)
            if SEVERITY[finding.decision] > SEVERITY[result.decision]:
                result.decision = finding.decision
            if finding.cut_to is not None:
                amount = min(amount, finding.cut_to)
        if result.decision in (APPROVED, CUT):
            result.approved_cents = amount
            if _covered(claim, line):
                result.manufacturer_cents = amount
            else:
                result.customer_cents = amount
        decisions.append(result)
    return decisions


def _covered(claim: Claim, line: Line) -> bool:
    """Whether the manufacturer pays this line (the warranty covers it), else the customer."""
    if line.kind == "part":
        return line.charged_to == "manufacturer" and claim.warranty.get(
            _component(line.part_code), {}).get("parts_covered", False)
    return claim.warranty.get("unit", {}).get("labour_covered", False)


def _component(part_code: str | None) -> str:
    try:
        return CATALOG.component_of_part(part_code or "")
    except UnknownCatalogEntry:
        return "unit"


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))
