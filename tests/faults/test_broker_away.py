"""Scenario 2: the broker away mid-load. The services' connections cut at the TCP proxy for
longer than two heartbeats, then `rabbitmqctl close_all_connections` on the run's virtual
host (the broker is shared: never stop_app). The services reconnect by themselves."""

from __future__ import annotations

import time

from serviceloop.services import IMPLEMENTED
from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.conftest import HEARTBEAT
from tests.faults.load import Load
from tests.helpers import wait_until

LOAD_SECONDS = 12


def test_broker_cut_and_closed_connections_are_survived(system, world):
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        wanted = len(load.accepted) + system.rng.randint(2, 5)
        wait_until(lambda: len(load.accepted) >= wanted, timeout=60,
                   message="orders to be accepted")
        system.proxy.cut()
        wait_until(lambda: not any(system.live(s) for s in IMPLEMENTED), timeout=30,
                   message="every service to notice the broker is away")
        time.sleep(3 * HEARTBEAT)  # the fault's length, not a wait for anything
        system.proxy.restore()
        wanted = len(load.accepted) + system.rng.randint(2, 5)
        wait_until(lambda: len(load.accepted) >= wanted, timeout=90,
                   message="orders accepted again once the broker is back")
        system.close_broker_connections()
        load.intake_done()
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
