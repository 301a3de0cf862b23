"""Connections PostgreSQL dropped: one that lay in the pool is replaced at checkout, without a
round trip while it is healthy; one dropped in use says "try again" as a typed error, once,
and an entrypoint that only reads (`retried_read`) runs again instead."""

from __future__ import annotations

import pytest
from nameko.exceptions import IncorrectSignature
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import create_engine, text

from contracts.errors import ServiceUnavailable
from serviceloop.db import fetch_rows, make_engine
from serviceloop.entrypoints import rpc
from serviceloop.nameko_deps import RUNS, Database, retried_read
from serviceloop.unit_of_work import UnitOfWork, read_only
from services.orders.projections import metadata
from tests.conftest import POSTGRES_ADMIN_URL


def terminate_backends(url: str, pid: int | None = None) -> int:
    """Terminate every backend of the database (or only `pid`), each waited for until it has
    exited (and its last words are on the client's socket): a bare pg_terminate_backend only
    signals it. Returns how many were terminated."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dropped = conn.execute(text("SELECT COUNT(pg_terminate_backend(pid, 10000)) FROM "
                                    "pg_stat_activity WHERE datname = :d "
                                    "AND (CAST(:p AS integer) IS NULL OR pid = :p)"),
                               {"d": url.rsplit("/", 1)[1], "p": pid}).scalar()
    admin.dispose()
    return dropped


def backend_pids(engine) -> set[int]:  # noqa: ANN001
    with read_only(engine) as conn:
        return {conn.execute(text("SELECT pg_backend_pid()")).scalar()}


@pytest.fixture
def url(database_for) -> str:
    return database_for("orders", "postgres")


def test_connections_dropped_in_the_pool_are_replaced_before_anyone_uses_them(url):
    engine = make_engine(url, pool_size=4)
    pooled = [engine.connect() for _ in range(4)]  # four pooled connections, all used once
    for conn in pooled:
        conn.execute(text("SELECT 1"))
    for conn in pooled:
        conn.close()
    before = backend_pids(engine)
    assert terminate_backends(url) == 4
    # every kind of use after it works at once: a read, a driver-level read, a unit of work
    with read_only(engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 0
    with read_only(engine) as conn:
        assert fetch_rows(conn, "SELECT COUNT(*) FROM events") == [(0,)]
    unit = UnitOfWork(engine)
    assert unit.conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 0
    unit.commit()
    assert backend_pids(engine).isdisjoint(before)  # on new connections
    engine.dispose()


def test_a_connection_dropped_in_use_is_unavailable_once_then_reads_again(url):
    engine = make_engine(url, pool_size=2)
    with pytest.raises(ServiceUnavailable) as unavailable:
        with read_only(engine) as conn:  # checked out alive, then the database drops it
            conn.execute(text("SELECT 1"))
            assert terminate_backends(url) == 1
            conn.execute(text("SELECT COUNT(*) FROM events"))
    assert unavailable.value.code == "unavailable"
    assert "terminat" not in str(unavailable.value)  # not the driver's text
    with read_only(engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 0
    engine.dispose()


def test_a_healthy_pooled_connection_is_handed_out_as_it_is(url):
    engine = make_engine(url, pool_size=1)
    first = backend_pids(engine)
    with read_only(engine) as conn:  # a transaction left open would show as one here
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert backend_pids(engine) == first  # the same connection: nothing made it look dead
    engine.dispose()


class Reader:
    """Counts the orders log's events; its database drops the connection of each of the
    first `drops` runs while the run holds it (the backends of each run it recorded)."""

    name = "dropped_reader"
    db = Database("orders", metadata)
    drops = 0
    runs: list[int] = []

    def _count(self) -> int:
        with self.db.reader() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            type(self).runs.append(backend)
            if len(self.runs) <= self.drops:
                assert terminate_backends(str(self.db.engine.url), backend) == 1
            return conn.execute(text("SELECT COUNT(*) FROM events")).scalar()

    @rpc
    @retried_read
    def count_again(self) -> int:
        return self._count()

    @rpc
    def count_once(self) -> int:
        return self._count()


@pytest.fixture
def reader(container_factory, service_config, url):
    def start(drops: int) -> ServiceRpcProxy:
        Reader.drops, Reader.runs = drops, []
        container = container_factory(Reader, service_config(orders=url))
        container.start()
        return ServiceRpcProxy(Reader.name, container.config, timeout=20)

    return start


def test_a_read_whose_connection_is_dropped_in_use_runs_again_on_a_fresh_one(reader):
    with reader(drops=1) as proxy:
        assert proxy.count_again() == 0
    first, second = Reader.runs
    assert first != second  # the second run read on a new backend


def test_its_arguments_are_still_checked_against_the_method(reader):
    with reader(drops=0) as proxy, pytest.raises(IncorrectSignature):
        proxy.count_again(1)
    assert Reader.runs == []


def test_a_read_dropped_on_every_run_answers_unavailable_after_the_last(reader):
    with reader(drops=RUNS) as proxy, pytest.raises(ServiceUnavailable) as unavailable:
        proxy.count_again()
    assert unavailable.value.code == "unavailable"
    assert len(Reader.runs) == RUNS == len(set(Reader.runs))


def test_without_it_a_dropped_read_answers_unavailable_at_once(reader):
    with reader(drops=1) as proxy, pytest.raises(ServiceUnavailable) as unavailable:
        proxy.count_once()
    assert unavailable.value.code == "unavailable"
    assert len(Reader.runs) == 1
