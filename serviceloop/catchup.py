"""Catching up through a producer's log, so the broker is transport and never the ledger.

An event published before its consumer's queue existed, or lost between broker and
consumer, is still in the producer's log. A consuming service mixes in `CatchUp`: on a
timer it reads each producer it subscribes to through that producer's
`events_since(position, limit, event_types=…)` RPC from where it last got to (only the
types it subscribes to), hands every subscribed event its inbox has not seen to the same
`deliver` policy as broker messages, and records how far it got.

In steady state the broker has delivered almost every event first, so the inbox is asked
about a whole page at once (one query per handler) and only the rest is delivered: each
sighting delivered again cost a transaction (its check and a ROLLBACK) and the envelope's
and payload's validation, twice the consumers' work in the loop bench.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable

from nameko.extensions import DependencyProvider
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.timer import Timer

from serviceloop.client import quiet_returned_publish_acks
from serviceloop.clock import isoformat
from serviceloop.consumer import deliver, handled_among, subscribed_handlers
from serviceloop.db import read_position, save_position
from serviceloop.observability import log_context

log = logging.getLogger(__name__)

CATCH_UP_INTERVAL = float(os.environ.get("CATCH_UP_INTERVAL", "2.0"))
PAGE = 500
# a producer answers a page well within this; a stopped one is given up on after it
CATCH_UP_RPC_TIMEOUT = float(os.environ.get("CATCH_UP_RPC_TIMEOUT", "3.0"))
BROKER = "its producers through the broker"  # a pass that could not even ask


class ProducerTrouble:
    """The producers a consumer could not catch up with, so that a producer away for a while
    is one warning when it goes (and one every REPEAT_WARNING_S while it stays away), not one
    every pass, and an info line when it answers again."""

    REPEAT_WARNING_S = 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failing: dict[str, list] = {}  # source -> [failed passes, last warned at]

    def failed(self, consumer: str, source: str, error: Exception) -> None:
        now = self.clock()
        failing = self.failing.setdefault(source, [0, None])
        failing[0] += 1
        if failing[1] is None or now - failing[1] >= self.REPEAT_WARNING_S:
            failing[1] = now
            log.warning("%s could not catch up with %s (%d pass%s failed): %s", consumer,
                        source, failing[0], "" if failing[0] == 1 else "es", error)

    def answered(self, consumer: str, source: str) -> None:
        failing = self.failing.pop(source, None)
        if failing is not None:
            log.info("%s catches up with %s again, after %d failed pass%s", consumer, source,
                     failing[0], "" if failing[0] == 1 else "es")


def catch_up(service, producers: ProducerLogs) -> int:  # noqa: ANN001
    """Deliver every subscribed event the service has not reached yet; returns how many.

    A producer that does not answer is left for the next pass, the others are still read,
    over a new proxy (the old one's connection may be what failed); once
    `producers.stopping()` says the service is shutting down, no producer is asked again;
    the producers that did not answer are told to `producers.trouble`."""
    delivered = 0
    for source, by_type in subscribed_handlers(type(service)).items():
        try:
            delivered += _catch_up_with(service, producers.rpc(), source, by_type,
                                        producers.stopping)
        except Exception as error:  # a producer down or slow: the next pass tries again
            log_context(actor="system")  # about the pass, not the last event it handled
            producers.renew()
            producers.trouble.failed(service.name, source, error)
        else:
            producers.trouble.answered(service.name, source)
    return delivered


def _catch_up_with(service, rpc, source: str, by_type: dict, stopping) -> int:  # noqa: ANN001
    delivered = 0
    with service.db.reader() as conn:
        position = read_position(conn, "consumer_positions", source)
    kinds = sorted(by_type)
    while not stopping():
        page = getattr(rpc, source).events_since(position, PAGE, event_types=kinds)
        deliveries = [(f"{service.name}.{name}", handler, body) for body in page
                      for name, handler in by_type.get(body["event_type"], ())]
        seen = _in_inboxes(service, deliveries)
        for consumer, handler, body in deliveries:
            if (consumer, body.get("event_id")) not in seen:
                deliver(service, handler, consumer, source, body)
                delivered += 1
        if page:
            position = page[-1]["global_position"]
            with service.db.transaction() as conn:
                save_position(conn, "consumer_positions", source, position,
                              isoformat(service.clock.now()))
        if len(page) < PAGE:
            break
    return delivered


def _in_inboxes(service, deliveries: list[tuple]) -> set[tuple[str, str]]:  # noqa: ANN001
    """(consumer, event_id) of the page's deliveries whose consumer has handled it already."""
    ids: dict[str, list[str]] = defaultdict(list)
    for consumer, _handler, body in deliveries:
        if isinstance(body.get("event_id"), str):  # else malformed: deliver parks it
            ids[consumer].append(body["event_id"])
    if not ids:
        return set()
    with service.db.reader() as conn:
        return {(consumer, event_id) for consumer, page_ids in ids.items()
                for event_id in handled_among(conn, consumer, page_ids)}


class CatchUpTimer(Timer):
    """nameko's timer, telling a catch-up pass in flight that the service is stopping: it
    then asks no producer again (each stopped producer would hold it a whole RPC timeout,
    and the container waits for the pass before it can stop)."""

    def stop(self) -> None:
        self.container.catch_up_stopping = True
        super().stop()


class ProducerLogs(DependencyProvider):
    """One per service container, and what its catch-up passes get as a dependency: the
    producers the service's earlier passes could not reach (`trouble`), whether to stop
    early (`stopping()`), and the RPC proxy the passes ask through (`rpc()`), kept from one
    pass to the next. Opening a proxy is a broker connection, a reply queue and about 12 ms
    of CPU between the broker and the service (3.8 + 8.4 ms measured here), every two
    seconds in every consuming service if each pass had its own. The container's Timer runs
    one pass at a time, so the proxy is never shared between green threads (which nameko's
    standalone proxy does not allow); a pass in which a producer could not be asked renews
    it."""

    def setup(self) -> None:
        quiet_returned_publish_acks()
        self.trouble = ProducerTrouble()
        self._proxy: ClusterRpcProxy | None = None
        self._rpc = None

    def rpc(self):  # noqa: ANN201 - a started ClusterRpcProxy's proxy
        if self._rpc is None:
            proxy = ClusterRpcProxy(self.container.config, timeout=CATCH_UP_RPC_TIMEOUT)
            self._rpc = proxy.start()
            self._proxy = proxy
        return self._rpc

    def renew(self) -> None:
        """Drop the proxy: the next `rpc()` opens another."""
        proxy, self._proxy, self._rpc = self._proxy, None, None
        if proxy is not None:
            try:
                proxy.stop()
            except Exception as error:  # noqa: BLE001 - a dead connection: nothing to close
                log.debug("closing a catch-up proxy: %s", error)

    def stopping(self) -> bool:
        return getattr(self.container, "catch_up_stopping", False)

    def stop(self) -> None:
        self.renew()

    def kill(self) -> None:
        self.renew()

    def get_dependency(self, worker_ctx) -> ProducerLogs:  # noqa: ANN001
        return self


class CatchUp:
    """Mix into a consuming service (it needs `db` and `clock` dependencies)."""

    producer_logs = ProducerLogs()

    @CatchUpTimer.decorator(interval=CATCH_UP_INTERVAL, eager=True)
    def catch_up_with_producers(self) -> None:
        producers = self.producer_logs
        try:
            producers.rpc()
        except Exception as error:  # the broker away: the next tick tries again
            log_context(actor="system")  # about the pass, not the last event it handled
            producers.trouble.failed(self.name, BROKER, error)
            return
        producers.trouble.answered(self.name, BROKER)
        count = catch_up(self, producers)
        log_context(actor="system")
        if count:
            log.info("%s caught up %d events", self.name, count)
