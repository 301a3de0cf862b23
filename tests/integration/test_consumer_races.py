"""Two workers of one service racing each other, on PostgreSQL.

Each handler reads the stream's version without a lock and appends after it, as the
services' consumers do. Both read before either commits, so one append loses the race: on
PostgreSQL it is held back to the COMMIT (serviceloop.db.hold_writes) and meets the log's
constraint there. Or each holds a lock the other asks for, and PostgreSQL ends one of them
(deadlock detected). The consumer policy runs the loser again on what is now committed,
without using up the attempts it keeps for handlers that fail; an RPC's transaction
(`transactional`) ended by a deadlock runs again too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import eventlet
from sqlalchemy import text

from serviceloop.clock import ManualClock
from serviceloop.consumer import deliver
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.nameko_deps import WorkerDatabase, transactional
from services.orders.projections import events

AT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
STREAM = "tally-1"
ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路9号",
           "lat": None, "lon": None}


def registered(name: str) -> NewEvent:
    return NewEvent("customer_registered", {"customer_id": f"c-{name}", "name": name,
                                            "phone": "13900000001", "address": ADDRESS})


class Tally:
    """A consumer whose handler appends one event to STREAM after the version it read."""

    name = "tally"

    def __init__(self, url: str) -> None:
        self.db = WorkerDatabase(make_engine(url, pool_size=1), EventStore(events))
        self.clock = ManualClock(AT)


def delivered(store_url: str, names: list[str]) -> list[dict]:
    """Envelopes of `names`' registrations, as a producer's relay would publish them."""
    engine = make_engine(store_url)
    with engine.begin() as conn:
        out = EventStore(events).append(
            conn, "producer-1", 0, [registered(name) for name in names], occurred_at=AT,
            correlation_id="c1", causation_id="t", actor="system")
    engine.dispose()
    return [envelope.to_dict() for envelope in out]


class Meeting:
    """The first two to arrive wait for each other; anyone later passes at once."""

    def __init__(self) -> None:
        self.arrived: list[int] = []
        self._both = eventlet.event.Event()

    def meet(self, who: int) -> None:
        if len(self.arrived) >= 2:
            return
        self.arrived.append(who)
        if len(self.arrived) == 2:
            self._both.send()
        self._both.wait()


def take_crosswise(conn, turn: int, base: int, meeting: Meeting) -> None:  # noqa: ANN001
    """Worker 0 takes lock base+1 then base+2, worker 1 base+2 then base+1; on their first
    run each holds its first lock when it asks for the second: PostgreSQL ends one of them."""
    first, second = (1, 2) if turn == 0 else (2, 1)
    lock = text("SELECT pg_advisory_xact_lock(:key)")
    conn.execute(lock, {"key": base + first})
    meeting.meet(turn)
    conn.execute(lock, {"key": base + second})


def racing_handler(meeting: Meeting):  # noqa: ANN201
    """Each worker's first run waits until both have read the version, then appends."""

    def handler(service: Tally, envelope) -> None:  # noqa: ANN001
        conn = service.db.conn
        version = service.db.store.stream_version(conn, STREAM)
        meeting.meet(version)
        service.db.store.append(conn, STREAM, version, [registered(envelope.payload["name"])],
                                occurred_at=AT, correlation_id=envelope.correlation_id,
                                causation_id=envelope.event_id, actor="system", chain=False)

    return handler


def test_the_worker_that_lost_the_race_runs_again_and_is_not_parked(database_for):
    url = database_for("orders", "postgres")
    workers = [Tally(url), Tally(url)]
    bodies = delivered(database_for("orders", "sqlite"), ["甲", "乙"])
    meeting = Meeting()
    handler = racing_handler(meeting)

    def work(turn: int) -> str:
        # one attempt: without the policy for lost races, the loser would be parked
        return deliver(workers[turn], handler, "tally.count", "orders", bodies[turn],
                       attempts=1, backoff=0.01)

    with eventlet.Timeout(30):
        outcomes = [thread.wait() for thread in [eventlet.spawn(work, t) for t in (0, 1)]]
    assert meeting.arrived == [0, 0]  # both read the stream before either appended
    assert outcomes == ["handled", "handled"]
    with workers[0].db.engine.connect() as conn:
        versions = conn.execute(text("SELECT stream_version, causation_id FROM events "
                                     "WHERE stream_id = :s ORDER BY stream_version"),
                                {"s": STREAM}).all()
        parked = conn.execute(text("SELECT COUNT(*) FROM parked_messages")).scalar()
        handled = conn.execute(text("SELECT COUNT(*) FROM inbox")).scalar()
    assert [v for v, _ in versions] == [1, 2]
    assert sorted(c for _, c in versions) == sorted(b["event_id"] for b in bodies)
    assert (parked, handled) == (0, 2)


def test_a_race_lost_every_time_is_parked_after_its_own_bound(database_for):
    url = database_for("orders", "postgres")
    worker = Tally(url)
    (body,) = delivered(database_for("orders", "sqlite"), ["丙"])
    tries = []

    def always_behind(service: Tally, envelope) -> None:  # noqa: ANN001
        tries.append(envelope.event_id)
        # an expected version the stream is never at: the append's conflict, every time
        service.db.store.append(service.db.conn, STREAM, 7, [registered(str(uuid.uuid4()))],
                                occurred_at=AT, correlation_id=envelope.correlation_id,
                                causation_id=envelope.event_id, actor="system", chain=False)

    outcome = deliver(worker, always_behind, "tally.count", "orders", body, attempts=2,
                      backoff=0.001, conflicts=3)
    assert outcome == "parked"
    assert len(tries) == 3 + 2  # the lost races, then the attempts
    with worker.db.engine.connect() as conn:
        row = conn.execute(text("SELECT attempts, error FROM parked_messages")).one()
        logged = conn.execute(text("SELECT COUNT(*) FROM events WHERE stream_id = :s"),
                              {"s": STREAM}).scalar()
    assert row.attempts == 5 and "IntegrityError" in row.error
    assert logged == 0


def test_the_worker_postgres_chose_to_end_a_deadlock_runs_again(database_for):
    url = database_for("orders", "postgres")
    workers = [Tally(url), Tally(url)]
    bodies = delivered(database_for("orders", "sqlite"), ["丁", "戊"])
    meeting = Meeting()

    def crossed(service: Tally, envelope) -> None:  # noqa: ANN001
        turn = workers.index(service)
        take_crosswise(service.db.conn, turn, 7_000, meeting)
        service.db.store.append(service.db.conn, f"tally-{turn}", 0,
                                [registered(envelope.payload["name"])], occurred_at=AT,
                                correlation_id=envelope.correlation_id,
                                causation_id=envelope.event_id, actor="system", chain=False)

    def work(turn: int) -> str:
        return deliver(workers[turn], crossed, "tally.count", "orders", bodies[turn],
                       attempts=1, backoff=0.01)

    with eventlet.Timeout(30):
        outcomes = [thread.wait() for thread in [eventlet.spawn(work, t) for t in (0, 1)]]
    assert sorted(meeting.arrived) == [0, 1]
    assert outcomes == ["handled", "handled"]
    with workers[0].db.engine.connect() as conn:
        logged = conn.execute(text("SELECT COUNT(*) FROM events WHERE stream_id LIKE 'tally-%'"))
        parked = conn.execute(text("SELECT COUNT(*) FROM parked_messages")).scalar()
        assert (logged.scalar(), parked) == (2, 0)


def test_an_rpc_transaction_postgres_chose_to_end_a_deadlock_runs_again(database_for):
    url = database_for("orders", "postgres")
    runs: list[int] = []
    meeting = Meeting()

    class Finance(Tally):
        @transactional
        def decide(self, turn: int) -> int:
            runs.append(turn)
            take_crosswise(self.db.conn, turn, 8_000, meeting)
            self.db.store.append(self.db.conn, f"rpc-{turn}", 0, [registered(str(turn))],
                                 occurred_at=AT, correlation_id="c", causation_id="cmd",
                                 actor="system", chain=False)
            return turn

    workers = [Finance(url), Finance(url)]
    with eventlet.Timeout(30):
        answers = [thread.wait() for thread in
                   [eventlet.spawn(workers[t].decide, t) for t in (0, 1)]]
    assert answers == [0, 1]
    assert len(runs) == 3 and set(runs) == {0, 1}  # the one PostgreSQL ended ran twice
    with workers[0].db.engine.connect() as conn:
        logged = conn.execute(text("SELECT COUNT(*) FROM events WHERE stream_id LIKE 'rpc-%'"))
        assert logged.scalar() == 2
