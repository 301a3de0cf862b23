"""A message parked in a race with the event it waits for is handed back, not left parked.

`deliver` is driven directly, on a real database, so that the interleaving that once left a
message parked in CI happens every time: the event the message waits for is handled (its
check for waiting messages finds none) after the message's last try failed and before the
message is parked.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from serviceloop import consumer as consumer_module
from serviceloop.clock import ManualClock
from serviceloop.consumer import RetryLater, consumes, deliver
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.nameko_deps import WorkerDatabase
from services.orders.projections import customers, events

ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路9号",
           "lat": None, "lon": None}
ORDER = "order-race-1"


class Register:
    """Two consumers of one order's events: the cancellation needs the customer first."""

    name = "register"

    def __init__(self, engine, clock) -> None:  # noqa: ANN001
        self.db = WorkerDatabase(engine, EventStore(events))
        self.clock = clock
        self.before_last_try_fails = None  # run once, just before the last try raises
        self.tries = 0

    @consumes("orders", "customer_registered")
    def add_customer(self, envelope) -> None:  # noqa: ANN001
        self.db.conn.execute(customers.insert().values(
            customer_id=envelope.payload["customer_id"], name=envelope.payload["name"],
            phone=envelope.payload["phone"], province="p", city="c", district="d", street="s",
            registered_at=envelope.occurred_at))

    @consumes("orders", "order_cancelled")
    def needs_customer(self, envelope) -> None:  # noqa: ANN001
        self.tries += 1
        known = self.db.conn.execute(select(func.count()).select_from(customers)).scalar()
        if not known:
            if self.tries == ATTEMPTS and self.before_last_try_fails is not None:
                self.db.rollback()  # this try is over (SQLite: its lock let go), as in deliver
                self.before_last_try_fails()
            raise RetryLater("the customer is not known yet")
        self.db.conn.execute(text("UPDATE customers SET name = 'cancelled'"))


ATTEMPTS = 2


def _envelopes(database_for) -> list[dict]:  # noqa: ANN001
    engine = make_engine(database_for("orders", "sqlite"))
    with engine.begin() as conn:
        registered, cancelled = EventStore(events).append(conn, "order-stream", 0, [
            NewEvent("customer_registered", {"customer_id": "cu1", "name": "钱七",
                                             "phone": "13900000003", "address": ADDRESS}),
            NewEvent("order_cancelled", {"order_id": "o1", "reason": "duplicate", "note": "",
                                         "previous_status": "created"}),
        ], occurred_at=datetime(2026, 11, 2, tzinfo=UTC), correlation_id=ORDER,
            causation_id="t", actor="system")
    engine.dispose()
    return [registered.to_dict(), cancelled.to_dict()]


@pytest.fixture
def engine(database_for, backend):
    engine = make_engine(database_for("orders", backend))
    yield engine
    engine.dispose()


def test_a_message_parked_just_after_its_event_was_handled_is_handed_back(engine, database_for):
    clock = ManualClock()
    registered, cancelled = _envelopes(database_for)
    cancelling, registering = Register(engine, clock), Register(engine, clock)

    def the_event_it_waits_for_is_handled() -> None:
        outcome = deliver(registering, Register.add_customer.handler, "register.add_customer",
                          "orders", registered)
        assert outcome == "handled"

    cancelling.before_last_try_fails = the_event_it_waits_for_is_handled
    outcome = deliver(cancelling, Register.needs_customer.handler, "register.needs_customer",
                      "orders", cancelled, attempts=ATTEMPTS, backoff=0.001)

    # its own tries all failed and it was parked, but handed back at once: what it waited
    # for had been handled
    assert outcome == "handled"
    with engine.connect() as conn:
        parked = conn.execute(text("SELECT consumer, waiting_for, replayed_at "
                                   "FROM parked_messages")).all()
        handled = {row[0] for row in conn.execute(text("SELECT consumer FROM inbox"))}
        names = conn.execute(select(customers.c.name)).scalars().all()
    assert [(p.consumer, p.waiting_for) for p in parked] == [("register.needs_customer", ORDER)]
    assert parked[0].replayed_at is not None
    assert handled == {"register.add_customer", "register.needs_customer"}
    assert names == ["cancelled"]
    assert cancelling.tries == ATTEMPTS + 1


def test_a_message_still_waiting_after_it_was_parked_stays_parked(engine, database_for):
    clock = ManualClock()
    _, cancelled = _envelopes(database_for)
    cancelling = Register(engine, clock)
    outcome = deliver(cancelling, Register.needs_customer.handler, "register.needs_customer",
                      "orders", cancelled, attempts=ATTEMPTS, backoff=0.001)
    assert outcome == "parked"
    with engine.connect() as conn:
        parked = conn.execute(text("SELECT waiting_for, replayed_at FROM parked_messages")).all()
        inbox = conn.execute(text("SELECT COUNT(*) FROM inbox")).scalar()
    assert [(p.waiting_for, p.replayed_at) for p in parked] == [(ORDER, None)]
    assert inbox == 0
    assert cancelling.tries == ATTEMPTS + 1  # the one look after parking found it still waiting


def test_a_failed_look_after_parking_leaves_the_message_parked(engine, database_for,
                                                               monkeypatch):
    # the look fails as a database gone away would make it
    def database_away(*_args):  # noqa: ANN002, ANN202
        raise OperationalError("SELECT", {}, Exception("the database went away"))

    monkeypatch.setattr(consumer_module, "parked_consumer", database_away)
    _, cancelled = _envelopes(database_for)
    cancelling = Register(engine, ManualClock())
    outcome = deliver(cancelling, Register.needs_customer.handler, "register.needs_customer",
                      "orders", cancelled, attempts=ATTEMPTS, backoff=0.001)
    assert outcome == "parked"
    with engine.connect() as conn:
        parked = conn.execute(text("SELECT consumer, replayed_at FROM parked_messages")).all()
    assert [(p.consumer, p.replayed_at) for p in parked] == [("register.needs_customer", None)]
    assert not cancelling.db.active  # nothing of the failed look is left open


def test_a_message_parked_by_a_consumer_renamed_since_goes_back_to_its_new_name(engine,
                                                                             database_for):
    registered, cancelled = _envelopes(database_for)
    cancelling, registering = Register(engine, ManualClock()), Register(engine, ManualClock())
    # parked by a consumer of order_cancelled that was called something else then
    outcome = deliver(cancelling, Register.needs_customer.handler, "register.renamed_since",
                      "orders", cancelled, attempts=ATTEMPTS, backoff=0.001)
    assert outcome == "parked"
    assert deliver(registering, Register.add_customer.handler, "register.add_customer",
                   "orders", registered) == "handled"
    with engine.connect() as conn:
        parked = conn.execute(text("SELECT consumer, replayed_at FROM parked_messages")).all()
        handled = {row[0] for row in conn.execute(text("SELECT consumer FROM inbox"))}
        names = conn.execute(select(customers.c.name)).scalars().all()
    assert [p.consumer for p in parked] == ["register.renamed_since"]
    assert parked[0].replayed_at is not None
    assert handled == {"register.add_customer", "register.needs_customer"}  # its name now
    assert names == ["cancelled"]
