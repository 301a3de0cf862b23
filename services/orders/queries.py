"""Reads of the orders read models, shaped as the contracts' views."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import Connection, and_, func, select

from contracts.errors import NotFound
from contracts.orders import OPEN_STATUSES
from serviceloop.db import Prepared, fetch_rows
from services.orders.domain import Order, warranty_on
from services.orders.projections import customers, order_requests, orders, products


def customer_by_phone(conn: Connection, phone: str) -> dict | None:
    row = conn.execute(select(customers).where(customers.c.phone == phone)).mappings().first()
    return customer_view(row) if row else None


def customer(conn: Connection, customer_id: str) -> dict:
    row = conn.execute(
        select(customers).where(customers.c.customer_id == customer_id)).mappings().first()
    if row is None:
        raise NotFound(f"customer {customer_id} does not exist", {"customer_id": ["unknown"]})
    return customer_view(row)


def customer_view(row) -> dict:  # noqa: ANN001
    return {
        "customer_id": row["customer_id"], "name": row["name"], "phone": row["phone"],
        "address": {k: row[k] for k in ("province", "city", "district", "street", "lat", "lon")},
        "registered_at": row["registered_at"],
    }


def product(conn: Connection, product_id: str) -> dict:
    row = conn.execute(
        select(products).where(products.c.product_id == product_id)).mappings().first()
    if row is None:
        raise NotFound(f"product {product_id} does not exist", {"product_id": ["unknown"]},
                       code="product_not_found")
    return _product_row(row)


def owned_product(conn: Connection, customer_id: str, model: str, serial: str) -> dict | None:
    """The customer's product of this model and serial, if registered already."""
    row = conn.execute(select(products).where(
        products.c.serial == serial, products.c.customer_id == customer_id,
        products.c.model == model)).mappings().first()
    return None if row is None else _product_row(row)


def _product_row(row) -> dict:  # noqa: ANN001 - a row mapping of products
    return {**row, "warranty": json.loads(row["warranty"])}


_PRODUCT_COLUMNS = [c.name for c in products.c]
_CUSTOMER_COLUMNS = [c.name for c in customers.c]
_PRODUCT_AND_OWNER = (
    "SELECT "
    + ", ".join([f"p.{c}" for c in _PRODUCT_COLUMNS] + [f"c.{c}" for c in _CUSTOMER_COLUMNS])
    + " FROM products p JOIN customers c ON c.customer_id = p.customer_id WHERE p.product_id = ?"
)
_OPEN_STATUSES_SQL = ", ".join(f"'{status}'" for status in OPEN_STATUSES)
_LIKE_ORDER = ("SELECT order_id FROM orders WHERE product_id = ? AND order_type = ? "
               f"AND status IN ({_OPEN_STATUSES_SQL}) AND coalesce(related_order_id, '') = ? "
               "LIMIT 1")


# parsed and planned once per connection on PostgreSQL: planning this join cost more than
# running it
_INTAKE = Prepared(_PRODUCT_AND_OWNER.replace(" FROM products", f", ({_LIKE_ORDER}) FROM products"))


def intake_facts(conn: Connection, product_id: str, order_type: str,
                 related_order_id: str | None) -> tuple[dict, dict, str | None]:
    """What intake needs, in one round trip: the product, its owner, and an open order of
    the same type for it (and the same complaint subject) if there is one.

    On PostgreSQL the product is locked first, to the end of the transaction, so two
    concurrent intakes for one product cannot both find none.
    """
    query = _INTAKE.text(conn)
    params: tuple = (product_id, order_type, related_order_id or "", product_id)
    if conn.dialect.name == "postgresql":
        query = "SELECT pg_advisory_xact_lock(hashtext(?)); " + query
        params = (product_id, *params)
    rows = fetch_rows(conn, query, params)
    row = rows[0] if rows else None
    if row is None:
        raise NotFound(f"product {product_id} does not exist", {"product_id": ["unknown"]},
                       code="product_not_found")
    split = len(_PRODUCT_COLUMNS)
    product_ = dict(zip(_PRODUCT_COLUMNS, row[:split], strict=True))
    product_["warranty"] = json.loads(product_["warranty"])
    owner = customer_view(dict(zip(_CUSTOMER_COLUMNS, row[split:-1], strict=True)))
    return product_, owner, row[-1]


def products_of(conn: Connection, customer_id: str, today: date) -> list[dict]:
    rows = conn.execute(select(products).where(products.c.customer_id == customer_id)
                        .order_by(products.c.registered_at, products.c.product_id)).mappings()
    return [product_view({**row, "warranty": json.loads(row["warranty"])}, today) for row in rows]


def product_view(row: dict, today: date) -> dict:
    terms = warranty_on(row["warranty"], today)
    unit = next(t for t in terms if t["component"] == "unit")
    return {
        "product_id": row["product_id"], "category": row["category"], "model": row["model"],
        "serial": row["serial"], "purchase_date": row["purchase_date"],
        "installation_date": row["installation_date"], "warranty_end": unit["parts_until"],
        "in_warranty_today": unit["parts_covered"], "warranty": terms,
    }


def order_row(conn: Connection, order_id: str) -> dict:
    row = conn.execute(select(orders).where(orders.c.order_id == order_id)).mappings().first()
    if row is None:
        raise NotFound(f"order {order_id} does not exist", {"order_id": ["unknown"]},
                       code="order_not_found")
    return order_view(row)


def order_view(row) -> dict:  # noqa: ANN001
    view = dict(row)
    view["warranty"] = json.loads(view["warranty"])
    return view


def as_aggregate(view: dict) -> Order:
    """The few facts the domain needs about an existing order, from its read model."""
    return Order(view["order_id"], version=view["version"], status=view["status"],
                 order_type=view["order_type"], category=view["category"],
                 product_id=view["product_id"], fault_code=view["fault_code"],
                 partner_id=view["partner_id"], window_start=view["window_start"],
                 window_end=view["window_end"], dispatch_version=view["dispatch_version"])


# what as_aggregate reads, in Order's field order
_AGGREGATE = ("order_id", "version", "status", "order_type", "category", "product_id",
              "fault_code", "partner_id", "window_start", "window_end", "dispatch_version")
_SELECT_AGGREGATES = f"SELECT {', '.join(_AGGREGATE)} FROM orders"
_TO_FOLLOW = f"{_SELECT_AGGREGATES} WHERE order_id = ?"
# every event orders follows reads it: prepared once per connection on PostgreSQL
_TO_FOLLOW_LOCKED = Prepared(f"{_TO_FOLLOW} FOR UPDATE")


def order_to_follow(conn: Connection, order_id: str) -> Order | None:
    """The order, locked to the end of the transaction on PostgreSQL: dispatch's events for
    one order arrive on several queues at once and are applied one after the other."""
    statement = _TO_FOLLOW if conn.dialect.name == "sqlite" else _TO_FOLLOW_LOCKED.text(conn)
    rows = fetch_rows(conn, statement, (order_id,))
    return Order(*rows[0]) if rows else None


def orders_to_follow(conn: Connection, order_ids: list[str]) -> dict[str, Order]:
    """Several orders, read a few hundred a statement and locked in order_id order
    (PostgreSQL), for an event about all of them: their appends are then held back to the
    COMMIT, instead of each one's going out (and taking the log's lock) with the next
    order's read."""
    found: dict[str, Order] = {}
    ordered = sorted(order_ids)
    for start in range(0, len(ordered), _IN_CHUNK):  # in order: locks taken in order too
        chunk = ordered[start:start + _IN_CHUNK]
        statement = (f"{_SELECT_AGGREGATES} WHERE order_id IN "
                     f"({', '.join(['?'] * len(chunk))}) ORDER BY order_id")
        if conn.dialect.name != "sqlite":
            statement += " FOR UPDATE"
        found.update((row[0], Order(*row)) for row in fetch_rows(conn, statement, tuple(chunk)))
    return found


_IN_CHUNK = 500  # ids in one IN list (SQLite allows 32,766 parameters a statement)


def order_for_request(conn: Connection, request_id: str) -> str | None:
    return conn.execute(select(order_requests.c.order_id)
                        .where(order_requests.c.request_id == request_id)).scalar()


def orders_of_customer(conn: Connection, customer_id: str) -> list[dict]:
    rows = conn.execute(select(orders).where(orders.c.customer_id == customer_id)
                        .order_by(orders.c.created_at.desc())).mappings()
    return [order_view(row) for row in rows]


def list_orders(conn: Connection, filters: dict) -> dict:
    conditions = []
    for name in ("status", "phone", "product_id", "customer_id"):
        if filters.get(name):
            conditions.append(orders.c[name] == filters[name])
    if filters.get("created_from"):
        conditions.append(orders.c.created_at >= filters["created_from"].isoformat())
    if filters.get("created_to"):
        # inclusive: everything created before the next day
        conditions.append(orders.c.created_at < _next_day(filters["created_to"]))
    where = and_(True, *conditions)
    total = conn.execute(select(func.count()).select_from(orders).where(where)).scalar()
    size, page = filters["page_size"], filters["page"]
    rows = conn.execute(select(orders).where(where)
                        .order_by(orders.c.created_at.desc(), orders.c.order_id)
                        .limit(size).offset((page - 1) * size)).mappings()
    return {"items": [order_view(r) for r in rows], "page": page, "page_size": size,
            "total": total}


def _next_day(day: date) -> str:
    from datetime import timedelta

    return (day + timedelta(days=1)).isoformat()
