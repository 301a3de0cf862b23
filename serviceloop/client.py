"""RPC access for command lines, demos and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.config import nameko_config

DEFAULT_TIMEOUT = 30.0


@contextmanager
def cluster(timeout: float = DEFAULT_TIMEOUT) -> Iterator[ClusterRpcProxy]:
    """A proxy to every service. Not to be shared between green threads: one per caller."""
    with ClusterRpcProxy(nameko_config(), timeout=timeout) as proxy:
        yield proxy
