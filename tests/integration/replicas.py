"""The system under test as real processes (`nameko run`, `serviceloop relay`), as a cluster
runs them: on one broker's virtual host of quorum queues (the `quorum_vhost` fixture,
tests/integration/conftest.py) and PostgreSQL, several replicas of a service side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from serviceloop.config import PROJECT_ROOT
from serviceloop.services import SERVICE_CLASSES
from tests.helpers import wait_until
from tests.integration.dispatch_system import free_port

NAMEKO = str(Path(sys.executable).parent / "nameko")
CONFIG = str(PROJECT_ROOT / "config.yaml")


class Replicas:
    """The processes of the system under test, by name, and how to reach them.

    Every process gets the broker `amqp_uri` (quorum queues), the clock the test moves
    through `clock_file`, quiet logs, a gateway rate that never limits the test, and
    `settings` (environment variables) on top."""

    def __init__(self, amqp_uri: str, clock_file: Path, **settings: str) -> None:
        self.env = {**os.environ, "AMQP_URI": amqp_uri, "QUEUE_TYPE": "quorum",
                    "SERVICELOOP_CLOCK": f"file:{clock_file}",
                    "GATEWAY_RATE_PER_SECOND": "1000", "LOG_LEVEL": "WARNING",
                    "PYTHONWARNINGS": "ignore::Warning", **settings}
        self.clock_file = clock_file
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: list[str], port_variable: str, *,
              log_to: Path | None = None) -> None:
        """Start a process; with `log_to`, its JSON log lines (INFO and up) go to that file."""
        self.ports[name] = free_port()
        env = {**self.env, port_variable: str(self.ports[name])}
        output = subprocess.DEVNULL
        if log_to is not None:
            env.update({"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"})
            self.logs[name] = log_to
            output = open(log_to, "w")  # noqa: SIM115 - the child holds it; closed on exit
        self.processes[name] = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
        if log_to is not None:
            output.close()  # the child has its own copy

    def start_service(self, name: str, service: str, *, log_to: Path | None = None) -> None:
        """A replica of `service` (`nameko run`), its web server on a port of its own."""
        self.start(name, [NAMEKO, "run", "--config", CONFIG, SERVICE_CLASSES[service]],
                   "WEB_SERVER_PORT", log_to=log_to)

    def start_relay(self, name: str, service: str) -> None:
        """A replica of `service`'s outbox relay (`serviceloop relay`)."""
        self.start(name, [sys.executable, "-m", "serviceloop.cli", "relay", service],
                   "RELAY_HTTP_PORT")

    @contextmanager
    def all_ready(self) -> Iterator[Replicas]:
        """Once every process started answers ready; every one is stopped at the end."""
        try:
            wait_until(lambda: all(self.ready(name) for name in self.processes), timeout=90,
                       interval=0.3, message="every process to be ready")
            yield self
        finally:
            self.stop()

    def orders_created_handled(self, name: str) -> set[str]:
        """The orders whose `order_created` this process's consumer handled, by its log."""
        handled = set()
        for line in self.logs[name].read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("message") == ("dispatch.on_order_created handled "
                                            "orders.order_created"):
                    handled.add(entry["correlation_id"])
        return handled

    def get(self, name: str, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports[name]}{path}", timeout=10)

    def ready(self, name: str) -> bool:
        try:
            return self.get(name, "/health/ready").status_code == 200
        except requests.RequestException:
            return False

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def holds_lease(self, relay: str) -> bool:
        return "serviceloop_relay_holds_lease{service=\"dispatch\"} 1" in \
            self.get(relay, "/metrics").text

    def move_clock(self, minutes: float) -> None:
        self.clock_file.write_text(str(minutes * 60))

    def stop(self) -> None:
        for process in self.processes.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def whole_log(service) -> list[dict]:  # noqa: ANN001 - a service's RPC proxy
    """Every envelope of the service's event log, in log order."""
    envelopes, position = [], 0
    while batch := service.events_since(position, 500):
        envelopes += batch
        position = batch[-1]["global_position"]
    return envelopes
