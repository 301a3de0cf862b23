"""Scenario 1: kill -9 each service, and a relay, at a random moment under load; `serviceloop
up` restarts it and nothing accepted is lost or applied twice."""

from __future__ import annotations

import signal

from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load
from tests.helpers import wait_until

VICTIMS = ("orders", "dispatch", "callback", "settlement", "dispatch-relay")
LOAD_SECONDS = 15


def test_killed_services_and_relay_restart_and_lose_nothing(system, world):
    restarted = []
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        for victim in system.rng.sample(VICTIMS, len(VICTIMS)):
            # a random moment: after a random number of further orders were accepted
            wanted = len(load.accepted) + system.rng.randint(1, 3)
            wait_until(lambda n=wanted: len(load.accepted) >= n, timeout=60,
                       message="orders to be accepted")
            old = system.signal(victim, signal.SIGKILL)
            system.restarted(victim, old)
            restarted.append(victim)
        load.intake_done()
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
    assert sorted(restarted) == sorted(VICTIMS)
