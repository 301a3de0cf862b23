"""Scenario 6: consumers started only after their producers published. callback and
settlement are down (and kept down) while orders are opened and completed; the queues
declared by `serviceloop migrate` hold callback's messages, and settlement's are purged, so
only its catch-up through the producers' logs can bring them. Then both start."""

from __future__ import annotations

import signal

from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load
from tests.helpers import wait_until

LOAD_SECONDS = 8
LATE = ("callback", "settlement")


def test_consumers_started_after_their_producers_published_get_everything(system, world):
    with Load(system, world) as load:
        with system.supervisor_paused():
            for consumer in LATE:
                system.signal(consumer, signal.SIGKILL)
            load.open_orders(LOAD_SECONDS)
            load.intake_done()
            wait_until(lambda: set(load.accepted) <= load.completed, timeout=90,
                       message="partners to complete every order while callback is down")
            waiting = system.queues()
            purged = system.purge_queues_of("settlement")
        assert waiting["evt-dispatch-order_completed--callback.on_order_completed"] >= \
            len(load.accepted) > 0
        assert purged and not any(system.queues()[q] for q in purged)
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
