"""Claims opened by two settlement workers at once, on PostgreSQL.

The load benchmark found it: two completions handled at the same moment both read the same
last `opened_position`, and the second claim was refused by the unique index until its
consumer gave up and parked it. Deliveries here go straight to the service's consumers
(as bench/settlement.py does), two at a time on two connections, with one attempt each.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import eventlet
from sqlalchemy import text

from bench.settlement import PARTNERS, PERIOD_START, ProducerLog, order_events, stand_in
from serviceloop.consumer import deliver
from serviceloop.seeding import demo_rate_files
from services.settlement.service import SettlementService

ORDERS = 40


def _at(envelope: dict) -> datetime:
    return datetime.fromisoformat(envelope["occurred_at"].replace("Z", "+00:00"))


def test_completions_handled_at_once_each_open_their_claim(database_for):
    import contracts.callback
    import contracts.dispatch
    import contracts.orders  # noqa: F401 - the producers' contracts, for validation

    url = database_for("settlement", "postgres")
    workers = [stand_in(url, PERIOD_START - timedelta(days=1)) for _ in range(2)]
    for csv_text in demo_rate_files():
        workers[0].load_rates(csv_text)
    logs = {source: ProducerLog(source) for source in ("orders", "dispatch", "callback")}
    deliveries = [order_events(logs, index, ORDERS, PARTNERS) for index in range(ORDERS)]
    handler = {name: getattr(SettlementService, name).handler
               for name in ("on_order_created", "on_order_completed")}

    def handle(worker, source: str, name: str, envelope: dict) -> str:  # noqa: ANN001
        worker.clock.set(_at(envelope) + timedelta(seconds=5))
        return deliver(worker, handler[name], f"settlement.{name}", source, envelope,
                       attempts=1)

    for events in deliveries:
        source, name, envelope = events[0]
        assert handle(workers[0], source, name, envelope) == "handled"
    # one green thread per worker: a worker's unit of work is one connection, and a psycopg2
    # connection used by two green threads at once deadlocks the process on its mutex
    def work(turn: int) -> list[str]:
        return [handle(workers[turn], *deliveries[index][1])
                for index in range(turn, ORDERS, 2)]

    threads = [eventlet.spawn(work, turn) for turn in (0, 1)]
    outcomes = [outcome for thread in threads for outcome in thread.wait()]
    assert outcomes == ["handled"] * ORDERS
    with workers[0].db.engine.connect() as conn:
        positions = conn.execute(text("SELECT opened_position FROM claims "
                                      "ORDER BY opened_position")).scalars().all()
    assert positions == list(range(1, ORDERS + 1))
    for worker in workers:
        worker.db.engine.dispose()


def test_two_decisions_on_one_claim_at_once_are_taken_one_after_the_other(database_for,
                                                                          monkeypatch):
    """A callback's outcome and another for the same claim, handled at the same moment by two
    workers with one attempt each: the second waits for the first and decides on the version
    it left, instead of conflicting with it (found as a parked verification in the loop
    benchmark). The first worker is slowed between reading the claim and deciding it, so
    that the second reads it meanwhile (a delay injected, not a wait for anything)."""
    from services.settlement import claims

    decide = claims.decide

    def slow_for_the_first_worker(conn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if conn.engine is workers[0].db.engine:
            eventlet.sleep(0.05)
        return decide(conn, *args, **kwargs)

    import contracts.callback
    import contracts.dispatch
    import contracts.orders  # noqa: F401 - the producers' contracts, for validation

    url = database_for("settlement", "postgres")
    workers = [stand_in(url, PERIOD_START - timedelta(days=1)) for _ in range(2)]
    for csv_text in demo_rate_files():
        workers[0].load_rates(csv_text)
    logs = {source: ProducerLog(source) for source in ("orders", "dispatch", "callback")}
    orders = 6
    deliveries = [order_events(logs, index, orders, PARTNERS) for index in range(orders)]

    def handle(worker, source: str, name: str, envelope: dict) -> str:  # noqa: ANN001
        worker.clock.set(_at(envelope) + timedelta(seconds=5))
        return deliver(worker, getattr(SettlementService, name).handler, f"settlement.{name}",
                       source, envelope, attempts=1)

    for events in deliveries:
        for source, name, envelope in events[:2]:  # created, completed: the claim is open
            assert handle(workers[0], source, name, envelope) == "handled"
    unverified = []
    for events in deliveries:
        verified = events[2][2]
        p = verified["payload"]
        unverified.append(("callback", "on_order_unverified", logs["callback"].envelope(
            f"task-{p['task_id']}", 2, "order_unverified",
            {"task_id": p["task_id"], "order_id": p["order_id"], "partner_id": p["partner_id"],
             "attempts": 3}, _at(verified), p["order_id"])))

    monkeypatch.setattr(claims, "decide", slow_for_the_first_worker)

    def work(turn: int) -> list[str]:
        return [handle(workers[turn], *(deliveries[index][2] if turn == 0 else unverified[index]))
                for index in range(orders)]

    threads = [eventlet.spawn(work, turn) for turn in (0, 1)]
    outcomes = [outcome for thread in threads for outcome in thread.wait()]
    assert outcomes == ["handled"] * 2 * orders
    with workers[0].db.engine.connect() as conn:
        versions = conn.execute(text("SELECT version FROM claims")).scalars().all()
    assert versions == [3] * orders  # opened, then one decision each
    for worker in workers:
        worker.db.engine.dispose()
