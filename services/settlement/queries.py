"""Reads of the settlement read models: claims, order facts, cards, statements, breaches."""

from __future__ import annotations

import json

from sqlalchemy import Connection, and_, case, func, or_, select

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
    row = conn.execute(select(claims).where(claims.c.claim_id == claim_id)
                       .with_for_update()).mappings().first()
    if row is None:
        return None
    claim = claim_view(dict(row))
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


def card(conn: Connection, card_id: str) -> tuple[str | None, object]:
    body = conn.execute(select(rate_cards.c.body).where(rate_cards.c.card_id == card_id)) \
        .scalar()
    return (card_id, json.loads(body)) if body else (None, None)


def closed_statement(conn: Connection, period: str, partner_id: str) -> dict | None:
    body = conn.execute(select(statements.c.body).where(
        statements.c.period == period, statements.c.partner_id == partner_id)).scalar()
    return json.loads(body) if body else None
