"""Scenario 7: a consumer frozen (SIGSTOP) for longer than two AMQP heartbeats while a second
process of the same service runs. The broker drops the frozen one's connection and gives its
unacknowledged messages to the other; let go (SIGCONT), it reconnects by itself, and whatever
it was in the middle of commits late and changes nothing."""

from __future__ import annotations

import signal

from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.conftest import HEARTBEAT
from tests.faults.load import Load
from tests.helpers import wait_until

LOAD_SECONDS = 10
FROZEN = "settlement"


def waiting_for(system, service: str) -> int:  # noqa: ANN001
    return sum(n for queue, n in system.queues().items()
               if queue.split("--")[-1].startswith(f"{service}."))


def test_a_frozen_consumer_is_replaced_and_its_late_commit_changes_nothing(system, world):
    with system.replica(FROZEN), Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        wanted = len(load.accepted) + system.rng.randint(2, 5)
        wait_until(lambda: len(load.completed) >= wanted, timeout=60,
                   message="orders to be completed")
        system.signal(FROZEN, signal.SIGSTOP)
        try:
            wait_until(lambda: not system.live(FROZEN), timeout=30,
                       message="the frozen consumer to stop answering")
            # its unacknowledged messages go to the other process once the broker has missed
            # two heartbeats; in the meantime more orders are completed
            wanted = len(load.completed) + 3
            wait_until(lambda: len(load.completed) >= wanted and not waiting_for(system, FROZEN),
                       timeout=15 * HEARTBEAT, interval=0.5,
                       message="the other settlement to take every message")
        finally:
            system.signal(FROZEN, signal.SIGCONT)
        load.intake_done()
        wait_until(lambda: system.live(FROZEN), timeout=60,
                   message="the frozen consumer to reconnect by itself")
        assert_nothing_lost_or_doubled(system, load)
