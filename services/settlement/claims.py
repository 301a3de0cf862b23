"""A partner's claim: opened from a completed visit, told the callback's outcome, and decided
by the rules again whenever new evidence arrives (a `claim_decided` event if anything moved).
"""

from __future__ import annotations

from sqlalchemy import Connection

from serviceloop.eventstore import Envelope, NewEvent
from services.settlement import evidence, queries, rules


def opened(envelope: Envelope) -> dict:
    """The claim an `order_completed` makes, not yet decided (version 0)."""
    p = envelope.payload
    lines = [{"line_id": "labour", "kind": "labour", "part_code": None, "old_serial": None,
              "new_serial": None, "charged_to": "manufacturer",
              "claimed_cents": p["labour_fee_cents"]},
             {"line_id": "travel", "kind": "travel", "part_code": None, "old_serial": None,
              "new_serial": None, "charged_to": "manufacturer",
              "claimed_cents": p["travel_fee_cents"]}]
    for n, part in enumerate(p["parts"], start=1):
        lines.append({"line_id": f"part-{n}", "kind": "part", "part_code": part["part_code"],
                      "old_serial": part["old_serial"], "new_serial": part["new_serial"],
                      "charged_to": part["charged_to"], "quantity": part["quantity"],
                      "claimed_cents": part["fee_cents"] * part["quantity"]})
    return {
        "claim_id": envelope.event_id, "order_id": p["order_id"],
        "partner_id": p["partner_id"], "completed_on": envelope.occurred_at[:10],
        "serial": p["serial"], "order_type": p["order_type"], "callback": "pending",
        "customer_paid_cents": p["customer_paid_cents"], "customer_paid_confirmed": None,
        "installation_barcode": p["installation_barcode"], "satisfaction": None,
        "lines": lines, "version": 0,
        "evidence": {"fault_code": p["fault_code"], "category": p["category"],
                     "arrival_lat": p["arrival_lat"], "arrival_lon": p["arrival_lon"],
                     "travel_distance_km": p["travel_distance_km"]},
    }


def record_callback(claim: dict, state: str, outcome: dict) -> None:
    """The callback's answer (verified, disputed, unverified) and what the customer said."""
    claim["callback"] = state
    if outcome.get("customer_paid_cents") is not None:
        claim["customer_paid_confirmed"] = outcome["customer_paid_cents"]
    if outcome.get("satisfaction") is not None:
        claim["satisfaction"] = outcome["satisfaction"]


def decide(conn: Connection, claim: dict, cause: str, max_checkin_km: float,
           found: queries.Evidence) -> NewEvent | None:
    """Run the rules on `claim` with the evidence as it stands (`found`: as
    queries.evidence read it); the `claim_decided` event if anything moved."""
    decided = rules.decide(evidence.context(conn, claim, max_checkin_km, found))
    lines = []
    for result, line in zip(decided, claim["lines"], strict=True):
        lines.append({**{k: line[k] for k in ("line_id", "kind", "part_code", "old_serial",
                                              "new_serial", "charged_to", "claimed_cents")},
                      "quantity": line.get("quantity", 1),
                      "decision": result.decision, "reasons": result.reasons,
                      "approved_cents": result.approved_cents,
                      "manufacturer_cents": result.manufacturer_cents,
                      "customer_cents": result.customer_cents})
    keys = ("callback", "customer_paid_confirmed", "satisfaction")
    if claim["version"] and lines == claim["lines"] and all(
            claim[k] == claim.get(f"_stored_{k}", claim[k]) for k in keys):
        return None
    payload = {k: claim[k] for k in (
        "claim_id", "order_id", "partner_id", "completed_on", "serial", "order_type",
        "callback", "customer_paid_cents", "customer_paid_confirmed",
        "installation_barcode", "evidence", "satisfaction")}
    return NewEvent("claim_decided", {**payload, "lines": lines, "cause": cause})
