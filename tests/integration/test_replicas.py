"""Two replicas of dispatch, and of its outbox relay, on one database and one broker.

Real processes (`nameko run`, `serviceloop relay`) on PostgreSQL and RabbitMQ, with quorum
queues in a vhost of their own, as a cluster would run them. Assignment, the deadline timers
and publishing must each happen once however the two replicas interleave, and when one replica
is killed the other carries on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote, unquote, urlparse, urlunparse

import pika
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.config import PROJECT_ROOT
from serviceloop.migrate import declare_broker_topology
from serviceloop.services import SERVICE_CLASSES
from tests.helpers import wait_until
from tests.integration.dispatch_system import DispatchSystem, free_port

ACCEPT_WITHIN_MINUTES = 30
NAMEKO = str(Path(sys.executable).parent / "nameko")


class Replicas:
    """The processes of the system under test, by name, and how to reach them."""

    def __init__(self, env: dict, clock_file: Path) -> None:
        self.env = env
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


@pytest.fixture
def replicas(tmp_path, quorum_vhost, database_for):
    declare_broker_topology(quorum_vhost)
    env = {**os.environ, "AMQP_URI": quorum_vhost, "QUEUE_TYPE": "quorum",
           "SERVICELOOP_CLOCK": f"file:{tmp_path / 'clock-offset'}",
           "DATABASE_URL_ORDERS": database_for("orders", "postgres"),
           "DATABASE_URL_DISPATCH": database_for("dispatch", "postgres"),
           "ACCEPT_WITHIN_MINUTES": str(ACCEPT_WITHIN_MINUTES), "DISPATCH_TIMER_INTERVAL": "0.5",
           "GATEWAY_RATE_PER_SECOND": "1000", "LOG_LEVEL": "WARNING",
           "PYTHONWARNINGS": "ignore::Warning"}
    system = Replicas(env, tmp_path / "clock-offset")
    config = str(PROJECT_ROOT / "config.yaml")
    system.start("orders", [NAMEKO, "run", "--config", config, SERVICE_CLASSES["orders"]],
                 "WEB_SERVER_PORT")
    for replica in ("dispatch-a", "dispatch-b"):
        system.start(replica, [NAMEKO, "run", "--config", config, SERVICE_CLASSES["dispatch"]],
                     "WEB_SERVER_PORT", log_to=tmp_path / f"{replica}.log")
    relay = [sys.executable, "-m", "serviceloop.cli", "relay"]
    system.start("orders-relay", [*relay, "orders"], "RELAY_HTTP_PORT")
    for replica in ("dispatch-relay-a", "dispatch-relay-b"):
        system.start(replica, [*relay, "dispatch"], "RELAY_HTTP_PORT")
    try:
        wait_until(lambda: all(system.ready(name) for name in system.processes), timeout=90,
                   interval=0.3, message="every replica to be ready")
        yield system
    finally:
        system.stop()


class Published:
    """Every message on dispatch's exchange, through a queue bound to all its routing keys."""

    def __init__(self, uri: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(uri))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, "dispatch.events", routing_key="#")
        self.event_ids: list[str] = []

    def drain(self) -> list[str]:
        while True:
            method, _, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.event_ids
            self.event_ids.append(json.loads(body)["event_id"])

    def close(self) -> None:
        self.connection.close()


def dispatch_log(rpc) -> list[dict]:  # noqa: ANN001
    envelopes, position = [], 0
    while batch := rpc.dispatch.events_since(position, 500):
        envelopes += batch
        position = batch[-1]["global_position"]
    return envelopes


def per_order(envelopes: list[dict], event_type: str) -> Counter:
    return Counter(e["correlation_id"] for e in envelopes if e["event_type"] == event_type)


def test_two_replicas_assign_time_out_and_publish_each_order_once(replicas, quorum_vhost):
    published = Published(quorum_vhost)
    with ClusterRpcProxy({"AMQP_URI": quorum_vhost}, timeout=30) as rpc:
        system = DispatchSystem(rpc.orders, rpc.dispatch, "", clock=None)
        for number in range(3):
            system.register_partner(f"合作网点{number}", capacity=100)
        first = [system.repair(f"1390000{n:04d}") for n in range(12)]

        def assigned(orders: list[str]) -> bool:
            return all(system.dispatch_status(o) == "assigned" for o in orders)

        wait_until(lambda: assigned(first), timeout=60, interval=0.3,
                   message="every order assigned")
        assert per_order(dispatch_log(rpc), "order_assigned") == {o: 1 for o in first}
        # the two replicas shared the work: each consumed some of the new orders
        shared = wait_until(lambda: [s for s in [{r: replicas.orders_created_handled(r) for r
                                                  in ("dispatch-a", "dispatch-b")}]
                                     if set().union(*s.values()) == set(first)],
                            timeout=30, interval=0.2, message="both logs to show the orders")[0]
        assert shared["dispatch-a"] and shared["dispatch-b"], shared

        # every replica's timer, and four passes asked for at once, race for each deadline
        replicas.move_clock(ACCEPT_WITHIN_MINUTES + 1)
        for pass_ in [rpc.dispatch.run_timers.call_async() for _ in range(4)]:
            pass_.result()
        wait_until(lambda: per_order(dispatch_log(rpc), "assignment_timed_out").keys() ==
                   set(first), timeout=60, interval=0.3, message="every deadline to pass")
        wait_until(lambda: assigned(first), timeout=60, interval=0.3,
                   message="every order re-dispatched")
        rpc.dispatch.run_timers()  # one more pass after the fact changes nothing
        log = dispatch_log(rpc)
        assert per_order(log, "assignment_timed_out") == {o: 1 for o in first}
        assert per_order(log, "order_assigned") == {o: 2 for o in first}

        # both relays run; one holds the lease and every event goes out once
        wait_until(lambda: set(published.drain()) == {e["event_id"] for e in log},
                   timeout=60, interval=0.3, message="the whole log published")
        assert Counter(published.event_ids).most_common(1)[0][1] == 1
        assert sorted(replicas.holds_lease(r) for r in ("dispatch-relay-a",
                                                        "dispatch-relay-b")) == [False, True]

        # kill -9 one dispatch replica and the publishing relay: the others carry on
        publishing = next(r for r in ("dispatch-relay-a", "dispatch-relay-b")
                          if replicas.holds_lease(r))
        replicas.kill("dispatch-a")
        replicas.kill(publishing)
        later = [system.repair(f"1391000{n:04d}") for n in range(6)]
        wait_until(lambda: assigned(later), timeout=60, interval=0.3,
                   message="the surviving replica to assign the new orders")
        log = dispatch_log(rpc)
        assert per_order(log, "order_assigned") == {**{o: 2 for o in first},
                                                    **{o: 1 for o in later}}
        wait_until(lambda: set(later) <= replicas.orders_created_handled("dispatch-b"),
                   timeout=30, interval=0.2, message="the survivor's log to show the new orders")
        wait_until(lambda: set(published.drain()) == {e["event_id"] for e in log},
                   timeout=60, interval=0.3, message="the surviving relay to publish the rest")
    published.close()
    vhost = unquote(urlparse(quorum_vhost).path[1:])
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type"],
                            check=True, capture_output=True, text=True).stdout.split("\n")
    kinds = dict(line.split("\t") for line in listed if line.startswith("evt-"))
    assert kinds and set(kinds.values()) == {"quorum"}
