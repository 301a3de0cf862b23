"""What the gateway remembers of partner requests: used signatures and answered keys.

A signature, once used, is recorded so that the same signed request cannot be replayed
(services/dispatch/admission.py records it as it lets the request in); the record is kept
for twice the allowed clock skew, past which the timestamp check refuses it anyway. A POST's
answer is stored under its partner and Idempotency-Key, with a hash of the request, in the
transaction of the action it answers, so that a retry gets the first answer
(services/dispatch/gateway.py builds it). Rows written before that had status 0 while their
request was being answered; readers still treat status 0 as "no answer yet".
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, RowMapping, delete, select

from contracts.signing import MAX_SKEW_SECONDS
from serviceloop.db import sql
from services.dispatch.projections import idempotency_keys, seen_signatures


def forget_old_signatures(conn: Connection) -> None:
    horizon = int(time.time()) - 2 * MAX_SKEW_SECONDS
    conn.execute(delete(seen_signatures).where(seen_signatures.c.seen_at < horizon))


def save_answer(conn: Connection, partner_id: str, key: str, request_hash: str, status: int,
                response: str, created_at: str) -> None:
    """The answer to (partner, key), in the transaction of the action it answers: both
    commit or neither. IntegrityError if a request with this key committed first (a
    concurrent one waits here until that one commits or rolls back)."""
    sql(conn, "INSERT INTO idempotency_keys (partner_id, key, request_hash, status, response,"
              " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (partner_id, key, request_hash, status, response, created_at))


def stored_answer(conn: Connection, partner_id: str, key: str) -> RowMapping | None:
    """The row for (partner, key), if a request with that key was answered."""
    query = select(idempotency_keys).where(
        idempotency_keys.c.partner_id == partner_id, idempotency_keys.c.key == key)
    return conn.execute(query).mappings().first()
