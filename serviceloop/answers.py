"""A write RPC asked again with the same request id: the first answer, and no second effect.

An RPC caller whose answer was lost (the broker restarted, the reply queue expired, the
call timed out) cannot tell whether its call was made. Every write RPC takes an optional
`request_id=` keyword: the first call with it stores its answer in the same transaction as
its events (`rpc_answers`), and a call with the same id and the same arguments answers that,
changing nothing. The same id with other arguments, or for another method, is refused
(Conflict `request_id_reused`), as the partner gateway refuses an `Idempotency-Key` sent
again with another body. Answers are kept for ANSWERS_KEPT_DAYS (`AnswersKept`): an id older
than that is a new request.

A field of an answer that must not be kept twice (a partner's secret) is `withheld`: stored
without it, and given back to a call asked again by the method's `restore`, which may refuse.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable
from datetime import timedelta

from nameko.timer import timer

from contracts.errors import Conflict, ValidationFailed
from serviceloop.clock import isoformat
from serviceloop.db import commit_held, fetch_rows, hold_back, sql
from serviceloop.entrypoints import rpc
from serviceloop.eventstore import canonical_json

REQUEST_ID_LENGTH = 120  # rpc_answers.request_id
ANSWERS_KEPT_DAYS = 30  # a caller retries within minutes; a month covers any outage
FORGET_EVERY_SECONDS = 3600

_FIRST_ANSWER = "SELECT method, arguments_hash, answer FROM rpc_answers WHERE request_id = ?"
_KEEP_ANSWER = ("INSERT INTO rpc_answers (request_id, method, arguments_hash, answer, "
                "answered_at) VALUES (?, ?, ?, ?, ?)")


def answered_once(method=None, *, withheld: str | None = None,  # noqa: ANN001, ANN201
                  restore: Callable[[object, dict], object] | None = None):
    """Decorate a write RPC, inside `transactional` (so that a run repeated after a lost
    connection looks again): `request_id=` given, the method runs at most once for it.

    On PostgreSQL two calls with one request id at once queue on a lock of that id, taken
    with the look-up, so the second finds the first's answer; SQLite's write lock, taken at
    BEGIN, does the same.

    `withheld`: a field of the answer not stored; a call asked again gets it from
    `restore(service, stored answer)` (called in the call's transaction), which raises if it
    can no longer be given.
    """
    if method is None:
        return functools.partial(answered_once, withheld=withheld, restore=restore)
    if (withheld is None) != (restore is None):
        raise TypeError("a withheld field needs a restore, and only it")
    name = method.__name__
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, request_id=None, **kwargs):  # noqa: ANN001, ANN202
        if request_id is None:
            return method(self, *args, **kwargs)
        if not isinstance(request_id, str) or not 1 <= len(request_id) <= REQUEST_ID_LENGTH:
            raise ValidationFailed(
                f"request_id must be text of 1 to {REQUEST_ID_LENGTH} characters",
                {"request_id": ["invalid"]})
        try:  # the same call, whether an argument was given by position or by name
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise ValidationFailed(str(error), {"arguments": [str(error)]}) from None
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])  # all but self
        arguments_hash = hashlib.sha256(canonical_json([name, arguments]).encode()).hexdigest()
        conn = self.db.conn
        first = _first_answer(conn, request_id)
        if first is not None:
            if tuple(first[:2]) != (name, arguments_hash):
                raise Conflict(
                    f"request id {request_id} was used for another call ({first[0]}): "
                    "give each request its own id", {"request_id": ["used for another call"]},
                    code="request_id_reused")
            answer = json.loads(first[2])
            if withheld is not None:
                answer[withheld] = restore(self, answer)
            return answer
        with commit_held(conn):
            answer = method(self, *args, **kwargs)
        kept = answer if withheld is None else \
            {field: value for field, value in answer.items() if field != withheld}
        row = (request_id, name, arguments_hash, json.dumps(kept),
               isoformat(self.clock.now()))
        if conn.dialect.name == "postgresql":
            hold_back(conn, _KEEP_ANSWER, row)  # goes with the COMMIT
        else:
            sql(conn, _KEEP_ANSWER, row)
        return answer

    return wrapper


class AnswersKept:
    """Mixed into a service: its stored answers are forgotten once ANSWERS_KEPT_DAYS old, every
    hour, and when an operator asks (`forget_old_answers` over RPC). `ANSWERS_ALSO_KEPT`: a
    service's other stored answers, table -> its time column, forgotten in the same pass (each
    counted under its table's name)."""

    ANSWERS_ALSO_KEPT: dict[str, str] = {}

    @rpc
    @timer(interval=FORGET_EVERY_SECONDS)
    def forget_old_answers(self) -> dict:
        horizon = isoformat(self.clock.now() - timedelta(days=ANSWERS_KEPT_DAYS))
        tables = {"rpc_answers": "answered_at", **self.ANSWERS_ALSO_KEPT}
        with self.db.transaction() as conn:
            counts = {table: sql(conn, f"DELETE FROM {table} WHERE {column} < ?",
                                 (horizon,)).rowcount for table, column in tables.items()}
        return {"forgotten": counts.pop("rpc_answers"), "before": horizon, **counts}


def _first_answer(conn, request_id: str) -> tuple | None:  # noqa: ANN001
    query, params = _FIRST_ANSWER, (request_id,)
    if conn.dialect.name == "postgresql":
        query = "SELECT pg_advisory_xact_lock(hashtext(?)); " + query
        params = (f"rpc_answers:{request_id}", request_id)
    rows = fetch_rows(conn, query, params)
    return rows[0] if rows else None
