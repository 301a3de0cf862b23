"""The dispatch service's tables: read models fed from its log, and three that are not.

Read models (dropped and rebuilt from the log): partners, dispatch_orders, assignments,
partner_loads (each partner's active assignments per day, kept as they change so that an
assignment reads one row per partner, not every assignment of the day).

Kept outside the log on purpose, never rebuilt:
- partner_credentials: the one copy of each partner's secret (an HMAC key must be kept to
  verify signatures); the log holds only its fingerprint, because auditors read the log;
- idempotency_keys: the first answer to each (partner, Idempotency-Key);
- seen_signatures: signatures already used, so a replayed request is refused.

dispatch_orders rows are updated through `_update_order` (driver SQL, which the event store
may defer to its append's round trip): a handler that reads a dispatch_orders row
(`excluded`) must come first in its batch of events, before anything wrote to that row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

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
    UniqueConstraint,
)

from serviceloop.db import Prepared, sql
from serviceloop.eventstore import Envelope, define_log_tables
from serviceloop.projections import Projector, insert, update

metadata = MetaData()
events = define_log_tables(metadata)

partners = Table(
    "partners", metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("regions", Text, nullable=False),  # JSON list of {province, city, district}
    Column("categories", Text, nullable=False),  # JSON list
    Column("daily_capacity", Integer, nullable=False),
    Column("rating", Float, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("secret_fingerprint", String(16), nullable=False),
    Column("registered_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("version", Integer, nullable=False),
)

dispatch_orders = Table(
    "dispatch_orders", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("order_type", String(16), nullable=False),
    Column("status", String(20), nullable=False),
    Column("category", String(40), nullable=False),
    Column("model", String(40), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("fault_code", String(40)),
    Column("phone", String(32), nullable=False),
    Column("address", Text, nullable=False),  # JSON, as in order_created
    Column("province", String(40), nullable=False),
    Column("city", String(40), nullable=False),
    Column("district", String(40), nullable=False),
    Column("in_warranty", Boolean, nullable=False),
    Column("related_order_id", String(64)),
    Column("confirmation_code", String(12), nullable=False),
    Column("partner_id", String(64)),
    Column("attempt", Integer, nullable=False),
    Column("excluded", Text, nullable=False),  # JSON list of partner ids
    Column("assigned_at", String(32)),
    Column("accept_by", String(32)),
    Column("schedule_by", String(32)),
    Column("window_start", String(32)),
    Column("window_end", String(32)),
    Column("arrived_at", String(32)),
    Column("arrival_lat", Float),
    Column("arrival_lon", Float),
    Column("completed_at", String(32)),
    Column("escalation", Text),
    Column("received_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_dispatch_orders_partner", "partner_id", "status", "assigned_at"),
    Index("ix_dispatch_orders_status", "status", "updated_at"),
    Index("ix_dispatch_orders_accept_by", "accept_by"),
    Index("ix_dispatch_orders_schedule_by", "schedule_by"),
    Index("ix_dispatch_orders_window_end", "window_end"),
)

assignments = Table(
    "assignments", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("partner_id", String(64), nullable=False),
    Column("day", String(10), nullable=False),
    Column("active", Boolean, nullable=False),  # false once rejected, timed out or withdrawn
)

partner_loads = Table(
    "partner_loads", metadata,
    Column("day", String(10), primary_key=True),
    Column("partner_id", String(64), primary_key=True),
    Column("active", Integer, nullable=False),  # its active assignments of that day
)

partner_credentials = Table(
    "partner_credentials", metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("fingerprint", String(16), nullable=False),
    Column("rotated_at", String(32), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)

seen_signatures = Table(
    "seen_signatures", metadata,
    Column("partner_id", String(64), nullable=False),
    Column("signature", String(64), nullable=False),
    Column("seen_at", Integer, nullable=False),  # unix seconds of the request's timestamp
    UniqueConstraint("partner_id", "signature", name="uq_seen_signatures"),
    Index("ix_seen_signatures_seen_at", "seen_at"),
)

READ_MODELS = [partners, dispatch_orders, assignments, partner_loads]


# -- partners -------------------------------------------------------------------------------


def _partner_registered(conn: Connection, e: Envelope) -> None:
    p = e.payload
    conn.execute(partners.insert().values(
        partner_id=p["partner_id"], name=p["name"], regions=_json(p["regions"]),
        categories=_json(p["categories"]), daily_capacity=p["daily_capacity"],
        rating=p["rating"], active=True, secret_fingerprint=p["secret_fingerprint"],
        registered_at=e.occurred_at, updated_at=e.occurred_at, version=e.stream_version,
    ))


def _partner_updated(conn: Connection, e: Envelope) -> None:
    p = e.payload
    _update_partner(conn, e, name=p["name"], regions=_json(p["regions"]),
                    categories=_json(p["categories"]), daily_capacity=p["daily_capacity"],
                    rating=p["rating"], active=p["active"])


def _partner_secret_rotated(conn: Connection, e: Envelope) -> None:
    _update_partner(conn, e, secret_fingerprint=e.payload["secret_fingerprint"])


def _update_partner(conn: Connection, e: Envelope, **values: object) -> None:
    conn.execute(partners.update().where(partners.c.partner_id == e.payload["partner_id"])
                 .values(updated_at=e.occurred_at, version=e.stream_version, **values))


# -- orders ---------------------------------------------------------------------------------


def _order_received(conn: Connection, e: Envelope) -> None:
    p = e.payload
    address = p["address"]
    status = {"ready": "ready", "awaiting_fault": "awaiting_fault",
              "complaint": "complaint"}[p["status"]]
    insert(conn, dispatch_orders, dict(
        order_id=p["order_id"], order_type=p["order_type"], status=status,
        category=p["category"], model=p["model"], serial=p["serial"],
        description=p["description"], fault_code=p["fault_code"], phone=p["phone"],
        address=_json(address), province=address["province"], city=address["city"],
        district=address["district"], in_warranty=p["in_warranty"],
        related_order_id=p["related_order_id"], confirmation_code=p["confirmation_code"],
        partner_id=None, attempt=0, excluded="[]", received_at=e.occurred_at,
        updated_at=e.occurred_at, version=e.stream_version,
    ))


def _fault_code_received(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, fault_code=e.payload["fault_code"], status="ready")


def _order_assigned(conn: Connection, e: Envelope) -> None:
    p = e.payload
    _update_order(conn, e, status="assigned", partner_id=p["partner_id"], attempt=p["attempt"],
                  assigned_at=e.occurred_at, accept_by=p["accept_by"], schedule_by=None,
                  window_start=None, window_end=None, arrived_at=None, arrival_lat=None,
                  arrival_lon=None, escalation=None)
    insert(conn, assignments, dict(
        order_id=p["order_id"], attempt=p["attempt"], partner_id=p["partner_id"],
        day=p["day"], active=True))
    sql(conn, _LOAD_TAKEN, (p["day"], p["partner_id"]))


def _order_accepted(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="accepted", accept_by=None,
                  schedule_by=e.payload["schedule_by"])


def _assignment_ended(conn: Connection, e: Envelope) -> None:
    """Rejected, timed out or breached: the partner is excluded and its capacity freed."""
    order_id, partner_id = e.payload["order_id"], e.payload["partner_id"]
    excluded = conn.execute(dispatch_orders.select().with_only_columns(dispatch_orders.c.excluded)
                            .where(dispatch_orders.c.order_id == order_id)).scalar_one()
    ids = sorted({*json.loads(excluded), partner_id})
    _update_order(conn, e, status="ready", partner_id=None, accept_by=None, schedule_by=None,
                  window_start=None, window_end=None, excluded=_json(ids))
    _deactivate_assignments(conn, order_id)


def _order_escalated(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="escalated", partner_id=None,
                  escalation=e.payload["explanation"])


def _appointment_scheduled(conn: Connection, e: Envelope) -> None:
    p = e.payload
    _update_order(conn, e, status="scheduled", schedule_by=None,
                  window_start=p["window_start"], window_end=p["window_end"])


def _appointment_cancelled(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="accepted", window_start=None, window_end=None,
                  schedule_by=e.payload["schedule_by"])


def _partner_arrived(conn: Connection, e: Envelope) -> None:
    p = e.payload
    _update_order(conn, e, status="on_site", arrived_at=e.occurred_at, arrival_lat=p["lat"],
                  arrival_lon=p["lon"])


def _order_completed(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="completed", completed_at=e.occurred_at)


def _order_reopened(conn: Connection, e: Envelope) -> None:
    p = e.payload
    excluded = conn.execute(dispatch_orders.select().with_only_columns(dispatch_orders.c.excluded)
                            .where(dispatch_orders.c.order_id == p["order_id"])).scalar_one()
    ids = sorted({*json.loads(excluded), p["partner_id"]} if p["partner_excluded"]
                 else set(json.loads(excluded)))
    _update_order(conn, e, status="ready", partner_id=None, accept_by=None, schedule_by=None,
                  window_start=None, window_end=None, arrived_at=None, arrival_lat=None,
                  arrival_lon=None, completed_at=None, excluded=_json(ids))


def _order_withdrawn(conn: Connection, e: Envelope) -> None:
    _update_order(conn, e, status="withdrawn", accept_by=None, schedule_by=None)
    _deactivate_assignments(conn, e.payload["order_id"])


# a partner's load of a day: one more when an assignment is made, less those of an order
# that end (read before they are marked ended, in the same round trip)
_LOAD_TAKEN = Prepared(
    "INSERT INTO partner_loads (day, partner_id, active) VALUES (?, ?, 1) ON CONFLICT"
    " (day, partner_id) DO UPDATE SET active = partner_loads.active + 1")
_LOAD_FREED = Prepared(
    "UPDATE partner_loads SET active = active - (SELECT count(*) FROM assignments AS a"
    " WHERE a.order_id = ? AND a.active AND a.day = partner_loads.day"
    " AND a.partner_id = partner_loads.partner_id)"
    " WHERE (day, partner_id) IN (SELECT day, partner_id FROM assignments"
    " WHERE order_id = ? AND active)")


def _deactivate_assignments(conn: Connection, order_id: str) -> None:
    sql(conn, _LOAD_FREED, (order_id, order_id))
    update(conn, assignments, "order_id", order_id, active=False)


_CHANGES = "dispatch.order_changes"


@contextmanager
def order_changes(conn: Connection) -> Iterator[dict[str, dict]]:
    """What the handlers write to dispatch_orders rows while the block runs (order id ->
    column -> last value written), so a caller knows an order's new row without reading it
    back: the event store may send these writes later, with its append (sql() deferred).
    Rows inserted (`order_received`) are not in it: no partner acts on an order's first event."""
    changes: dict[str, dict] = {}
    conn.info[_CHANGES] = changes
    try:
        yield changes
    finally:
        conn.info.pop(_CHANGES, None)


def _update_order(conn: Connection, e: Envelope, **values: object) -> None:
    # prepared, sent with the append: every partner action comes here
    order_id = e.payload["order_id"]
    changes = conn.info.get(_CHANGES)
    if changes is not None:
        changes.setdefault(order_id, {}).update(
            updated_at=e.occurred_at, version=e.stream_version, **values)
    update(conn, dispatch_orders, "order_id", order_id, updated_at=e.occurred_at,
           version=e.stream_version, **values)


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


projector = Projector(READ_MODELS, {
    "partner_registered": _partner_registered,
    "partner_updated": _partner_updated,
    "partner_secret_rotated": _partner_secret_rotated,
    "order_received": _order_received,
    "fault_code_received": _fault_code_received,
    "order_assigned": _order_assigned,
    "order_accepted": _order_accepted,
    "order_rejected": _assignment_ended,
    "assignment_timed_out": _assignment_ended,
    "sla_breached": _assignment_ended,
    "order_escalated": _order_escalated,
    "appointment_scheduled": _appointment_scheduled,
    "appointment_cancelled": _appointment_cancelled,
    "partner_arrived": _partner_arrived,
    "order_completed": _order_completed,
    "order_reopened": _order_reopened,
    "order_withdrawn": _order_withdrawn,
})
