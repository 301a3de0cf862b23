"""Scenario 3: every connection of every service to PostgreSQL terminated mid-load
(pg_terminate_backend), several times; the services reconnect by themselves."""

from __future__ import annotations

from serviceloop.services import IMPLEMENTED
from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load
from tests.helpers import wait_until

LOAD_SECONDS = 12
ROUNDS = 3


def test_terminated_database_connections_are_reopened_and_lose_nothing(system, world):
    terminated = 0
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        for _ in range(ROUNDS):
            wanted = len(load.accepted) + system.rng.randint(2, 5)
            wait_until(lambda n=wanted: len(load.accepted) >= n, timeout=60,
                       message="orders to be accepted")
            terminated += sum(system.terminate_backends(s) for s in IMPLEMENTED)
        load.intake_done()
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
    assert terminated >= ROUNDS * len(IMPLEMENTED)  # each round cut every service's connections
