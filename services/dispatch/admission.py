"""Letting a signed partner request in: the database's side of it, in one round trip.

A request whose signature checks out against the partner's secret (the gateway keeps the
secrets it has read, services/dispatch/gateway.py) is admitted by one statement on
PostgreSQL:

- the secret it was checked with is still the partner's (rotation takes effect at once: if
  not, nothing is written and the gateway reads the secret again);
- the signature is recorded as used, so the same signed request is refused from then on, by
  every gateway replica (the unique key of seen_signatures decides between two at once);
- a retried POST's stored answer, if its Idempotency-Key was answered before (then the
  signature is not recorded: the retry gets the first answer, as often as it is sent);
- the order the path names, as it is now, for the route's handler.

A GET's admission is its own transaction (autocommit: no BEGIN, no COMMIT round trip). A
POST's opens the worker's unit of work, and its action follows in the same transaction: one
durable commit per POST. The action's writes start at a savepoint (`ACTION_SAVEPOINT`), so a
refused or failed action is rolled back to it and the signature is still committed as used
(services/dispatch/gateway.py). SQLite has no INSERT inside WITH: the same four steps run as
statements (in-process, so no round trips to save). Both go through serviceloop.db.fetch_rows,
straight to the driver's cursor: this is the gateway's hot path, and SQLAlchemy's statement and
result machinery costs more than the statements themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serviceloop.db import Prepared, fetch_rows
from services.dispatch.queries import ORDER_COLUMNS, ORDER_ROW

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from serviceloop.nameko_deps import WorkerDatabase

ACTION_SAVEPOINT = "gateway_action"

@dataclass(frozen=True, slots=True)
class Admission:
    current: bool  # the secret the signature was checked with is still the partner's
    recorded: bool  # the signature was new and is now recorded as used
    answered: tuple | None  # (request_hash, status, response): the key's earlier answer
    order: dict | None  # the order the path names, None if there is none (or no order_id)


# Every signed request runs these: each is prepared once per connection on PostgreSQL
# (serviceloop.db.Prepared; planning the admission cost more than running it).
# `?` markers (serviceloop.db.for_driver); parameters in the order `AdmissionSession.admit`
# passes them: credential, answered key, signature recorded, order
_PG_ADMIT = Prepared(f"""
WITH credential AS (
    SELECT 1 FROM partner_credentials WHERE partner_id = ? AND secret = ?
), answered AS (
    SELECT request_hash, status, response FROM idempotency_keys
    WHERE partner_id = ? AND key = ? AND status <> 0
), recorded AS (
    INSERT INTO seen_signatures (partner_id, signature, seen_at)
    SELECT ?, ?, ?
    WHERE EXISTS (SELECT 1 FROM credential) AND NOT EXISTS (SELECT 1 FROM answered)
    ON CONFLICT (partner_id, signature) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM credential), EXISTS (SELECT 1 FROM recorded),
       a.request_hash, a.status, a.response, {", ".join(f"o.{c}" for c in ORDER_COLUMNS)}
FROM (SELECT 1) AS one
LEFT JOIN answered AS a ON true
LEFT JOIN dispatch_orders AS o ON o.order_id = ?
""")

_SECRET = Prepared("SELECT secret FROM partner_credentials WHERE partner_id = ?")
_CURRENT = Prepared("SELECT 1 FROM partner_credentials WHERE partner_id = ? AND secret = ?")
_ANSWERED = Prepared("SELECT request_hash, status, response FROM idempotency_keys"
                     " WHERE partner_id = ? AND key = ? AND status <> 0")
# a row only where the signature was new (RETURNING: SQLite 3.35 and later)
_RECORD = Prepared("INSERT INTO seen_signatures (partner_id, signature, seen_at)"
                   " VALUES (?, ?, ?) ON CONFLICT (partner_id, signature) DO NOTHING RETURNING 1")


class AdmissionSession:
    """The statements admitting one request, on one connection (see `admission_session`)."""

    def __init__(self, postgres: bool, conn: Connection) -> None:
        self.postgres = postgres
        self.conn = conn

    def rows(self, statement: Prepared, params: tuple) -> list[tuple]:
        return fetch_rows(self.conn, statement.text(self.conn), params)

    def secret(self, partner_id: str) -> str | None:
        found = self.rows(_SECRET, (partner_id,))
        return found[0][0] if found else None

    def admit(self, partner_id: str, secret: str, signature: str, seen_at: int,
              key: str | None, order_id: str | None) -> Admission:
        if self.postgres:
            row = self.rows(_PG_ADMIT, (partner_id, secret, partner_id, key, partner_id,
                                        signature, seen_at, order_id))[0]
            answered = row[2:5] if row[3] is not None else None
            order = (dict(zip(ORDER_COLUMNS, row[5:], strict=True)) if row[5] is not None
                     else None)
            return Admission(row[0], row[1], answered, order)
        # SQLite: the same four steps, one statement each
        current = bool(self.rows(_CURRENT, (partner_id, secret)))
        answered = self.rows(_ANSWERED, (partner_id, key)) if key is not None else []
        recorded = current and not answered and bool(
            self.rows(_RECORD, (partner_id, signature, seen_at)))
        order = ORDER_ROW.first(self.conn, (order_id,)) if order_id is not None else None
        return Admission(current, recorded, tuple(answered[0]) if answered else None, order)


@contextmanager
def admission_session(db: WorkerDatabase, in_unit_of_work: bool = False) \
        -> Iterator[AdmissionSession]:
    """`in_unit_of_work` (a POST): the statements open the worker's unit of work, which the
    caller goes on with (its action) and ends; on PostgreSQL BEGIN goes with the first.
    Else (a GET), on PostgreSQL: a reader's connection (autocommit, each statement its own
    transaction; a dropped connection is ServiceUnavailable); on SQLite: the worker's
    transaction (its write lock: the signature is written), committed at the end of the
    block, rolled back if it raises (in the unit of work, the caller rolls back)."""
    postgres = db.engine.dialect.name == "postgresql"
    if in_unit_of_work:
        opened = nullcontext(db.conn)
    else:
        opened = db.reader() if postgres else db.transaction()
    with opened as conn:
        yield AdmissionSession(postgres, conn)
