"""What the gateway remembers of partner requests: used signatures and answered keys.

A signature, once used, is recorded so that the same signed request cannot be replayed; the
record is kept for twice the allowed clock skew, past which the timestamp check refuses it
anyway. A POST's answer is stored under its partner and Idempotency-Key, with a hash of the
request, so that a retry gets the first answer (services/dispatch/gateway.py builds it).
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, RowMapping, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from contracts.signing import MAX_SKEW_SECONDS, SignatureError
from services.dispatch.projections import idempotency_keys, seen_signatures


def record_signature(conn: Connection, partner_id: str, signature: str, timestamp: int) -> None:
    try:  # a failed insert aborts the transaction: it holds nothing else to keep
        conn.execute(insert(seen_signatures).values(
            partner_id=partner_id, signature=signature, seen_at=timestamp))
    except IntegrityError:
        raise SignatureError("signature_replayed",
                             "this signed request was already used; sign each request "
                             "afresh") from None


def forget_old_signatures(conn: Connection) -> None:
    horizon = int(time.time()) - 2 * MAX_SKEW_SECONDS
    conn.execute(delete(seen_signatures).where(seen_signatures.c.seen_at < horizon))


def claim_key(conn: Connection, partner_id: str, key: str, request_hash: str,
              created_at: str) -> None:
    """Hold (partner, key) for this request; IntegrityError if another request holds it."""
    conn.execute(insert(idempotency_keys).values(
        partner_id=partner_id, key=key, request_hash=request_hash, status=0,
        response="", created_at=created_at))


def save_answer(conn: Connection, partner_id: str, key: str, status: int,
                response: str) -> None:
    conn.execute(update(idempotency_keys).where(
        idempotency_keys.c.partner_id == partner_id, idempotency_keys.c.key == key)
        .values(status=status, response=response))


def stored_answer(conn: Connection, partner_id: str, key: str) -> RowMapping | None:
    """The row for (partner, key): status 0 while its request is still being answered."""
    query = select(idempotency_keys).where(
        idempotency_keys.c.partner_id == partner_id, idempotency_keys.c.key == key)
    return conn.execute(query).mappings().first()
