"""The settlement service's read models, all fed from its log."""

from __future__ import annotations

import functools
import json

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    select,
)

from serviceloop.db import Prepared, sql
from serviceloop.eventstore import APPEND_LOCK_KEY, Envelope, define_log_tables
from serviceloop.projections import Projector, insert, update

metadata = MetaData()
events = define_log_tables(metadata)

rate_cards = Table(
    "rate_cards", metadata,
    Column("card_id", String(80), primary_key=True),
    Column("kind", String(8), nullable=False),  # rates | parts
    Column("effective_from", String(10), nullable=False),
    Column("body", Text, nullable=False),  # JSON: {"labour": [...], "travel": [...]} or parts
    Column("loaded_at", String(32), nullable=False),
    Index("ix_rate_cards_kind_from", "kind", "effective_from"),
)

order_facts = Table(
    "order_facts", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("order_type", String(16), nullable=False),
    Column("category", String(40), nullable=False),
    Column("product_id", String(64), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("province", String(40), nullable=False),
    Column("lat", String(32)),
    Column("lon", String(32)),
    Column("warranty", Text, nullable=False),
)

claims = Table(
    "claims", metadata,
    Column("claim_id", String(80), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("partner_id", String(64), nullable=False),
    Column("completed_on", String(10), nullable=False),
    Column("serial", String(64), nullable=False, index=True),
    Column("order_type", String(16), nullable=False),
    Column("callback", String(12), nullable=False),
    Column("customer_paid_cents", Integer, nullable=False),
    Column("customer_paid_confirmed", Integer),
    Column("installation_barcode", String(64), index=True),
    Column("satisfaction", Integer),
    Column("lines", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("claimed_cents", Integer, nullable=False),
    Column("payable_cents", Integer, nullable=False),  # approved, charged to the manufacturer
    Column("cut_cents", Integer, nullable=False),
    Column("held_cents", Integer, nullable=False),
    Column("rejected_cents", Integer, nullable=False),
    Column("opened_position", Integer, nullable=False),  # order of arrival, for duplicates
    Column("version", Integer, nullable=False),
    Index("ix_claims_partner_completed", "partner_id", "completed_on"),
    Index("ix_claims_opened_position", "opened_position", unique=True),
)

claim_parts = Table(
    "claim_parts", metadata,
    Column("claim_id", String(80), primary_key=True),
    Column("line_id", String(20), primary_key=True),
    Column("old_serial", String(64), index=True),
    Column("new_serial", String(64), index=True),
)

part_returns = Table(
    "part_returns", metadata,
    Column("serial", String(80), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("parts_centre", String(80)),
    Column("waived_by", String(80)),
    Column("recorded_at", String(32), nullable=False),
)

statements = Table(
    "statements", metadata,
    Column("period", String(7), primary_key=True),
    Column("partner_id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("closed_at", String(32), nullable=False),
)

settled = Table(
    "settled", metadata,
    Column("claim_id", String(80), primary_key=True),
    Column("settled_cents", Integer, nullable=False),
    Column("last_period", String(7), nullable=False),
)

sla_breaches = Table(
    "sla_breaches", metadata,
    Column("breach_id", String(80), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("partner_id", String(64), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("due_at", String(40), nullable=False),
    Index("ix_sla_breaches_partner_due", "partner_id", "due_at"),
)

READ_MODELS = [rate_cards, order_facts, claims, claim_parts, part_returns, statements, settled,
               sla_breaches]


def _rate_card(conn: Connection, e: Envelope) -> None:
    p = e.payload
    conn.execute(rate_cards.insert().values(
        card_id=p["card_id"], kind="rates", effective_from=p["effective_from"],
        body=_json({"labour": p["labour"], "travel": p["travel"]}), loaded_at=e.occurred_at))


def _price_list(conn: Connection, e: Envelope) -> None:
    p = e.payload
    conn.execute(rate_cards.insert().values(
        card_id=p["list_id"], kind="parts", effective_from=p["effective_from"],
        body=_json(p["parts"]), loaded_at=e.occurred_at))


def _order_facts(conn: Connection, e: Envelope) -> None:
    p = e.payload
    insert(conn, order_facts, dict(
        order_id=p["order_id"], order_type=p["order_type"], category=p["category"],
        product_id=p["product_id"], serial=p["serial"], province=p["province"],
        lat=None if p["lat"] is None else repr(p["lat"]),
        lon=None if p["lon"] is None else repr(p["lon"]), warranty=_json(p["warranty"])))


def claim_totals(lines: list[dict]) -> dict:
    totals = {"claimed_cents": 0, "payable_cents": 0, "cut_cents": 0, "held_cents": 0,
              "rejected_cents": 0}
    for line in lines:
        totals["claimed_cents"] += line["claimed_cents"]
        totals["payable_cents"] += line["manufacturer_cents"]
        if line["decision"] == "cut":
            totals["cut_cents"] += line["claimed_cents"] - line["approved_cents"]
        elif line["decision"] == "held":
            totals["held_cents"] += line["claimed_cents"]
        elif line["decision"] == "rejected":
            totals["rejected_cents"] += line["claimed_cents"]
    return totals


def _claim_decided(conn: Connection, e: Envelope) -> None:
    p = e.payload
    values = dict(
        partner_id=p["partner_id"], completed_on=p["completed_on"], serial=p["serial"],
        order_type=p["order_type"], callback=p["callback"],
        customer_paid_cents=p["customer_paid_cents"],
        customer_paid_confirmed=p["customer_paid_confirmed"],
        installation_barcode=p["installation_barcode"], satisfaction=p["satisfaction"],
        lines=_json(p["lines"]), evidence=_json(p["evidence"]), version=e.stream_version,
        **claim_totals(p["lines"]))
    if e.stream_version == 1:
        row = {"claim_id": p["claim_id"], "order_id": p["order_id"], **values}
        if conn.dialect.name == "postgresql":
            sql(conn, f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
        sql(conn, _opening(tuple(row)), tuple(row.values()))
        for line in p["lines"]:
            if line["kind"] == "part":
                insert(conn, claim_parts, dict(
                    claim_id=p["claim_id"], line_id=line["line_id"],
                    old_serial=line["old_serial"], new_serial=line["new_serial"]))
    else:
        update(conn, claims, "claim_id", p["claim_id"], **values)


@functools.cache
def _opening(columns: tuple[str, ...]) -> Prepared:
    """A claim's row, one place after the last claim opened (`opened_position`: the order of
    arrival that tells which of two duplicates came first). Two workers opening claims at
    once must not both take the same place: on PostgreSQL the log's append lock is taken
    first, in the same round trip (so the position is read after the previous holder's
    commit, and the lock, taken again by the append, is held for the append's round trip
    only: the insert goes with it); SQLite writers are serialised already."""
    return Prepared(f"INSERT INTO claims ({', '.join(columns)}, opened_position) SELECT "
                    f"{', '.join(['?'] * len(columns))}, COALESCE(MAX(opened_position), 0) + 1 "
                    "FROM claims")


def _part_return(conn: Connection, e: Envelope) -> None:
    p = e.payload
    insert(conn, part_returns, dict(
        serial=p["serial"], kind=p["kind"], parts_centre=p["parts_centre"],
        waived_by=p["waived_by"], recorded_at=e.occurred_at))


def _sla_breach(conn: Connection, e: Envelope) -> None:
    p = e.payload
    insert(conn, sla_breaches, dict(
        breach_id=p["breach_id"], order_id=p["order_id"], partner_id=p["partner_id"],
        kind=p["kind"], due_at=p["due_at"]))


def _period_closed(conn: Connection, e: Envelope) -> None:
    p = e.payload
    conn.execute(statements.insert().values(period=p["period"], partner_id=p["partner_id"],
                                            body=_json(p), closed_at=e.occurred_at))
    # what each claim has been paid so far: a few set-wise statements, not two per line
    paid = {line["claim_id"]: line["payable_cents"] for line in p["lines"]}
    ids = list(paid)
    before: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        before.update(conn.execute(select(settled.c.claim_id, settled.c.settled_cents)
                                   .where(settled.c.claim_id.in_(chunk))).tuples().all())
    new = [{"claim_id": c, "settled_cents": cents, "last_period": p["period"]}
           for c, cents in paid.items() if c not in before]
    if new:
        conn.execute(settled.insert(), new)
    changed = [{"cid": c, "cents": before[c] + cents, "period": p["period"]}
               for c, cents in paid.items() if c in before]
    if changed:
        conn.execute(settled.update().where(settled.c.claim_id == bindparam("cid"))
                     .values(settled_cents=bindparam("cents"), last_period=bindparam("period")),
                     changed)


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


projector = Projector(READ_MODELS, {
    "rate_card_loaded": _rate_card,
    "price_list_loaded": _price_list,
    "order_facts_recorded": _order_facts,
    "claim_decided": _claim_decided,
    "part_return_recorded": _part_return,
    "period_closed": _period_closed,
    "sla_breach_recorded": _sla_breach,
})
