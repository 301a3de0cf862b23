"""RPC access for command lines, demos and benchmarks."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from amqp.abstract_channel import IGNORED_METHOD_DURING_CHANNEL_CLOSE
from nameko.constants import NON_PERSISTENT
from nameko.rpc import ServiceProxy
from nameko.standalone.rpc import ClusterProxy, ClusterRpcProxy

from serviceloop.config import nameko_config

DEFAULT_TIMEOUT = 30.0  # seconds; SERVICELOOP_RPC_TIMEOUT changes it


def rpc_timeout() -> float:
    """How long a caller waits for an answer unless it says: SERVICELOOP_RPC_TIMEOUT."""
    return float(os.environ.get("SERVICELOOP_RPC_TIMEOUT") or DEFAULT_TIMEOUT)


class TransientRequests(ClusterProxy):
    """nameko's cluster proxy, its service proxies publishing requests transient."""

    def __getattr__(self, name: str) -> ServiceProxy:
        if name not in self._proxies:
            self._proxies[name] = ServiceProxy(self._worker_ctx, name, self._reply_listener,
                                               delivery_mode=NON_PERSISTENT)
        return self._proxies[name]


class TransientRpcProxy(ClusterRpcProxy):
    """ClusterRpcProxy with TransientRequests (nameko's passes no options to a publisher)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - nameko's
        super().__init__(*args, **kwargs)
        self._proxy = TransientRequests(self._worker_ctx, self._reply_listener)


@contextmanager
def cluster(timeout: float | None = None) -> Iterator[TransientRequests]:
    """A proxy to every service, waiting `timeout` seconds (else `rpc_timeout()`) for an
    answer. Not to be shared between green threads: one per caller.

    Requests go out transient: a request the broker loses in a restart would have lost its
    answer too (the caller's reply queue goes with its connection), so the caller times out
    and retries either way, and a retry with the same request id has one effect. The
    publisher confirm stays: nameko needs it to tell an unknown service."""
    # who is calling, for the services' log lines (`SERVICELOOP_ACTOR`, else the user)
    actor = os.environ.get("SERVICELOOP_ACTOR") or f"cli:{getpass.getuser()}"
    with TransientRpcProxy(nameko_config(), timeout=rpc_timeout() if timeout is None else timeout,
                           context_data={"actor": actor}) as proxy:
        yield proxy


class ReturnedPublishAck(logging.Filter):
    """Drops py-amqp's warning for a publisher confirm (Basic.Ack, method (60, 80)) that
    arrives on a channel kombu is closing. Asking a service that is not running, nameko's
    proxy publishes with `mandatory`: the broker returns the request, kombu raises
    UnknownService and closes the channel, and the broker's ack of the same publish comes
    after. The caller already says which service (catch-up's ProducerTrouble, the command
    line's error); the warning said nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg is IGNORED_METHOD_DURING_CHANNEL_CLOSE and record.args
                    and record.args[0] == (60, 80))


def quiet_returned_publish_acks() -> None:
    """Install ReturnedPublishAck on py-amqp's logger, once per process."""
    amqp_log = logging.getLogger("amqp")
    if not any(isinstance(f, ReturnedPublishAck) for f in amqp_log.filters):
        amqp_log.addFilter(ReturnedPublishAck())
