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
