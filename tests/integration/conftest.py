"""Fixtures of the integration tests that start the system as real processes."""

from __future__ import annotations

import subprocess
import uuid
from urllib.parse import quote, urlparse, urlunparse

import pytest


@pytest.fixture
def quorum_vhost(broker_uri, monkeypatch):
    """A vhost of this test's own: its queues are quorum queues, unlike the run's shared vhost."""
    vhost = f"sl-replicas-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*",
                    ".*"], check=True, capture_output=True)
    monkeypatch.setenv("QUEUE_TYPE", "quorum")
    yield urlunparse(urlparse(broker_uri)._replace(path="/" + quote(vhost, safe="")))
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
