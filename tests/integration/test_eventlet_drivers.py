"""Under eventlet, the PostgreSQL driver must let other green threads run while it waits."""

from __future__ import annotations

import eventlet
import pytest
from sqlalchemy import Engine, create_engine, text

from serviceloop.db import make_engine
from tests.conftest import POSTGRES_ADMIN_URL


def ticks_during_a_slow_query(engine: Engine) -> int:
    """How often another green thread ran while one waited on `pg_sleep(0.3)`."""
    ticks = 0
    done = eventlet.event.Event()

    def ticker() -> None:
        nonlocal ticks
        while not done.ready():
            ticks += 1
            eventlet.sleep(0.01)

    thread = eventlet.spawn(ticker)
    eventlet.sleep(0)  # let the ticker start before the query blocks (or not)
    ticks = 0
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.3)"))
    done.send(True)
    thread.wait()
    engine.dispose()
    return ticks


def test_psycopg2_waits_cooperatively():
    assert ticks_during_a_slow_query(make_engine(POSTGRES_ADMIN_URL)) >= 5


def test_psycopg3_blocks_the_hub_which_is_why_serviceloop_does_not_use_it():
    pytest.importorskip("psycopg")
    engine = create_engine(POSTGRES_ADMIN_URL.replace("+psycopg2", "+psycopg"))
    assert ticks_during_a_slow_query(engine) <= 1
