"""Scenario 1 at exact moments: every service killed (SIGKILL) between its commit and its
answer (an RPC's reply, a consumer's acknowledgement) and in the middle of a consumer's
transaction, every relay between the broker's confirms of a window and recording how far it
got (serviceloop/crashpoints.py); `serviceloop up` restarts each and nothing accepted is lost
or applied twice."""

from __future__ import annotations

from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load
from tests.helpers import wait_until

SERVICES = ("orders", "dispatch", "callback", "settlement")
POINTS = (*(f"{service}.{moment}" for service in SERVICES
            for moment in ("mid_consumer", "after_commit")),
          *(f"{service}-relay.after_publish" for service in SERVICES))
LOAD_SECONDS = 20


def test_processes_killed_at_exact_moments_lose_nothing(system, world):
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        wait_until(lambda: len(load.accepted) >= 2, timeout=60, message="orders to flow")
        for point in POINTS:
            system.arm(point)
        wait_until(lambda: not any(system.armed(point) for point in POINTS), timeout=150,
                   interval=0.5, message="a process to reach every armed point")
        wait_until(lambda: len(system.processes()) == 2 * len(SERVICES), timeout=60,
                   interval=0.5, message="every process restarted")
        load.intake_done()
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
