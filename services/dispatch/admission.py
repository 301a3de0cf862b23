"""Letting a signed partner request in: the database's side of it, in one round trip.

A request whose signature checks out against the partner's secret (the gateway keeps the
secrets it has read, services/dispatch/gateway.py) is admitted by one statement on
PostgreSQL, its own transaction (autocommit: no BEGIN, no COMMIT round trip):

- the secret it was checked with is still the partner's (rotation takes effect at once: if
  not, nothing is written and the gateway reads the secret again);
- the signature is recorded as used, so the same signed request is refused from then on, by
  every gateway replica (the unique key of seen_signatures decides between two at once);
- a retried POST's stored answer, if its Idempotency-Key was answered before (then the
  signature is not recorded: the retry gets the first answer, as often as it is sent);
- the order the path names, as it is now, for the route's handler.

SQLite has no INSERT inside WITH: the same four steps run as statements of one transaction
(in-process, so no round trips to save). Both go straight to the driver's cursor: this is the
gateway's hot path, and SQLAlchemy's statement and result machinery costs more than the
statements themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.dispatch.queries import ORDER_COLUMNS

if TYPE_CHECKING:
    from serviceloop.nameko_deps import WorkerDatabase

@dataclass(frozen=True, slots=True)
class Admission:
    current: bool  # the secret the signature was checked with is still the partner's
    recorded: bool  # the signature was new and is now recorded as used
    answered: tuple | None  # (request_hash, status, response): the key's earlier answer
    order: dict | None  # the order the path names, None if there is none (or no order_id)


_PG_ADMIT = f"""
WITH credential AS (
    SELECT 1 FROM partner_credentials WHERE partner_id = %(partner)s AND secret = %(secret)s
), answered AS (
    SELECT request_hash, status, response FROM idempotency_keys
    WHERE partner_id = %(partner)s AND key = %(key)s AND status <> 0
), recorded AS (
    INSERT INTO seen_signatures (partner_id, signature, seen_at)
    SELECT %(partner)s, %(signature)s, %(seen_at)s
    WHERE EXISTS (SELECT 1 FROM credential) AND NOT EXISTS (SELECT 1 FROM answered)
    ON CONFLICT (partner_id, signature) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM credential), EXISTS (SELECT 1 FROM recorded),
       a.request_hash, a.status, a.response, {", ".join(f"o.{c}" for c in ORDER_COLUMNS)}
FROM (SELECT 1) AS one
LEFT JOIN answered AS a ON true
LEFT JOIN dispatch_orders AS o ON o.order_id = %(order)s
"""

_SECRET = "SELECT secret FROM partner_credentials WHERE partner_id = ?"
_CURRENT = "SELECT 1 FROM partner_credentials WHERE partner_id = ? AND secret = ?"
_ANSWERED = ("SELECT request_hash, status, response FROM idempotency_keys"
             " WHERE partner_id = ? AND key = ? AND status <> 0")
_RECORD = ("INSERT INTO seen_signatures (partner_id, signature, seen_at) VALUES (?, ?, ?)"
           " ON CONFLICT (partner_id, signature) DO NOTHING")
_ORDER = f"SELECT {', '.join(ORDER_COLUMNS)} FROM dispatch_orders WHERE order_id = ?"


class AdmissionSession:
    """The statements admitting one request, on one connection (see `admission_session`)."""

    def __init__(self, cursor, postgres: bool) -> None:  # noqa: ANN001 - a driver cursor
        self.cursor = cursor
        self.postgres = postgres

    def secret(self, partner_id: str) -> str | None:
        self.cursor.execute(_SECRET.replace("?", "%s") if self.postgres else _SECRET,
                            (partner_id,))
        row = self.cursor.fetchone()
        return row[0] if row else None

    def admit(self, partner_id: str, secret: str, signature: str, seen_at: int,
              key: str | None, order_id: str | None) -> Admission:
        if self.postgres:
            return self._admit_postgres(partner_id, secret, signature, seen_at, key, order_id)
        return self._admit_sqlite(partner_id, secret, signature, seen_at, key, order_id)

    def _admit_postgres(self, partner_id: str, secret: str, signature: str, seen_at: int,
                        key: str | None, order_id: str | None) -> Admission:
        self.cursor.execute(_PG_ADMIT, {"partner": partner_id, "secret": secret, "key": key,
                                        "signature": signature, "seen_at": seen_at,
                                        "order": order_id})
        row = self.cursor.fetchone()
        answered = row[2:5] if row[3] is not None else None
        order = dict(zip(ORDER_COLUMNS, row[5:], strict=True)) if row[5] is not None else None
        return Admission(row[0], row[1], answered, order)

    def _admit_sqlite(self, partner_id: str, secret: str, signature: str, seen_at: int,
                      key: str | None, order_id: str | None) -> Admission:
        cursor = self.cursor
        current = cursor.execute(_CURRENT, (partner_id, secret)).fetchone() is not None
        answered = (cursor.execute(_ANSWERED, (partner_id, key)).fetchone()
                    if key is not None else None)
        recorded = False
        if current and answered is None:
            recorded = cursor.execute(_RECORD, (partner_id, signature, seen_at)).rowcount == 1
        order = None
        if order_id is not None:
            row = cursor.execute(_ORDER, (order_id,)).fetchone()
            order = dict(zip(ORDER_COLUMNS, row, strict=True)) if row is not None else None
        return Admission(current, recorded, tuple(answered) if answered else None, order)


@contextmanager
def admission_session(db: WorkerDatabase) -> Iterator[AdmissionSession]:
    """PostgreSQL: a pooled connection in autocommit, each statement its own transaction.
    SQLite: the worker's transaction (its write lock: the signature is written), committed
    at the end of the block, rolled back if it raises."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        with db.transaction() as conn:
            cursor = conn.connection.driver_connection.cursor()
            try:
                yield AdmissionSession(cursor, postgres=False)
            finally:
                cursor.close()
        return
    driver_error = engine.dialect.loaded_dbapi.Error
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    cursor = None
    try:
        driver.autocommit = True
        cursor = driver.cursor()
        yield AdmissionSession(cursor, postgres=True)
    except driver_error as error:
        if engine.dialect.is_disconnect(error, driver, cursor):
            # as SQLAlchemy does on a disconnect: every connection opened before it is renewed
            engine.pool._invalidate(pooled, error)  # noqa: SLF001
        raise
    finally:
        _give_back(pooled, driver, cursor, driver_error)


def _give_back(pooled, driver, cursor, driver_error: type) -> None:  # noqa: ANN001
    """Back to the pool as it came (not in autocommit), or discarded if that fails."""
    try:
        if cursor is not None:
            cursor.close()
        if pooled.is_valid:
            driver.autocommit = False
    except driver_error as error:
        pooled.invalidate(error)
    finally:
        pooled.close()
