"""RPC access for command lines, demos and benchmarks."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager

from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.config import nameko_config

DEFAULT_TIMEOUT = 30.0


@contextmanager
def cluster(timeout: float = DEFAULT_TIMEOUT) -> Iterator[ClusterRpcProxy]:
    """A proxy to every service. Not to be shared between green threads: one per caller."""
    # who is calling, for the services' log lines (`SERVICELOOP_ACTOR`, else the user)
    actor = os.environ.get("SERVICELOOP_ACTOR") or f"cli:{getpass.getuser()}"
    with ClusterRpcProxy(nameko_config(), timeout=timeout,
                         context_data={"actor": actor}) as proxy:
        yield proxy
