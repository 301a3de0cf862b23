"""A service does not hold a burst's PostgreSQL connections for its life: the pool closes
those idle for a while (serviceloop.db.IdleConnections, run by nameko_deps.Database)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from serviceloop.db import IdleConnections, fetch_rows, make_engine
from serviceloop.nameko_deps import Database
from services.orders.service import OrdersService
from tests.conftest import _admin
from tests.helpers import wait_until

pytestmark = pytest.mark.parametrize("backend", ["postgres"])


def alive(pids: list[int]) -> set[int]:
    """Which of these backends are still connected. A backend leaves pg_stat_activity a
    moment after its client closes the connection: wait for that (`gone_but`), not this."""
    admin = _admin()
    try:
        with admin.connect() as conn:
            found = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                                 {"pids": pids})
            return {row[0] for row in found}
    finally:
        admin.dispose()


def gone_but(pids: list[int], kept: set[int]) -> None:
    """Wait until, of `pids`, only `kept` are still connected (closed ones go soon)."""
    wait_until(lambda: alive(pids) == kept, timeout=10,
               message=f"only {sorted(kept)} of {sorted(pids)} to be connected")


def burst(engine, size: int) -> list[int]:  # noqa: ANN001
    """`size` connections in use at once, then returned in order: their backends' pids."""
    taken = [engine.connect() for _ in range(size)]
    pids = [fetch_rows(conn, "SELECT pg_backend_pid()")[0][0] for conn in taken]
    for conn in taken:
        conn.close()
    return pids


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool(orders_url):
    engine = make_engine(orders_url, pool_size=6)  # and 4 more as overflow
    clock = Clock()
    yield engine, IdleConnections(engine, clock), clock
    engine.dispose()


def test_a_bursts_connections_are_closed_once_idle_but_the_last_returned(pool):
    engine, idle, clock = pool
    pids = burst(engine, 6)
    assert alive(pids) == set(pids) and idle.idle() == 6
    with engine.connect() as conn:  # light load: the one returned last, again and again
        assert fetch_rows(conn, "SELECT pg_backend_pid()") == [(pids[-1],)]
    clock.now += 59
    assert idle.close(60, keep=2) == 0  # not idle long enough
    assert alive(pids) == set(pids)
    clock.now += 1
    assert idle.close(60, keep=2) == 4
    gone_but(pids, set(pids[-2:]))  # the two returned last are kept
    assert idle.idle() == 2
    # the next burst connects again where it needs to, and the pool works as before
    again = burst(engine, 6)
    assert len(alive(again)) == 6 and set(pids[-2:]) <= set(again)
    assert idle.idle() == 6


def test_a_connection_in_use_or_used_lately_is_not_closed(pool):
    engine, idle, clock = pool
    burst(engine, 4)
    clock.now += 120
    with engine.connect() as held:  # taken from the idle ones: in use now
        pid = fetch_rows(held, "SELECT pg_backend_pid()")[0][0]
        assert idle.close(60, keep=0) == 3
        assert alive([pid]) == {pid}
        assert fetch_rows(held, "SELECT 1") == [(1,)]
    assert idle.close(60, keep=0) == 0  # just returned: not idle yet
    clock.now += 60
    assert idle.close(60, keep=0) == 1
    gone_but([pid], set())


def test_overflow_connections_closed_by_the_pool_are_not_counted(pool):
    engine, idle, clock = pool
    pids = burst(engine, 9)  # 6 kept by the pool, 3 overflow closed as they come back
    wait_until(lambda: len(alive(pids)) == 6, timeout=10, message="the overflow to close")
    assert idle.idle() == 6
    clock.now += 60
    assert idle.close(60, keep=1) == 5


def test_a_running_service_closes_its_idle_connections_by_itself(
        container_factory, service_config, orders_url):
    config = {**service_config(orders=orders_url), "DB_IDLE_SECONDS": 0.5,
              "DB_KEEP_CONNECTIONS": 1}
    container = container_factory(OrdersService, config)
    container.start()
    database = next(ext for ext in container.extensions if isinstance(ext, Database))
    pids = burst(database.engine, 5)
    assert alive(pids) == set(pids)
    wait_until(lambda: alive(pids) == {pids[-1]}, timeout=15,
               message="the service to close all but its last used connection")
