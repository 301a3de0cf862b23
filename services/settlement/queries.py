"""Reads of the settlement read models: claims, order facts, cards, statements, breaches."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, ScalarSelect, and_, case, func, or_, select

from serviceloop.db import Prepared, fetch_rows
from serviceloop.projections import RowReader
from services.settlement.projections import (
    claim_parts,
    claims,
    order_facts,
    part_returns,
    rate_cards,
    settled,
    sla_breaches,
    statements,
)

DECISIONS = ("approved", "cut", "held", "rejected")


def decision_totals(conn: Connection) -> tuple[int, dict[str, int], dict[str, int]]:
    """Claims opened; per decision, the claims with any line so decided and the claimed cents
    so decided (approved: payable by the manufacturer)."""
    c = claims.c
    row = conn.execute(select(
        func.count(), func.sum(case((c.cut_cents > 0, 1), else_=0)),
        func.sum(case((c.held_cents > 0, 1), else_=0)),
        func.sum(case((c.rejected_cents > 0, 1), else_=0)),
        func.sum(case((c.payable_cents > 0, 1), else_=0)),
        func.sum(c.payable_cents), func.sum(c.cut_cents), func.sum(c.held_cents),
        func.sum(c.rejected_cents))).one()
    total, cut, held, rejected, approved = (int(v or 0) for v in row[:5])
    cents = {decision: int(v or 0) for decision, v in zip(DECISIONS, row[5:], strict=True)}
    return total, {"approved": approved, "cut": cut, "held": held, "rejected": rejected}, cents


# -- evidence recorded once ---------------------------------------------------------------------


# read on every delivery of an order's events: prepared, on the driver's cursor
_FACTS = RowReader(order_facts, "order_id = ?")
_ORDER_KNOWN = Prepared("SELECT 1 FROM order_facts WHERE order_id = ?")
_CLAIM_OPENED = Prepared("SELECT 1 FROM claims WHERE claim_id = ?")
_SETTLED = Prepared("SELECT 1 FROM settled WHERE claim_id = ?")
_CLAIM = RowReader(claims, "claim_id = ?", for_update=True)


def _found(conn: Connection, statement: Prepared, key: str) -> bool:
    """Whether `statement` (one of the `SELECT 1 … WHERE key = ?` above) finds a row."""
    return bool(fetch_rows(conn, statement.text(conn), (key,)))


def facts(conn: Connection, order_id: str) -> dict | None:
    return _FACTS.first(conn, (order_id,))


def order_known(conn: Connection, order_id: str) -> bool:
    return _found(conn, _ORDER_KNOWN, order_id)


def breach_recorded(conn: Connection, breach_id: str) -> bool:
    return conn.execute(select(sla_breaches.c.breach_id)
                        .where(sla_breaches.c.breach_id == breach_id)).first() is not None


def part_return_recorded(conn: Connection, serial: str) -> bool:
    return conn.execute(select(part_returns.c.serial)
                        .where(part_returns.c.serial == serial)).first() is not None


def sla_breaches_by_partner(conn: Connection, start: str, end: str) -> dict[str, int]:
    """How many SLA breaches each partner had falling due from `start` to `end`."""
    breaches: dict[str, int] = {}
    for partner_id, due_at in conn.execute(
            select(sla_breaches.c.partner_id, sla_breaches.c.due_at)).tuples():
        if start <= due_at[:10] <= end:
            breaches[partner_id] = breaches.get(partner_id, 0) + 1
    return breaches


# -- claims -------------------------------------------------------------------------------------


def claim_opened(conn: Connection, claim_id: str) -> bool:
    return _found(conn, _CLAIM_OPENED, claim_id)


def settled_before(conn: Connection, claim_id: str) -> bool:
    """Whether the claim is in a closed statement already."""
    return _found(conn, _SETTLED, claim_id)


def claim(conn: Connection, claim_id: str) -> dict | None:
    """The claim as it was last decided, to decide again (`_stored_*`: what is in the log).

    Locked to the end of the transaction on PostgreSQL: decisions on one claim (a callback's
    outcome, a returned part, a new rate card) are taken one after the other, each on the
    version the last one left, instead of conflicting and being retried."""
    row = _CLAIM.first(conn, (claim_id,))
    if row is None:
        return None
    claim = claim_view(row)
    for key in ("callback", "customer_paid_confirmed", "satisfaction"):
        claim[f"_stored_{key}"] = claim[key]
    return claim


def claim_view(row: dict) -> dict:
    view = dict(row)
    view["lines"] = json.loads(view["lines"])
    view["evidence"] = json.loads(view["evidence"])
    return view


def claims_of_order(conn: Connection, order_id: str) -> list[dict]:
    rows = conn.execute(select(claims).where(claims.c.order_id == order_id)
                        .order_by(claims.c.opened_position)).mappings().all()
    return [claim_view(dict(r)) for r in rows]


def other_visits(conn: Connection, claim: dict) -> list[str]:
    """The other claims for `claim`'s order (a re-visit's)."""
    return list(conn.execute(select(claims.c.claim_id).where(
        claims.c.order_id == claim["order_id"], claims.c.claim_id != claim["claim_id"])
    ).scalars().all())


def claims_awaiting_card(conn: Connection, effective_from: str) -> list[str]:
    """The claims a card effective from `effective_from` may price: completed on or after it
    and not in a closed statement, or with a line no card priced."""
    return list(conn.execute(select(claims.c.claim_id).outerjoin(
        settled, settled.c.claim_id == claims.c.claim_id).where(
        claims.c.completed_on >= effective_from,
        or_(settled.c.claim_id.is_(None), claims.c.lines.contains("no_rate_in_force"),
            claims.c.lines.contains("part_not_on_price_list")))
        .order_by(claims.c.opened_position)).scalars().all())


def claims_with_old_part(conn: Connection, serial: str) -> list[str]:
    return list(conn.execute(select(claim_parts.c.claim_id).where(
        claim_parts.c.old_serial == serial)).scalars().all())


def claims_of_partner(conn: Connection, partner_id: str) -> list[dict]:
    rows = conn.execute(select(claims).where(claims.c.partner_id == partner_id)) \
        .mappings().all()
    return [dict(r) for r in rows]


def claims_completed(conn: Connection, start: str, end: str) -> list[dict]:
    rows = conn.execute(select(claims).where(and_(claims.c.completed_on >= start,
                                                  claims.c.completed_on <= end))
                        .order_by(claims.c.opened_position)).mappings().all()
    return [dict(r) for r in rows]


def partners_with_claims(conn: Connection, end: str) -> list[str]:
    return list(conn.execute(select(claims.c.partner_id).distinct()
                             .where(claims.c.completed_on <= end)
                             .order_by(claims.c.partner_id)).scalars().all())


def claims_to_settle(conn: Connection, partner_id: str, end: str) -> list[dict]:
    """A partner's claims completed up to `end`, with what each was settled at so far."""
    rows = conn.execute(select(claims, settled.c.settled_cents).outerjoin(
        settled, settled.c.claim_id == claims.c.claim_id).where(
        claims.c.partner_id == partner_id, claims.c.completed_on <= end)
        .order_by(claims.c.completed_on, claims.c.claim_id)).mappings().all()
    return [dict(r) for r in rows]


# -- cards and statements -----------------------------------------------------------------------


# the rate card and the price list in force on a day, in one round trip (every decision
# prices with both)
_CARDS_IN_FORCE = " UNION ALL ".join(
    f"SELECT * FROM (SELECT kind, card_id, body FROM rate_cards WHERE kind = '{kind}'"
    " AND effective_from <= ? ORDER BY effective_from DESC, loaded_at DESC LIMIT 1)"
    f" AS {kind}" for kind in ("rates", "parts"))


def cards_in_force(conn: Connection, day: str) -> dict[str, tuple[str | None, object]]:
    """kind ("rates", "parts") -> (card id, body) of the card of that kind in force on
    `day`: the latest effective date on or before it, the later loaded of two with the same
    date; (None, None) if there is none."""
    found = {kind: (card_id, json.loads(body))
             for kind, card_id, body in fetch_rows(conn, _CARDS_IN_FORCE, (day, day))}
    return {kind: found.get(kind, (None, None)) for kind in ("rates", "parts")}


# -- the evidence a claim is decided on ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the read models hold, now, that a claim is decided on (`evidence`)."""

    facts: dict | None  # the order's facts; None if its order_created has not come yet
    others: list[dict]  # earlier claims sharing its order, serial or barcode (OTHER_COLUMNS)
    serials: frozenset[str]  # its new serials an earlier claim claimed already
    returned: frozenset[str]  # its old serials recorded as returned
    in_force: dict[str, tuple[str | None, object]]  # as cards_in_force on its completion day
    settled: bool  # in a closed statement already


OTHER_COLUMNS = ("claim_id", "order_id", "partner_id", "serial", "order_type", "completed_on",
                 "callback", "installation_barcode")
_FACT_COLUMNS = tuple(column.name for column in order_facts.columns)
# "earlier": opened before the claim; a claim not opened yet (deciding its completion) comes
# after every claim there is
_EARLIER = ("c.opened_position < COALESCE((SELECT b.opened_position FROM claims AS b"
            " WHERE b.claim_id = ?), c.opened_position + 1)")
_CARD = ("LEFT JOIN LATERAL (SELECT card_id, body FROM rate_cards WHERE kind = '{kind}' AND"
         " effective_from <= ? ORDER BY effective_from DESC, loaded_at DESC LIMIT 1) AS {kind}"
         " ON true")
# PostgreSQL: all of it in one statement, prepared (a decision is taken on every completion
# and every callback outcome); parameters in the order `evidence` passes them
_PG_EVIDENCE = Prepared(f"""
SELECT
  (SELECT json_agg(json_build_array({", ".join(f"c.{n}" for n in OTHER_COLUMNS)}))
     FROM claims AS c
    WHERE (c.order_id = ? OR c.serial = ? OR c.installation_barcode = ?)
      AND c.claim_id <> ? AND {_EARLIER}),
  (SELECT array_agg(p.new_serial) FROM claim_parts AS p JOIN claims AS c
       ON c.claim_id = p.claim_id
    WHERE p.new_serial = ANY(?) AND c.claim_id <> ? AND {_EARLIER}),
  (SELECT array_agg(r.serial) FROM part_returns AS r WHERE r.serial = ANY(?)),
  EXISTS (SELECT 1 FROM settled AS s WHERE s.claim_id = ?),
  rates.card_id, rates.body, parts.card_id, parts.body,
  {", ".join(f"f.{n}" for n in _FACT_COLUMNS)}
FROM (SELECT 1) AS one
{_CARD.format(kind="rates")}
{_CARD.format(kind="parts")}
LEFT JOIN order_facts AS f ON f.order_id = ?
""")


def evidence(conn: Connection, claim: dict) -> Evidence:
    """The order's facts, the earlier claims a rule compares `claim` with (found through
    indexes, so that deciding does not grow with the log), which of its serials were
    claimed or returned already, the cards in force on its day and whether it is settled:
    one round trip on PostgreSQL, a statement each on SQLite."""
    claim_id, order_id, day = claim["claim_id"], claim["order_id"], claim["completed_on"]
    barcode = claim["installation_barcode"] or None  # an empty barcode matches no other
    new_serials = [line["new_serial"] for line in claim["lines"] if line.get("new_serial")]
    old_serials = [line["old_serial"] for line in claim["lines"] if line.get("old_serial")]
    if conn.dialect.name != "postgresql":
        return _evidence_by_statements(conn, claim, barcode, new_serials, old_serials)
    row = fetch_rows(conn, _PG_EVIDENCE.text(conn), (
        order_id, claim["serial"], barcode, claim_id, claim_id,
        new_serials, claim_id, claim_id, old_serials, claim_id, day, day, order_id))[0]
    others, serials, returned, settled_already, rates_id, rates, parts_id, parts = row[:8]
    facts = dict(zip(_FACT_COLUMNS, row[8:], strict=True)) if row[8] is not None else None
    return Evidence(
        facts, [dict(zip(OTHER_COLUMNS, other, strict=True)) for other in others or ()],
        frozenset(serials or ()), frozenset(returned or ()),
        {"rates": (rates_id, json.loads(rates)) if rates_id else (None, None),
         "parts": (parts_id, json.loads(parts)) if parts_id else (None, None)},
        settled_already)


def _evidence_by_statements(conn: Connection, claim: dict, barcode: str | None,
                            new_serials: list[str], old_serials: list[str]) -> Evidence:
    c = claims.c
    related = [c.order_id == claim["order_id"], c.serial == claim["serial"]]
    if barcode:
        related.append(c.installation_barcode == barcode)
    others = select(*(c[n] for n in OTHER_COLUMNS)).where(
        or_(*related), c.claim_id != claim["claim_id"])
    serials = select(claim_parts.c.new_serial).join(
        claims, c.claim_id == claim_parts.c.claim_id).where(
        claim_parts.c.new_serial.in_(new_serials), c.claim_id != claim["claim_id"])
    if claim["version"]:
        others = others.where(c.opened_position < _position(claim))
        serials = serials.where(c.opened_position < _position(claim))
    returned = select(part_returns.c.serial).where(part_returns.c.serial.in_(old_serials))
    return Evidence(
        facts(conn, claim["order_id"]),
        [dict(r) for r in conn.execute(others).mappings()],
        frozenset(conn.execute(serials).scalars()) if new_serials else frozenset(),
        frozenset(conn.execute(returned).scalars()) if old_serials else frozenset(),
        cards_in_force(conn, claim["completed_on"]),
        bool(claim["version"]) and settled_before(conn, claim["claim_id"]))


def _position(claim: dict) -> ScalarSelect:
    return select(claims.c.opened_position).where(
        claims.c.claim_id == claim["claim_id"]).scalar_subquery()


def card(conn: Connection, card_id: str) -> tuple[str | None, object]:
    body = conn.execute(select(rate_cards.c.body).where(rate_cards.c.card_id == card_id)) \
        .scalar()
    return (card_id, json.loads(body)) if body else (None, None)


def closed_statement(conn: Connection, period: str, partner_id: str) -> dict | None:
    body = conn.execute(select(statements.c.body).where(
        statements.c.period == period, statements.c.partner_id == partner_id)).scalar()
    return json.loads(body) if body else None
