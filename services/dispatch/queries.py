"""Reads of dispatch's tables, and the views the RPC and the gateway answer with."""

from __future__ import annotations

import functools
import json

from sqlalchemy import Connection, func, select, text

from contracts.errors import NotFound
from serviceloop.db import Prepared, fetch_rows
from serviceloop.projections import RowReader
from services.dispatch.assignment import PartnerProfile
from services.dispatch.domain import HELD, DispatchOrder
from services.dispatch.projections import (
    assignments,
    dispatch_orders,
    partner_credentials,
    partner_loads,
    partners,
)

# PostgreSQL: assignments (which read today's load) take turns, so two orders placed at
# once cannot both take a partner's last slot. SQLite writers are serialised already.
ASSIGNMENT_LOCK_KEY = 0x5E7D15
_LOCK_ASSIGNMENTS = f"SELECT pg_advisory_xact_lock({ASSIGNMENT_LOCK_KEY})"


def lock_assignments(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(_LOCK_ASSIGNMENTS))


_PROFILE_COLUMNS = ("partner_id", "name", "regions", "categories", "daily_capacity", "rating",
                    "active")
# every partner with its active assignments counting against the day's capacity
_PLACEMENT_FACTS = Prepared(
    f"SELECT {', '.join(f'p.{c}' for c in _PROFILE_COLUMNS)}, COALESCE(l.active, 0) "
    "FROM partners AS p LEFT JOIN partner_loads AS l "
    "ON l.partner_id = p.partner_id AND l.day = ?")


def placement_facts(conn: Connection, day: str) -> tuple[list[PartnerProfile], dict[str, int]]:
    """What an automatic assignment chooses from: every partner, and its load on `day`
    (`load_on`), under the assignment lock (held to the end of the transaction). On
    PostgreSQL the lock and the read are one round trip, so the lock is held for the choice
    and the commit, not for three round trips before them."""
    statement = _PLACEMENT_FACTS.text(conn)
    if conn.dialect.name == "postgresql":
        statement = f"{_LOCK_ASSIGNMENTS}; {statement}"
    rows = fetch_rows(conn, statement, (day,))
    return [_profile_of(tuple(row[:-1])) for row in rows], \
        {row[0]: row[-1] for row in rows if row[-1]}


@functools.lru_cache(maxsize=4096)
def _profile_of(row: tuple) -> PartnerProfile:
    """A partner's profile from its row (_PROFILE_COLUMNS): every placement reads every
    partner, and a row seen before is not decoded again (a profile is immutable)."""
    return _profile(dict(zip(_PROFILE_COLUMNS, row, strict=True)))


# -- partners -------------------------------------------------------------------------------


def partner_profile(conn: Connection, partner_id: str) -> PartnerProfile:
    row = conn.execute(select(partners).where(partners.c.partner_id == partner_id)).mappings() \
        .first()
    if row is None:
        raise NotFound(f"no partner {partner_id}", {"partner_id": ["unknown"]},
                       code="partner_not_found")
    return _profile(row)


def _profile(row) -> PartnerProfile:  # noqa: ANN001
    regions = json.loads(row["regions"])
    return PartnerProfile(
        partner_id=row["partner_id"], name=row["name"],
        districts=frozenset((r["province"], r["city"], r["district"]) for r in regions),
        categories=frozenset(json.loads(row["categories"])),
        daily_capacity=row["daily_capacity"], rating=row["rating"], active=bool(row["active"]))


def load_on(conn: Connection, day: str) -> dict[str, int]:
    """Active assignments per partner that count against `day`'s capacity."""
    query = select(partner_loads.c.partner_id, partner_loads.c.active).where(
        partner_loads.c.day == day, partner_loads.c.active > 0)
    return {partner_id: count for partner_id, count in conn.execute(query)}


def partner_view(conn: Connection, partner_id: str, day: str) -> dict:
    row = conn.execute(select(partners).where(partners.c.partner_id == partner_id)).mappings() \
        .first()
    if row is None:
        raise NotFound(f"no partner {partner_id}", {"partner_id": ["unknown"]},
                       code="partner_not_found")
    return _partner_view(row, load_on(conn, day).get(partner_id, 0))


def secret_of(conn: Connection, partner_id: str, fingerprint: str) -> str | None:
    """The partner's secret if it is still the one with this fingerprint (not rotated since)."""
    return conn.execute(select(partner_credentials.c.secret).where(
        partner_credentials.c.partner_id == partner_id,
        partner_credentials.c.fingerprint == fingerprint)).scalar()


def partner_views(conn: Connection, day: str) -> list[dict]:
    load = load_on(conn, day)
    rows = conn.execute(select(partners).order_by(partners.c.name, partners.c.partner_id))
    return [_partner_view(row, load.get(row["partner_id"], 0)) for row in rows.mappings()]


def _partner_view(row, load_today: int) -> dict:  # noqa: ANN001
    return {
        "partner_id": row["partner_id"], "name": row["name"],
        "regions": json.loads(row["regions"]), "categories": json.loads(row["categories"]),
        "daily_capacity": row["daily_capacity"], "rating": row["rating"],
        "active": bool(row["active"]), "secret_fingerprint": row["secret_fingerprint"],
        "load_today": load_today, "registered_at": row["registered_at"],
        "version": row["version"],
    }


# -- orders ---------------------------------------------------------------------------------


ORDER_COLUMNS = tuple(column.name for column in dispatch_orders.columns)


ORDER_ROW = RowReader(dispatch_orders, "order_id = ?")  # every delivery about an order


def order_record(conn: Connection, order_id: str) -> dict | None:
    return ORDER_ROW.first(conn, (order_id,))


def order(conn: Connection, order_id: str) -> DispatchOrder | None:
    row = order_record(conn, order_id)
    return DispatchOrder.from_row(row) if row else None


def ever_assigned(conn: Connection, order_id: str, partner_id: str) -> bool:
    return conn.execute(select(assignments.c.attempt).where(
        assignments.c.order_id == order_id, assignments.c.partner_id == partner_id).limit(1)
    ).first() is not None


def due_orders(conn: Connection, now: str, limit: int = 500) -> list[str]:
    """Orders whose accept, schedule or arrival deadline has passed (ISO times sort)."""
    c = dispatch_orders.c
    query = select(c.order_id).where(
        ((c.status == "assigned") & (c.accept_by <= now))
        | ((c.status == "accepted") & (c.schedule_by <= now))
        | ((c.status == "scheduled") & (c.window_end <= now))
    ).order_by(c.updated_at).limit(limit)
    return list(conn.execute(query).scalars())


def support_view(row: dict) -> dict:
    """Dispatch's whole view of an order, for head office and support (never for partners)."""
    view = dict(row)
    view["address"] = json.loads(view["address"])
    view["excluded"] = json.loads(view["excluded"])
    view["in_warranty"] = bool(view["in_warranty"])
    return view


def list_support(conn: Connection, status: str | None, partner_id: str | None, page: int,
                 page_size: int) -> dict:
    c = dispatch_orders.c
    where = []
    if status:
        where.append(c.status == status)
    if partner_id:
        where.append(c.partner_id == partner_id)
    total = conn.execute(select(func.count()).select_from(dispatch_orders).where(*where)) \
        .scalar_one()
    rows = conn.execute(select(dispatch_orders).where(*where)
                        .order_by(c.updated_at.desc(), c.order_id)
                        .limit(page_size).offset((page - 1) * page_size)).mappings()
    return {"items": [support_view(dict(r)) for r in rows], "page": page,
            "page_size": page_size, "total": total}


# -- what a partner sees --------------------------------------------------------------------


def partner_order_view(row: dict) -> dict:
    """An order as its partner sees it: no confirmation code, no other partners."""
    window = ({"window_start": row["window_start"], "window_end": row["window_end"]}
              if row["window_start"] else None)
    return {
        "order_id": row["order_id"], "order_type": row["order_type"], "status": row["status"],
        "category": row["category"], "model": row["model"], "serial": row["serial"],
        "description": row["description"], "fault_code": row["fault_code"],
        "in_warranty": bool(row["in_warranty"]),
        "customer": {"phone": row["phone"], "address": json.loads(row["address"])},
        "assigned_at": row["assigned_at"], "accept_by": row["accept_by"],
        "schedule_by": row["schedule_by"], "appointment": window,
        "arrived_at": row["arrived_at"], "completed_at": row["completed_at"],
        "version": row["version"],
    }


_HELD = ", ".join(f"'{status}'" for status in sorted(HELD))  # what a partner may list

# a partner's page of orders and how many there are in all, in one round trip (partners
# poll it for new work): the count is a window over every row the page is cut from
_PAGE = ("SELECT {columns}, count(*) OVER () FROM dispatch_orders"
         " WHERE partner_id = ? AND status IN ({statuses})"
         " ORDER BY assigned_at DESC, order_id LIMIT ? OFFSET ?")
_PARTNER_PAGE = Prepared(_PAGE.format(columns=", ".join(ORDER_COLUMNS), statuses=_HELD))
_PARTNER_PAGE_OF = Prepared(_PAGE.format(columns=", ".join(ORDER_COLUMNS), statuses="?"))
_PARTNER_TOTAL = ("SELECT count(*) FROM dispatch_orders WHERE partner_id = ?"
                  " AND status IN ({statuses})")


def partner_orders(conn: Connection, partner_id: str, status: str | None, page: int,
                   page_size: int) -> dict:
    """The partner's orders in `status` (else every one it holds), newest assignment first."""
    if status:
        statement, params = _PARTNER_PAGE_OF, (partner_id, status)
    else:
        statement, params = _PARTNER_PAGE, (partner_id,)
    rows = fetch_rows(conn, statement.text(conn),
                      (*params, page_size, (page - 1) * page_size))
    if rows:
        total = rows[0][-1]
    elif page == 1:
        total = 0
    else:  # past the last page: the window had no row to count on
        total = fetch_rows(conn, _PARTNER_TOTAL.format(statuses="?" if status else _HELD),
                           params)[0][0]
    return {"items": [partner_order_view(dict(zip(ORDER_COLUMNS, row, strict=False)))
                      for row in rows],
            "page": page, "page_size": page_size, "total": total}
