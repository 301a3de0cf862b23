"""Scenario 1: kill -9 each service and each relay at a random moment under load (a relay
killed between its log's commit and its publish, or between a publish and recording how far
it got); `serviceloop up` restarts it and nothing accepted is lost or applied twice."""

from __future__ import annotations

import signal

from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load
from tests.helpers import wait_until

SERVICES = ("orders", "dispatch", "callback", "settlement")
VICTIMS = (*SERVICES, *(f"{service}-relay" for service in SERVICES))
LOAD_SECONDS = 45  # at most: the intake stops once every victim was killed and restarted


def test_killed_services_and_relay_restart_and_lose_nothing(system, world):
    restarted = []
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        for victim in system.rng.sample(VICTIMS, len(VICTIMS)):
            # a random moment: after a random number of further orders were accepted
            # (on a slow machine the intake may end first: the loop's later stages still run)
            wanted = len(load.accepted) + system.rng.randint(1, 2)
            wait_until(lambda n=wanted: len(load.accepted) >= n or not load.intake_open(),
                       timeout=60, message="orders to be accepted")
            old = system.signal(victim, signal.SIGKILL)
            system.restarted(victim, old)
            restarted.append(victim)
        load.stop_intake()
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
    assert sorted(restarted) == sorted(VICTIMS)
