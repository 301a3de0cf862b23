"""The orders service's read models: customers, products, orders, request ids."""

from __future__ import annotations

import json

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from serviceloop.eventstore import Envelope, define_log_tables
from serviceloop.projections import Projector, insert, update

metadata = MetaData()
events = define_log_tables(metadata)

customers = Table(
    "customers", metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("phone", String(32), nullable=False, unique=True),
    Column("province", String(40), nullable=False),
    Column("city", String(40), nullable=False),
    Column("district", String(40), nullable=False),
    Column("street", String(200), nullable=False),
    Column("lat", Float),
    Column("lon", Float),
    Column("registered_at", String(32), nullable=False),
)

products = Table(
    "products", metadata,
    Column("product_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("category", String(40), nullable=False),
    Column("model", String(40), nullable=False),
    Column("serial", String(64), nullable=False, index=True),
    Column("purchase_date", String(10), nullable=False),
    Column("installation_date", String(10)),
    Column("warranty", Text, nullable=False),
    Column("registered_at", String(32), nullable=False),
)

orders = Table(
    "orders", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("order_type", String(16), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(20), nullable=False),
    Column("routed_to", String(20), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("product_id", String(64), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("district", String(40), nullable=False),
    Column("category", String(40), nullable=False),
    Column("model", String(40), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("fault_code", String(40)),
    Column("related_order_id", String(64)),
    Column("in_warranty", Boolean, nullable=False),
    Column("warranty", Text, nullable=False),
    Column("cancel_reason", String(40)),
    # as dispatch works the order (order_progressed)
    Column("partner_id", String(64)),
    Column("window_start", String(40)),
    Column("window_end", String(40)),
    Column("dispatch_detail", Text),
    Column("dispatch_version", Integer, nullable=False, server_default="0"),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_orders_phone_created", "phone", "created_at"),
    Index("ix_orders_product_type_status", "product_id", "order_type", "status"),
    Index("ix_orders_status_created", "status", "created_at"),
    Index("ix_orders_created", "created_at"),
)

order_requests = Table(
    "order_requests", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
)

READ_MODELS = [customers, products, orders, order_requests]


def _customer_registered(conn: Connection, e: Envelope) -> None:
    p = e.payload
    address = p["address"]
    conn.execute(customers.insert().values(
        customer_id=p["customer_id"], name=p["name"], phone=p["phone"],
        province=address["province"], city=address["city"], district=address["district"],
        street=address["street"], lat=address.get("lat"), lon=address.get("lon"),
        registered_at=e.occurred_at,
    ))


def _product_registered(conn: Connection, e: Envelope) -> None:
    p = e.payload
    conn.execute(products.insert().values(
        product_id=p["product_id"], customer_id=p["customer_id"], category=p["category"],
        model=p["model"], serial=p["serial"], purchase_date=p["purchase_date"],
        installation_date=p["installation_date"],
        warranty=json.dumps(p["warranty"], sort_keys=True), registered_at=e.occurred_at,
    ))


def order_row(e: Envelope, p: dict) -> dict:
    """The `orders` row an `order_created` event makes (also the view create_order answers)."""
    return dict(
        order_id=p["order_id"], order_type=p["order_type"], channel=p["channel"],
        status=p["status"], routed_to=p["routed_to"], customer_id=p["customer_id"],
        product_id=p["product_id"], phone=p["phone"], district=p["address"]["district"],
        category=p["category"], model=p["model"], serial=p["serial"],
        description=p["description"], fault_code=p["fault_code"],
        related_order_id=p["related_order_id"], in_warranty=p["in_warranty"],
        warranty=json.dumps(p["warranty"], sort_keys=True), cancel_reason=None,
        partner_id=None, window_start=None, window_end=None, dispatch_detail=None,
        dispatch_version=0, created_at=e.occurred_at, updated_at=e.occurred_at,
        version=e.stream_version,
    )


def _order_created(conn: Connection, e: Envelope) -> None:
    p = e.payload
    insert(conn, orders, order_row(e, p))  # in an append, both go with its round trip
    if p["request_id"]:
        insert(conn, order_requests, {"request_id": p["request_id"], "order_id": p["order_id"]})


def _order_fault_recorded(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, fault_code=e.payload["fault_code"], status=e.payload["status"])


def _order_cancelled(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="cancelled", cancel_reason=e.payload["reason"])


def _order_progressed(conn: Connection, e: Envelope) -> None:
    p = e.payload
    _update_order(conn, e, status=p["status"], partner_id=p["partner_id"],
                  window_start=p["window_start"], window_end=p["window_end"],
                  dispatch_detail=p["detail"], dispatch_version=p["dispatch_version"])


def _verification_recorded(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status=e.payload["status"])


def _update_order(conn: Connection, e: Envelope, **values: object) -> None:
    update(conn, orders, "order_id", e.payload["order_id"], updated_at=e.occurred_at,
           version=e.stream_version, **values)


projector = Projector(READ_MODELS, {
    "customer_registered": _customer_registered,
    "product_registered": _product_registered,
    "order_created": _order_created,
    "order_fault_recorded": _order_fault_recorded,
    "order_cancelled": _order_cancelled,
    "order_progressed": _order_progressed,
    "order_verification_recorded": _verification_recorded,
    "order_settled": lambda conn, e: _update_order(conn, e, status="closed"),
})
