"""Scenario 8: the broker away for longer than an RPC caller's reply queue lives. The caller
fails within its timeout instead of hanging; the request it sent is still carried out once
the service is back, and asking again with the same request id has one effect: the same
order, created once."""

from __future__ import annotations

import signal
import time
import uuid

import eventlet
from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.config import nameko_config
from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load

CALL_TIMEOUT = 5  # seconds the caller waits for an answer
REPLY_QUEUE_TTL_MS = 2000  # nameko's is 5 minutes; shortened so the broker outlasts it
LOAD_SECONDS = 10


def test_a_caller_cut_off_fails_in_time_and_its_retry_has_one_effect(system, world,
                                                                     monkeypatch):
    monkeypatch.setattr("nameko.rpc.RPC_REPLY_QUEUE_TTL", REPLY_QUEUE_TTL_MS)
    through_proxy = {**nameko_config(), "AMQP_URI": system.proxy.uri(system.env["AMQP_URI"])}
    product_id, category = world.products.pop()
    with system.rpc() as rpc:
        fault = rpc.orders.catalog()["faults"]
    request = {"product_id": product_id, "order_type": "repair", "channel": "phone",
               "agent_id": "fault-caller", "description": "客户来电报修",
               "fault_code": next(f["code"] for f in fault if f["category"] == category),
               "request_id": f"faults-away-{uuid.uuid4().hex}"}
    with Load(system, world) as load:
        load.open_orders(LOAD_SECONDS)
        caller = ClusterRpcProxy(through_proxy, timeout=CALL_TIMEOUT).start()
        system.signal("orders", signal.SIGSTOP)  # the request waits in orders' queue
        try:
            reply = caller.orders.create_order.call_async(request)
            system.proxy.cut()
            started = time.monotonic()
            outcome = None
            with eventlet.Timeout(6 * CALL_TIMEOUT, False):
                try:
                    outcome = reply.result()
                except Exception as error:  # noqa: BLE001 - what the caller is told
                    outcome = error
            failed_after = time.monotonic() - started
            assert isinstance(outcome, Exception), f"the caller hung or got {outcome!r}"
            assert failed_after <= 2 * CALL_TIMEOUT, failed_after
            time.sleep(2 * REPLY_QUEUE_TTL_MS / 1000)  # the fault's length: the queue expires
        finally:
            system.signal("orders", signal.SIGCONT)
            system.proxy.restore()
            try:
                caller.stop()
            except Exception:  # noqa: BLE001, S110 - its connection died with the proxy
                pass
        system.wait_ready()
        with ClusterRpcProxy(through_proxy, timeout=30) as again:
            order = again.orders.create_order(request)
        assert order["created"] is False  # the first request had created it
        load.accepted[order["order_id"]] = request["request_id"]
        load.intake_done()
        logs = assert_nothing_lost_or_doubled(system, load)
    created = [e for e in logs["orders"] if e["event_type"] == "order_created"
               and e["causation_id"] == f"req-{request['request_id']}"]
    assert [e["payload"]["order_id"] for e in created] == [order["order_id"]]
    print(f"the cut-off caller failed after {failed_after:.1f} s with {outcome!r}")
