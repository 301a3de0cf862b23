"""The evidence a claim is decided on: facts recorded from the other services' events, and
everything the rules compare a claim with (read from the read models by queries.evidence),
put together into a `rules.Claim`.
"""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import Connection

from serviceloop.eventstore import Envelope, NewEvent
from services.settlement import queries, ratecard, rules


def order_facts_recorded(envelope: Envelope) -> NewEvent:
    """What settlement keeps of an `order_created`: warranty, product, where."""
    p = envelope.payload
    return NewEvent("order_facts_recorded", {
        "order_id": p["order_id"], "order_type": p["order_type"],
        "category": p["category"], "product_id": p["product_id"], "serial": p["serial"],
        "province": p["address"]["province"], "lat": p["address"].get("lat"),
        "lon": p["address"].get("lon"), "warranty": p["warranty"]})


def sla_breach_recorded(envelope: Envelope) -> NewEvent:
    p = envelope.payload
    return NewEvent("sla_breach_recorded", {
        "breach_id": envelope.event_id, "order_id": p["order_id"],
        "partner_id": p["partner_id"], "kind": p["kind"], "due_at": p["due_at"]})


def context(conn: Connection, claim: dict, max_checkin_km: float,
            found: queries.Evidence) -> rules.Claim:
    """`found`: what the read models hold for `claim` (queries.evidence), its facts known."""
    facts, others = found.facts, found.others
    evidence = claim["evidence"]
    day = claim["completed_on"]
    (card_id, card), (list_id, price_list) = _cards(conn, claim, found)
    # the decision says which cards priced it: a settled claim keeps them
    evidence["rate_card_id"], evidence["price_list_id"] = card_id, list_id
    prices = {p["part_code"]: p["cents"] for p in (price_list or [])}
    region = facts["province"]
    repeat = [(date.fromisoformat(day) - date.fromisoformat(o["completed_on"])).days
              for o in others if o["serial"] == claim["serial"]
              and o["partner_id"] == claim["partner_id"] and o["order_type"] == "repair"
              and o["order_id"] != claim["order_id"] and o["completed_on"] <= day]
    checkin = None
    if None not in (evidence["arrival_lat"], evidence["arrival_lon"], facts["lat"],
                    facts["lon"]):
        checkin = rules.distance_km(evidence["arrival_lat"], evidence["arrival_lon"],
                                    float(facts["lat"]), float(facts["lon"]))
    return rules.Claim(
        claim_id=claim["claim_id"], order_id=claim["order_id"],
        partner_id=claim["partner_id"], order_type=claim["order_type"],
        category=evidence["category"], serial=claim["serial"],
        completed_on=date.fromisoformat(day), fault_code=evidence["fault_code"],
        installation_barcode=claim["installation_barcode"],
        lines=tuple(rules.Line(
            line_id=line["line_id"], kind=line["kind"],
            claimed_cents=line["claimed_cents"], charged_to=line["charged_to"],
            part_code=line.get("part_code"), old_serial=line.get("old_serial"),
            new_serial=line.get("new_serial"), quantity=line.get("quantity", 1))
            for line in claim["lines"]),
        callback=claim["callback"],
        warranty={w["component"]: w for w in json.loads(facts["warranty"])},
        labour_rate_cents=ratecard.labour_rate(card, claim["order_type"],
                                               evidence["category"], region),
        travel_rate_cents=ratecard.travel_rate(card, evidence["travel_distance_km"],
                                               region),
        part_prices=prices, customer_paid_cents=claim["customer_paid_cents"],
        customer_paid_confirmed=claim["customer_paid_confirmed"], checkin_km=checkin,
        max_checkin_km=max_checkin_km,
        serials_claimed_elsewhere=found.serials,
        barcodes_claimed_elsewhere=frozenset(o["installation_barcode"] for o in others
                                             if o["installation_barcode"]),
        # a re-visit after a dispute is a new claim for the same order, not a duplicate
        order_paid_elsewhere=any(o["order_id"] == claim["order_id"]
                                 and o["callback"] != "disputed" for o in others),
        same_partner_repair_days_ago=min(repeat) if repeat else None,
        returned_serials=found.returned)


def _cards(conn: Connection, claim: dict, found: queries.Evidence) -> tuple[tuple, tuple]:
    """The rate card and price list that price `claim`: those in force on its completion
    day, except for a claim already in a closed statement, which keeps the ones it was
    priced with then (a card loaded or back-dated later does not reprice a closed period;
    evidence arriving later is paid at the same rates, as an adjustment). Where the kept
    card left a line unpriced (no rate, part not listed), the card now in force prices it."""
    evidence = claim["evidence"]
    reasons = {r for line in claim["lines"] for r in line.get("reasons", ())}
    cards = []
    for key, kind, unpriced in (("rate_card_id", "rates", "no_rate_in_force"),
                                ("price_list_id", "parts", "part_not_on_price_list")):
        kept = queries.card(conn, evidence[key]) if found.settled and evidence.get(key) \
            and unpriced not in reasons else (None, None)
        cards.append(kept if kept[0] else found.in_force[kind])
    return cards[0], cards[1]
