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
COMPLETIONS = "evt-dispatch-order_completed--callback.on_order_completed"


def test_consumers_started_after_their_producers_published_get_everything(system, world):
    with Load(system, world) as load:
        with system.supervisor_paused():
            for consumer in LATE:
                system.signal(consumer, signal.SIGKILL)
            load.open_orders(LOAD_SECONDS)
            load.intake_done()
            wait_until(lambda: set(load.accepted) <= load.completed, timeout=90,
                       message="partners to complete every order while callback is down")
            # dispatch's relay publishes a moment after the gateway answered: wait for the
            # last completion to be queued (in log order, so everything before it is too)
            waiting = wait_until(
                lambda: [q for q in [system.queues()] if q.get(COMPLETIONS, 0)
                         >= len(load.accepted)],
                timeout=60, message="every completion queued for the stopped callback")[0]
            # settlement's queues emptied, and still empty when looked at again (the relays
            # may still be publishing the last events: purge until nothing more comes)
            purged = wait_until(lambda: [names for names in [system.purge_queues_of("settlement")]
                                         if not any(system.queues()[q] for q in names)],
                                timeout=60, message="settlement's queues to stay empty")[0]
        assert waiting[COMPLETIONS] >= len(load.accepted) > 0
        assert purged
        system.wait_ready()
        assert_nothing_lost_or_doubled(system, load)
