"""Waiting on conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Return `probe()`'s first truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def queue_counts(broker_uri: str, column: str = "messages") -> dict[str, int]:
    """Every queue of the URI's virtual host -> `column` of `rabbitmqctl list_queues`
    (`messages`: ready or delivered-but-unacknowledged; `messages_ready`: not delivered)."""
    import subprocess
    from urllib.parse import unquote, urlparse

    vhost = unquote(urlparse(broker_uri).path[1:]) or "/"
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", column],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    return {name: int(count) for name, _, count in
            (line.rpartition("\t") for line in listed.splitlines()[1:] if "\t" in line)}


def queue_drained(broker_uri: str, queue: str) -> bool:
    """True once `queue` holds no message, ready or delivered-but-unacknowledged."""
    return queue_counts(broker_uri).get(queue) == 0


