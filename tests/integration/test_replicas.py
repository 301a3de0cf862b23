"""Two replicas of dispatch, and of its outbox relay, on one database and one broker.

Real processes (`nameko run`, `serviceloop relay`) on PostgreSQL and RabbitMQ, with quorum
queues in a vhost of their own, as a cluster would run them. Assignment, the deadline timers
and publishing must each happen once however the two replicas interleave, and when one replica
is killed the other carries on.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from urllib.parse import unquote, urlparse

import pika
import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.migrate import declare_broker_topology
from tests.helpers import wait_until
from tests.integration.dispatch_system import DispatchSystem
from tests.integration.replicas import Replicas, whole_log

ACCEPT_WITHIN_MINUTES = 30


@pytest.fixture
def replicas(tmp_path, quorum_vhost, database_for):
    declare_broker_topology(quorum_vhost)
    system = Replicas(quorum_vhost, tmp_path / "clock-offset",
                      DATABASE_URL_ORDERS=database_for("orders", "postgres"),
                      DATABASE_URL_DISPATCH=database_for("dispatch", "postgres"),
                      ACCEPT_WITHIN_MINUTES=str(ACCEPT_WITHIN_MINUTES),
                      DISPATCH_TIMER_INTERVAL="0.5")
    system.start_service("orders", "orders")
    for replica in ("dispatch-a", "dispatch-b"):
        system.start_service(replica, "dispatch", log_to=tmp_path / f"{replica}.log")
    system.start_relay("orders-relay", "orders")
    for replica in ("dispatch-relay-a", "dispatch-relay-b"):
        system.start_relay(replica, "dispatch")
    with system.all_ready():
        yield system


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
        assert per_order(whole_log(rpc.dispatch), "order_assigned") == {o: 1 for o in first}
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
        wait_until(lambda: per_order(whole_log(rpc.dispatch), "assignment_timed_out").keys() ==
                   set(first), timeout=60, interval=0.3, message="every deadline to pass")
        wait_until(lambda: assigned(first), timeout=60, interval=0.3,
                   message="every order re-dispatched")
        rpc.dispatch.run_timers()  # one more pass after the fact changes nothing
        log = whole_log(rpc.dispatch)
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
        log = whole_log(rpc.dispatch)
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
