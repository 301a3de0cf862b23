"""Who consumes which event: the broker topology `serviceloop migrate` declares up front.

Each entry names the nameko method that handles it, so the queue declared here is
exactly the one nameko's service-pool `@event_handler` consumes from.
"""

from __future__ import annotations

from typing import NamedTuple


class Subscription(NamedTuple):
    source: str
    event_type: str
    consumer: str
    method: str


# Filled in as consuming services land (dispatch follows orders, callback follows dispatch …).
SUBSCRIPTIONS: list[Subscription] = []
