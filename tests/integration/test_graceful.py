"""Graceful behaviour of the services as real `nameko run` processes on PostgreSQL and
RabbitMQ: SIGTERM with a worker in flight, a caller of a service that is down, a poison
message, and the gateway without its database.

A worker is held in flight by holding the log's append lock (the PostgreSQL advisory lock
every append takes), or a table it reads before its last round trip, from the test, so the
moment SIGTERM or SIGKILL arrives is chosen, not guessed.
Settlement's envelopes are the benchmark's (`bench.settlement.order_events`): contract-valid
`order_created` and `order_completed` for one repair, published as the producers' relays do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pika
import pytest
from nameko.exceptions import RpcTimeout
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import create_engine, func, select, text

from bench.settlement import ProducerLog, order_events
from serviceloop.client import cluster
from serviceloop.consumer import DEFAULT_ATTEMPTS, queue_name
from serviceloop.eventstore import APPEND_LOCK_KEY
from serviceloop.relay import event_exchange, message_properties
from serviceloop.services import SERVICE_CLASSES
from services.settlement.projections import claims, order_facts
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import queue_drained, wait_until
from tests.integration.dispatch_system import DispatchSystem, declare, free_port

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "serviceloop.cli"]
NAMEKO = os.path.join(os.path.dirname(sys.executable), "nameko")
COMPLETIONS = queue_name("dispatch", "order_completed", "settlement", "on_order_completed")
CREATIONS = queue_name("orders", "order_created", "settlement", "on_order_created")


class ServiceProcess:
    """One service as `serviceloop up` runs it: `nameko run` with the project's config."""

    def __init__(self, service: str, env: dict) -> None:
        self.service = service
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        self.process = subprocess.Popen(
            [NAMEKO, "run", "--config", "config.yaml", SERVICE_CLASSES[self.service]],
            cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.answers, timeout=60, interval=0.2, message=f"{self.service} to answer")
        return self

    def answers(self) -> bool:
        try:
            with ServiceRpcProxy(self.service, {"AMQP_URI": self.env["AMQP_URI"]},
                                 timeout=2) as proxy:
                return proxy.log_head() is not None
        except Exception:  # noqa: BLE001 - not up yet
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a supervisor (`serviceloop up`, Kubernetes) stops it; the exit code."""
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.running:
            self.signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def services(broker_uri, database_for):
    """`services(name)` -> a started ServiceProcess on a fresh PostgreSQL database."""
    declare(broker_uri)
    _purge(broker_uri, COMPLETIONS, CREATIONS)
    started: list[ServiceProcess] = []

    def start(service: str, **extra: str) -> ServiceProcess:
        env = {**os.environ, "AMQP_URI": broker_uri,
               f"DATABASE_URL_{service.upper()}": database_for(service, "postgres"),
               "WEB_SERVER_PORT": str(free_port()), "CATCH_UP_INTERVAL": "3600",
               "LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore", **extra}
        started.append(ServiceProcess(service, env).start())
        return started[-1]

    yield start
    for process in started:
        process.close()


# -- the broker and the database, from outside ---------------------------------------------


def publish(broker_uri: str, source: str, body: dict) -> None:
    """As `source`'s relay does: its exchange, routing key the event type, confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(event_exchange(source), body["event_type"], json.dumps(body).encode(),
                          message_properties(body))
    connection.close()


def queue_state(broker_uri: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of `queue`; a message delivered but not acked is not ready."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return declared.method.message_count, declared.method.consumer_count
    finally:
        connection.close()


def _purge(broker_uri: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    for queue in queues:
        channel.queue_purge(queue)
    connection.close()


@contextmanager
def append_lock_held(database_url: str):
    """Hold the log's append lock: every worker that appends waits, in flight, until exit."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": APPEND_LOCK_KEY})
        try:
            yield lambda: _waiting_for_the_lock(conn)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": APPEND_LOCK_KEY})
    engine.dispose()


@contextmanager
def reads_blocked(database_url: str, table: str):
    """Hold `table` locked against reads: a worker that reads it waits, in flight before the
    round trip that carries its writes and COMMIT, until exit."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield lambda: conn.execute(text(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'relation' AND NOT granted "
                "AND relation = CAST(:t AS regclass)"), {"t": table}).scalar()
        finally:
            conn.rollback()
    engine.dispose()


def _waiting_for_the_lock(conn) -> int:  # noqa: ANN001
    return conn.execute(text(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )).scalar()


@contextmanager
def database_refused(database_url: str):
    """The database refuses new connections and drops the open ones, until exit."""
    database = database_url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :d"), {"d": database})
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def claims_of(database_url: str) -> dict[str, int]:
    """order_id -> how many claims settlement opened for it."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(claims.c.order_id, func.count())
                            .group_by(claims.c.order_id)).all()
    engine.dispose()
    return dict(rows)


def facts_recorded(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(order_facts)).scalar()
    engine.dispose()
    return count


def repairs(count: int) -> list[dict[str, dict]]:
    """`count` repairs' envelopes by handler: on_order_created, on_order_completed."""
    logs = {source: ProducerLog(source) for source in ("orders", "dispatch", "callback")}
    return [{name: envelope for _, name, envelope in order_events(logs, index, count, 1)}
            for index in range(count)]


def known_to_settlement(broker_uri: str, url: str, orders: list[dict[str, dict]]) -> None:
    for order in orders:
        publish(broker_uri, "orders", order["on_order_created"])
    wait_until(lambda: facts_recorded(url) == len(orders), message="the orders' facts")


def order_id(order: dict[str, dict]) -> str:
    return order["on_order_created"]["payload"]["order_id"]


# -- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_lets_the_worker_in_flight_finish_and_acknowledges_only_that(services,
                                                                            broker_uri):
    settlement = services("settlement")
    url = settlement.env["DATABASE_URL_SETTLEMENT"]
    first, second = orders = repairs(2)
    known_to_settlement(broker_uri, url, orders)
    with append_lock_held(url) as waiting:
        publish(broker_uri, "dispatch", first["on_order_completed"])
        wait_until(waiting, message="the completion's worker to be in flight")
        settlement.signal(signal.SIGTERM)
        wait_until(lambda: queue_state(broker_uri, COMPLETIONS)[1] == 0,
                   message="settlement to stop consuming")
        publish(broker_uri, "dispatch", second["on_order_completed"])
        assert settlement.running  # waiting for its worker, which waits for the lock
    assert settlement.process.wait(30) == 0
    # the worker finished: its claim committed and its message acknowledged; the message
    # that arrived after SIGTERM is untouched, still in the queue
    assert claims_of(url) == {order_id(first): 1}
    assert queue_state(broker_uri, COMPLETIONS) == (1, 0)

    settlement.start()
    wait_until(lambda: claims_of(url) == {order_id(first): 1, order_id(second): 1},
               message="the second claim after the restart")
    wait_until(lambda: queue_state(broker_uri, COMPLETIONS)[0] == 0, message="a drained queue")
    assert claims_of(url) == {order_id(first): 1, order_id(second): 1}


def test_a_worker_killed_before_it_finished_is_redelivered_and_applied_once(services,
                                                                           broker_uri):
    settlement = services("settlement")
    url = settlement.env["DATABASE_URL_SETTLEMENT"]
    (order,) = repairs(1)
    known_to_settlement(broker_uri, url, [order])
    # held at its read of the rate cards: its writes and COMMIT (which wait for the log's
    # lock in one round trip) are not sent yet
    with reads_blocked(url, "rate_cards") as waiting:
        publish(broker_uri, "dispatch", order["on_order_completed"])
        wait_until(waiting, message="the completion's worker to be in flight")
        settlement.signal(signal.SIGTERM)
        wait_until(lambda: queue_state(broker_uri, COMPLETIONS)[1] == 0,
                   message="settlement to stop consuming")
        # the worker outlives the grace period: the supervisor kills the process
        settlement.signal(signal.SIGKILL)
        settlement.process.wait(10)
        wait_until(lambda: queue_state(broker_uri, COMPLETIONS)[0] == 1,
                   message="the unfinished message back in the queue")
    assert claims_of(url) == {}

    settlement.start()
    wait_until(lambda: claims_of(url) == {order_id(order): 1}, message="the claim")
    wait_until(lambda: queue_state(broker_uri, COMPLETIONS)[0] == 0, message="a drained queue")
    publish(broker_uri, "dispatch", order["on_order_completed"])  # and once more, late
    wait_until(lambda: queue_drained(broker_uri, COMPLETIONS), message="the copy acknowledged")
    assert claims_of(url) == {order_id(order): 1}


# -- callers of a service that is down -------------------------------------------------------


def test_a_caller_of_a_stopped_service_gets_a_timeout_error_not_a_hang(services, broker_uri,
                                                                       monkeypatch):
    monkeypatch.setenv("AMQP_URI", broker_uri)
    settlement = services("settlement")
    with cluster(timeout=2) as rpc:
        assert rpc.settlement.log_head()["position"] == 0
    assert settlement.stop() == 0
    started = time.monotonic()
    with pytest.raises(RpcTimeout), cluster(timeout=2) as rpc:
        rpc.settlement.log_head()
    assert 2 <= time.monotonic() - started < 6


# -- poison messages ----------------------------------------------------------------------


def test_a_poison_message_is_parked_after_bounded_tries_shown_to_the_operator_and_replayed(
        services, broker_uri):
    settlement = services("settlement")
    url = settlement.env["DATABASE_URL_SETTLEMENT"]
    (order,) = repairs(1)
    env = settlement.env

    def parked(*args: str, exit_code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run([*CLI, "parked", "settlement", *args], env=env, timeout=60,
                                capture_output=True, text=True)
        assert result.returncode == exit_code, result.stderr
        return result

    # a completion for an order settlement has never heard of fails every time
    completion = order["on_order_completed"]
    publish(broker_uri, "dispatch", completion)
    (shown,) = wait_until(lambda: json.loads(parked("--json").stdout),
                          message="the message to be parked")
    assert (shown["event_id"], shown["consumer"], shown["attempts"]) == (
        completion["event_id"], "settlement.on_order_completed", DEFAULT_ATTEMPTS)
    assert "RetryLater" in shown["error"]
    assert queue_state(broker_uri, COMPLETIONS) == (0, 1)  # not looping on the broker
    assert claims_of(url) == {}

    # the operator hands it back while its cause is still there: parked again, not lost
    assert parked("--replay", str(shown["id"])).stdout.strip() == "parked"
    (again,) = json.loads(parked("--json").stdout)
    assert again["id"] != shown["id"] and again["event_id"] == completion["event_id"]
    assert claims_of(url) == {}

    # the order settlement was waiting for arrives: the message is handed back, once
    known_to_settlement(broker_uri, url, [order])
    wait_until(lambda: claims_of(url) == {order_id(order): 1}, message="the claim")
    wait_until(lambda: json.loads(parked("--json").stdout) == [],
               message="nothing left parked")
    refused = parked("--replay", str(again["id"]), exit_code=2)
    assert json.loads(refused.stderr)["error"]["code"] == "not_found"
    assert claims_of(url) == {order_id(order): 1}


# -- the gateway without its database ----------------------------------------------------


def test_the_gateway_answers_503_with_retry_after_and_only_a_correlation_id(services):
    dispatch = services("dispatch", GATEWAY_RATE_PER_SECOND="1000")
    base_url = f"http://127.0.0.1:{dispatch.env['WEB_SERVER_PORT']}"
    with ServiceRpcProxy("dispatch", {"AMQP_URI": dispatch.env["AMQP_URI"]},
                         timeout=20) as rpc:
        gateway = DispatchSystem(None, rpc, base_url, None)
        partner = gateway.register_partner()
        assert gateway.signed(partner, "GET", "/api/v1/orders").status_code == 200
        with database_refused(dispatch.env["DATABASE_URL_DISPATCH"]):
            answer = gateway.signed(partner, "GET", "/api/v1/orders")
            post = gateway.signed(partner, "POST", "/api/v1/orders/o-1/accept", {}, key="k-1")
        for refused in (answer, post):
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            error = refused.json()["error"]
            assert error["code"] == "unavailable"
            assert error["correlation_id"] == refused.headers["X-Correlation-Id"]
            for leaked in ("psycopg2", "OperationalError", "Traceback", "connections"):
                assert leaked not in refused.text
        wait_until(lambda: gateway.signed(partner, "GET", "/api/v1/orders").status_code == 200,
                   message="the gateway to answer again once the database is back")
        gateway.session.close()
