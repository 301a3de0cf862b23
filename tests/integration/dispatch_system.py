"""Orders and dispatch running together on a real broker and database, with orders' relay.

Shared by the dispatch tests: `DispatchSystem` starts both services in-process (nameko's
container_factory), the orders relay as its own process, and offers signed raw requests
to the gateway.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pika
import requests
from nameko.standalone.rpc import ServiceRpcProxy

from contracts.signing import signed_headers
from serviceloop.migrate import declare_broker_topology

ADDRESS = {"province": "广东省", "city": "广州市", "district": "天河区",
           "street": "中山大道100号", "lat": 23.13, "lon": 113.33}
REGION = {"province": "广东省", "city": "广州市", "district": "天河区"}


# nameko's web server binds with SO_REUSEPORT (eventlet.listen's default): two servers given
# one port both bind it, and the kernel splits the connections between them. A port the
# kernel hands out (bind to 0) is free only until someone binds it, and the pytest process
# running beside this one (scripts/run-tests) may be handed the same port meanwhile. So each
# process takes ports in turn from a range of its own, below the kernel's ephemeral range
# (32768 and up): TEST_PORT_BASE, set per process by scripts/run-tests (20000 and up), else
# one of 2000..16999 picked by the process id.
PORT_RANGE = 3000
_PORT_BASE = int(os.environ.get("TEST_PORT_BASE") or 2000 + (os.getpid() % 5) * PORT_RANGE)
_taken = 0


def free_port() -> int:
    """A port of this process's range that nothing is bound to now, never the same twice in
    a row of `PORT_RANGE`."""
    global _taken
    for _ in range(PORT_RANGE):
        port = _PORT_BASE + _taken % PORT_RANGE
        _taken += 1
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue  # in use (a server of ours or another program): the next one
            return port
    raise RuntimeError(f"no free port in {_PORT_BASE}..{_PORT_BASE + PORT_RANGE - 1}")


@dataclass
class Partner:
    partner_id: str
    secret: str


@dataclass
class DispatchSystem:
    orders: object  # ServiceRpcProxy
    dispatch: object  # ServiceRpcProxy
    base_url: str
    clock: object
    processes: list = field(default_factory=list)
    dispatch_url: str = ""
    session: requests.Session = field(default_factory=requests.Session)
    _signed: set = field(default_factory=set)

    # -- set-up helpers ------------------------------------------------------------------------

    def register_partner(self, name: str = "天河家电维修", *, capacity: int = 10,
                         rating: float = 4.0, categories=("water_heater", "air_conditioner"),
                         regions=(REGION,)) -> Partner:
        answer = self.dispatch.register_partner({
            "name": name, "regions": list(regions), "categories": list(categories),
            "daily_capacity": capacity, "rating": rating})
        return Partner(answer["partner"]["partner_id"], answer["secret"])

    def customer_with_heater(self, phone: str) -> str:
        registered = self.orders.register_customer({
            "name": "王小明", "phone": phone, "agent_id": "a7", "address": ADDRESS,
            "products": [{"model": "WH-E60A", "serial": f"WH{phone}", "purchase_date":
                          "2026-03-01", "installation_date": "2026-03-05"}]})
        return registered["products"][0]["product_id"]

    def repair(self, phone: str, fault_code: str | None = "WH-E1") -> str:
        product_id = self.customer_with_heater(phone)
        return self.orders.create_order({
            "product_id": product_id, "order_type": "repair", "channel": "phone",
            "description": "no hot water", "fault_code": fault_code, "agent_id": "a7"})["order_id"]

    def dispatch_status(self, order_id: str) -> str | None:
        try:
            return self.dispatch.get_order(order_id)["status"]
        except Exception:  # noqa: BLE001 - not there yet
            return None

    # -- raw signed requests ----------------------------------------------------------------

    def signed(self, partner: Partner, method: str, path: str, body: object = None, *,
               key: str | None = None, headers: dict | None = None,
               timestamp: float | None = None, raw: bytes | None = None) -> requests.Response:
        data = raw if raw is not None else (
            b"" if body is None else json.dumps(body).encode())
        if timestamp is None:
            # a test sends the same request twice in a second on purpose only when it says so:
            # step back a second instead of producing a replay (the SDK waits instead)
            timestamp = int(time.time())
            while (partner.partner_id, method, path, data, timestamp) in self._signed:
                timestamp -= 1
        self._signed.add((partner.partner_id, method, path, data, int(timestamp)))
        sent = signed_headers(partner.partner_id, partner.secret, method, path, data, timestamp)
        if method == "POST":
            sent["Content-Type"] = "application/json"
            if key is not None:
                sent["Idempotency-Key"] = key
        sent.update(headers or {})
        return self.session.request(method, self.base_url + path, data=data, headers=sent,
                                    timeout=20)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        self.session.close()


def start_relay(service: str, broker_uri: str, database_url: str) -> subprocess.Popen:
    env = {**os.environ, "AMQP_URI": broker_uri,
           f"DATABASE_URL_{service.upper()}": database_url, "LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "serviceloop.cli", "relay", service], env=env)


def dispatch_config(service_config, dispatch_url: str, port: int, **extra) -> dict:
    config = service_config(dispatch=dispatch_url)
    config.update({"WEB_SERVER_ADDRESS": f"127.0.0.1:{port}", "GATEWAY_RATE_PER_SECOND": 1000,
                   **extra})
    return config


def declare(broker_uri: str) -> None:
    """Every subscribed queue declared and bound, and emptied: the run's virtual host is
    shared, and what an earlier test's services left in these durable queues (stopped with
    events still on their way) must not reach this test's."""
    names = declare_broker_topology(broker_uri)
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_purge(name)
    finally:
        connection.close()


@contextmanager
def running_system(container_factory, service_config, broker_uri: str, clock,  # noqa: ANN001
                   orders_url: str, dispatch_url: str, *, dispatch_reaches: str | None = None,
                   **dispatch_settings) -> Iterator[DispatchSystem]:
    """Orders and dispatch started in-process (the queues declared and emptied first) and
    orders' relay; `dispatch_reaches`: the URL dispatch itself is given for its database (a
    proxy's, say) where it is not `dispatch_url`."""
    from services.dispatch.service import DispatchService
    from services.orders.service import OrdersService

    declare(broker_uri)
    orders = container_factory(OrdersService, service_config(orders=orders_url))
    port = free_port()
    dispatch = container_factory(DispatchService, dispatch_config(
        service_config, dispatch_reaches or dispatch_url, port, **dispatch_settings))
    orders.start()
    dispatch.start()
    relay = start_relay("orders", broker_uri, orders_url)
    with ServiceRpcProxy("orders", orders.config, timeout=20) as orders_rpc, \
            ServiceRpcProxy("dispatch", dispatch.config, timeout=20) as dispatch_rpc:
        system = DispatchSystem(orders_rpc, dispatch_rpc, f"http://127.0.0.1:{port}", clock,
                                [relay], dispatch_url=dispatch_url)
        try:
            yield system
        finally:
            system.close()
