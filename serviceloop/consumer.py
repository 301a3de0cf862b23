"""Consuming other services' events: idempotent inbox, bounded retries, parking.

nameko acknowledges and drops a message whose handler raised, and with
`requeue_on_error` alone it redelivers in a hot loop. `consumes` gives every
handler an explicit policy instead:

* the envelope is checked against contracts/ (a malformed one is parked at once);
* the handler runs in one transaction together with the inbox record of the
  event_id, so a redelivered or late-committing duplicate changes nothing (the inbox is
  read only after a failed run: a duplicate is refused by its record at COMMIT);
* a failing handler is retried with exponential back-off, a bounded number of
  times, then the message is parked in `parked_messages` where an operator sees
  it and can replay it;
* a handler that lost a race (another writer appended to the same stream first, or
  PostgreSQL ended a deadlock with it) is run again on what is now committed, after a
  random share of the back-off so the two workers do not meet again; lost races have
  their own, larger bound and do not use up the attempts kept for failures;
* only if even parking fails (the database is gone) is the message returned to
  the broker, to be delivered again later.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable

import eventlet
from nameko.events import EventHandler
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from contracts.envelope import ENVELOPE
from contracts.errors import ConcurrencyConflict, Conflict, NotFound
from contracts.registry import validate_event
from serviceloop.clock import isoformat
from serviceloop.crashpoints import crash_point
from serviceloop.db import (
    Prepared,
    ended_by_database,
    fetch_rows,
    hold_writes,
    owns_transaction,
    sql,
)
from serviceloop.entrypoints import rpc
from serviceloop.eventstore import Envelope, refused_by_the_log
from serviceloop.nameko_deps import retried_read
from serviceloop.observability import log_context

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
DEFAULT_CONFLICTS = 20  # lost races retried, besides the attempts
DEFAULT_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class RetryLater(Exception):
    """A handler's way to say 'not yet' (e.g. an event overtook the one before it).

    `waiting_for`: the order (correlation id) whose next event may unblock it, when that is
    not the message's own order (an event about many orders); a parked message is handed back
    when an event of its own order or of this one is handled.
    """

    def __init__(self, message: str, waiting_for: str | None = None) -> None:
        if waiting_for is not None:
            message = f"{message} {_WAITS_FOR.format(waiting_for)}"
        super().__init__(message)
        self.waiting_for = waiting_for


_WAITS_FOR = "[waiting for {}]"


# every delivery runs these: prepared once per connection on PostgreSQL (serviceloop.db)
_HANDLED = Prepared("SELECT 1 FROM inbox WHERE consumer = ? AND event_id = ?")


def already_handled(conn: Connection, consumer: str, event_id: str) -> bool:
    return bool(fetch_rows(conn, _HANDLED.text(conn), (consumer, event_id)))


def _handled_before(db, consumer: str, event_id: str) -> bool:  # noqa: ANN001
    """After a failed run: whether the inbox holds the event (False if it cannot be read:
    the failure is then handled as any other)."""
    try:
        with db.reader() as conn:
            return already_handled(conn, consumer, event_id)
    except Exception:  # noqa: BLE001 - the database may be what failed
        return False


def handled_among(conn: Connection, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of `event_ids` (a page's worth) the consumer's inbox holds: one query."""
    if not event_ids:
        return set()
    rows = fetch_rows(conn, "SELECT event_id FROM inbox WHERE consumer = ? AND event_id IN "
                            f"({', '.join(['?'] * len(event_ids))})", (consumer, *event_ids))
    return {row[0] for row in rows}


_RECORD = Prepared("INSERT INTO inbox (consumer, event_id, source, event_type, handled_at) "
                   "VALUES (?, ?, ?, ?, ?)")
# parked by RetryLater, not handed back yet, and of this order or waiting for it
_WAITS_ON = ("replayed_at IS NULL AND (waiting_for = ?"
             " OR (correlation_id = ? AND waiting_for IS NOT NULL))")
_WAITING = Prepared(f"SELECT EXISTS (SELECT 1 FROM parked_messages WHERE {_WAITS_ON})")


def record_handled_and_commit(db, consumer: str, source: str, envelope: Envelope,  # noqa: ANN001
                              now: str) -> bool:
    """Record the event in the inbox and commit; whether messages of its order (or waiting
    for it) wait, parked for an event they depend on (RetryLater), as seen after the commit.
    On PostgreSQL all in one round trip; the common answer (none wait) costs nothing more."""
    values = (consumer, envelope.event_id, source, envelope.event_type, now)
    order = (envelope.correlation_id, envelope.correlation_id)
    if owns_transaction(db.conn):
        conn = db.conn
        (row,) = fetch_rows(conn, f"{_RECORD.text(conn)}; COMMIT; {_WAITING.text(conn)}",
                            values + order)
        db.commit()
        return bool(row[0])
    sql(db.conn, _RECORD, values)
    db.commit()
    with db.reader() as conn:
        return bool(sql(conn, _WAITING.statement, order).scalar())


def park(db, consumer: str, source: str, body: dict, error: str, attempts: int,  # noqa: ANN001
         now: str, waiting_for: str | None = None) -> int:
    """`waiting_for` (a RetryLater's): the order whose next handled event hands it back.
    Returns the parked message's id."""
    correlation_id = body.get("correlation_id") if waiting_for is not None else None
    with db.transaction() as conn:
        return conn.execute(
            text(
                "INSERT INTO parked_messages (consumer, event_id, source, event_type, envelope, "
                "error, attempts, parked_at, correlation_id, waiting_for) "
                "VALUES (:c, :e, :s, :t, :b, :err, :a, :p, :o, :w) RETURNING id"
            ),
            {
                "c": consumer, "e": str(body.get("event_id", "?"))[:36], "s": source,
                "t": str(body.get("event_type", "?"))[:80],
                "b": json.dumps(body, ensure_ascii=False, default=str),
                "err": error[:4000], "a": attempts, "p": now,
                "o": correlation_id, "w": waiting_for,
            },
        ).scalar_one()


def deliver(service, handler, consumer: str, source: str, body: object, *,  # noqa: ANN001
            attempts: int = DEFAULT_ATTEMPTS, backoff: float = DEFAULT_BACKOFF,
            conflicts: int = DEFAULT_CONFLICTS, park_on_failure: bool = True) -> str:
    """Run `handler(service, envelope)` under the policy above; returns what happened.

    `attempts`: tries before a failing handler is parked; `conflicts`: lost races
    (`is_lost_race`) run again besides those."""
    now = isoformat(service.clock.now())
    try:
        data = ENVELOPE.load(body)
        validate_event(data["event_type"], data["schema_version"], data["payload"])
        envelope = Envelope.from_dict(data)
    except Exception as error:  # malformed (schema or contract): retrying cannot help
        log.error("%s parked a malformed message: %s", consumer, error)
        park(service.db, consumer, source, body if isinstance(body, dict) else {"raw": body},
             f"malformed: {error}", 0, now)
        return "parked"
    log_context(envelope.correlation_id, envelope.event_id, f"consumer:{consumer}")
    failed = raced = 0
    while True:
        try:
            try:
                # a duplicate is rare, so the handler runs without asking the inbox first:
                # its inbox record (one per consumer and event) refuses a duplicate at
                # COMMIT, and a duplicate the handler failed on is found below. The
                # handler's appends go with the inbox record and COMMIT (PostgreSQL); any
                # error of theirs is met there, and handled as every failure is
                hold_writes(service.db.conn)
                handler(service, envelope)
                crash_point(f"{service.name}.mid_consumer")
                waiting = record_handled_and_commit(service.db, consumer, source, envelope, now)
                crash_point(f"{service.name}.after_commit")
            except BaseException:
                service.db.rollback()
                raise
            if waiting and park_on_failure:  # not while handing back: the caller does so
                hand_back_waiting(service, envelope.correlation_id)
            return "handled"
        except IntegrityError as error:
            if _is_inbox_duplicate(error):
                return "duplicate"  # a concurrent delivery of the same event won
            failure = error
        except Exception as error:  # noqa: BLE001 - every failure gets the same policy
            failure = error
        if _handled_before(service.db, consumer, envelope.event_id):
            return "duplicate"  # the handler failed on what the event had already done
        if raced < conflicts and is_lost_race(failure):
            raced += 1
            log.info("%s lost a race on %s (%d/%d), running it again: %s", consumer,
                     envelope.event_id, raced, conflicts, failure)
            eventlet.sleep(random.uniform(0, min(MAX_BACKOFF, backoff * 2 ** min(raced, 6))))
            continue
        failed += 1
        log.warning("%s attempt %d/%d on %s failed: %s", consumer, failed, attempts,
                    envelope.event_id, failure)
        if failed >= attempts:
            break
        eventlet.sleep(min(MAX_BACKOFF, backoff * 2 ** (failed - 1)))
    if not park_on_failure:
        return "waiting"
    waiting_for = None
    if isinstance(failure, RetryLater):
        waiting_for = failure.waiting_for or envelope.correlation_id
    parked = park(service.db, consumer, source, body, f"{type(failure).__name__}: {failure}",
                  failed + raced, isoformat(service.clock.now()), waiting_for)
    log.error("%s parked %s after %d attempts", consumer, envelope.event_id, failed + raced)
    # the event it waits for may have been handled after its last try and before it was
    # parked: that event's look for waiting messages found none. One more look now that it
    # is parked closes the gap (an event handled from here on finds it parked). If the look
    # fails (the database went away), the message stays parked: the broker's copy is done
    if waiting_for is not None:
        try:
            if parked in hand_back_waiting(service, waiting_for):
                return "handled"
        except Exception:  # noqa: BLE001 - parked is the answer, as before the look
            service.db.rollback()
            log.exception("%s could not look again at parked %s", consumer, envelope.event_id)
    return "parked"


def is_lost_race(error: BaseException) -> bool:
    """Another worker got there first; run again on what is now committed, the handler
    decides afresh. Another writer appended to the stream first (`ConcurrencyConflict`, or
    the log's own constraint met at COMMIT by an append that was held back until then:
    PostgreSQL, see EventStore.append); or PostgreSQL chose this transaction to end a
    deadlock or a serialization failure (SQLSTATE 40P01, 40001)."""
    if isinstance(error, ConcurrencyConflict):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if ended_by_database(error):
        return True
    return isinstance(error, IntegrityError) and refused_by_the_log(error)


def hand_back_waiting(service, correlation_id: str) -> list[int]:  # noqa: ANN001
    """Messages parked because they came before the event they depend on (RetryLater), for
    the same order or waiting for it, delivered again now that one of its events was handled:
    the catch-up has already moved past them, and nothing else would ever bring them back.
    Returns the ids of those no longer waiting (handled, or found handled already)."""
    with service.db.reader() as conn:
        rows = sql(conn, f"SELECT id, consumer, source, envelope FROM parked_messages "
                         f"WHERE {_WAITS_ON} ORDER BY id", (correlation_id, correlation_id)).all()
    handed_back = []
    for row in rows:
        body = json.loads(row.envelope)
        found = parked_consumer(service, row.consumer, row.source, body.get("event_type"))
        if found is None:  # no one consumer of it here now: it stays for an operator
            log.warning("parked message %d: %s has no one consumer of its event now; left "
                        "parked", row.id, service.name)
            continue
        consumer, handler = found
        if deliver(service, handler, consumer, row.source, body, attempts=1,
                   park_on_failure=False) == "waiting":
            continue
        _mark_replayed(service, row.id)
        handed_back.append(row.id)
    if handed_back:
        log.info("%d parked messages of %s handed back", len(handed_back), correlation_id)
    return handed_back


def _mark_replayed(service, parked_id: int) -> None:  # noqa: ANN001
    with service.db.transaction() as conn:
        conn.execute(text("UPDATE parked_messages SET replayed_at = :t WHERE id = :i"),
                     {"t": isoformat(service.clock.now()), "i": parked_id})


def parked_consumer(service, consumer: str, source: str,  # noqa: ANN001
                    event_type: str | None) -> tuple[str, Callable] | None:
    """Where a message parked by `consumer` goes back to: that consumer and its handler, or,
    if the service no longer has it (its method renamed), the service's one consumer of the
    same `source` and event type under its current name; None if there is none, or more than
    one to choose from (an operator decides)."""
    method = getattr(type(service), consumer.split(".", 1)[-1], None)
    if getattr(method, "consumed", None) == (source, event_type):
        return consumer, method.handler
    candidates = subscribed_handlers(type(service)).get(source, {}).get(event_type, [])
    if len(candidates) != 1:
        return None
    handler = candidates[0][1]
    return f"{service.name}.{handler.__name__}", handler


def subscribed_handlers(service_class: type) -> dict[str, dict[str, list]]:
    """{source: {event_type: [(method name, handler)]}} from the `consumes` decorators."""
    found: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for name in dir(service_class):
        consumed = getattr(getattr(service_class, name), "consumed", None)
        if consumed:
            source, event_type = consumed
            found[source][event_type].append((name, getattr(service_class, name).handler))
    return found


def _is_inbox_duplicate(error: IntegrityError) -> bool:
    message = str(error.orig).lower()
    return "inbox" in message or "inbox_pkey" in message


def queue_arguments() -> dict:
    """`QUEUE_TYPE=quorum` (a RabbitMQ cluster): replicated quorum queues; classic by default.

    Every declaration of a queue (migrate's and the consumers' own) must say the same.
    """
    kind = os.environ.get("QUEUE_TYPE", "classic")
    if kind not in ("classic", "quorum"):
        raise ValueError(f"QUEUE_TYPE is {kind!r}: use 'classic' or 'quorum'")
    return {"x-queue-type": "quorum"} if kind == "quorum" else {}


class ReliableEventHandler(EventHandler):
    """nameko's event handler, declaring its queue with serviceloop's queue arguments."""

    def setup(self) -> None:
        super().setup()
        self.queue.queue_arguments = {**(self.queue.queue_arguments or {}), **queue_arguments()}


def consumes(source: str, event_type: str, *, attempts: int = DEFAULT_ATTEMPTS,
             backoff: float = DEFAULT_BACKOFF):  # noqa: ANN201
    """Decorate `handler(self, envelope)` as a reliable consumer of `source`'s `event_type`.

    The service must have `db` (serviceloop.nameko_deps.Database) and `clock` dependencies,
    and commit nothing itself: the handler's writes join the inbox transaction.
    """

    def decorate(handler):  # noqa: ANN001, ANN202
        @ReliableEventHandler.decorator(source, event_type, reliable_delivery=True,
                                        requeue_on_error=True)
        @functools.wraps(handler)
        def entrypoint(self, body):  # noqa: ANN001, ANN202
            consumer = f"{self.name}.{handler.__name__}"
            deliver(self, handler, consumer, source, body, attempts=attempts, backoff=backoff)

        entrypoint.consumed = (source, event_type)
        entrypoint.handler = handler
        return entrypoint

    return decorate


def queue_name(source: str, event_type: str, service: str, method: str) -> str:
    """nameko's name for a service-pool event handler's queue."""
    return f"evt-{source}-{event_type}--{service}.{method}"


class ParkedMessagesRpc:
    """What an operator sees of a service's parked messages, and how they replay one."""

    @rpc
    @retried_read
    def parked_messages(self, include_replayed: bool = False) -> list[dict]:
        query = "SELECT id, consumer, event_id, source, event_type, error, attempts, parked_at, " \
                "replayed_at FROM parked_messages"
        if not include_replayed:
            query += " WHERE replayed_at IS NULL"
        with self.db.reader() as conn:
            rows = conn.execute(text(query + " ORDER BY id")).mappings().all()
        return [dict(row) for row in rows]

    @rpc
    def replay_parked(self, parked_id: int) -> str:
        with self.db.reader() as conn:
            row = conn.execute(
                text("SELECT consumer, source, envelope, replayed_at FROM parked_messages "
                     "WHERE id = :i"), {"i": parked_id},
            ).first()
        if row is None or row.replayed_at is not None:
            raise NotFound(f"no parked message {parked_id} waiting", {"parked_id": ["unknown"]})
        body = json.loads(row.envelope)
        found = parked_consumer(self, row.consumer, row.source, body.get("event_type"))
        if found is None:
            raise Conflict(f"{self.name} has no one consumer of what parked message "
                           f"{parked_id} holds", {"parked_id": ["no one consumer of its event"]},
                           code="no_consumer")
        outcome = deliver(self, found[1], found[0], row.source, body)
        _mark_replayed(self, parked_id)
        return outcome
