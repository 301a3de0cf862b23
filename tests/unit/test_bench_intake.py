"""The loop benchmark's call centre (bench.loop.Intake): one failed call must not stop the load.

Before, an exception from `create_order` ended the intake's green thread: no order was
opened after it, the broker's queues stayed empty and the run's window closed no loop.
The RPC proxy is replaced here by a stand-in that fails on purpose; the services and the
broker are not what this test is about.
"""

from __future__ import annotations

from contextlib import contextmanager

from nameko.exceptions import RpcTimeout

import serviceloop.client
from bench.loop import Intake
from serviceloop.simulation import Candidate, World
from services.orders.catalog import CATALOG


class CallCentre:
    """`rpc.orders.create_order` failing on the calls named, else opening the order."""

    def __init__(self, failing: set[int], stop_after: int, intake: list) -> None:
        self.orders = self
        self.payloads: list[dict] = []
        self.failing, self.stop_after, self.intake = failing, stop_after, intake

    def create_order(self, payload: dict) -> dict:
        self.payloads.append(payload)
        if len(self.payloads) >= self.stop_after:
            self.intake[0].running = False
        if len(self.payloads) in self.failing:
            raise RpcTimeout(30)
        return {"order_id": f"order-{len(self.payloads)}", "created": True}


def test_the_call_centre_goes_on_after_a_failed_call(monkeypatch):
    category = next(c.code for c in CATALOG.categories() if CATALOG.faults(c.code))
    pool = [Candidate(f"product-{n}", category, 3) for n in range(10)]
    world = World(7, {})
    intake = Intake(world, pool, in_flight=10)
    rpc = CallCentre(failing={2}, stop_after=4, intake=[intake])

    @contextmanager
    def cluster(timeout=None):  # noqa: ARG001 - the real one's signature
        yield rpc

    monkeypatch.setattr(serviceloop.client, "cluster", cluster)
    monkeypatch.setattr("bench.loop.eventlet.sleep", lambda _s: None)  # its pause after a failure
    intake.run()

    assert len(rpc.payloads) == 4  # it went on after the second call failed
    assert intake.opened == 3
    assert sorted(world.scripts) == ["order-1", "order-3", "order-4"]
    assert [p.split(":")[0] for p in world.problems] == ["intake"]
    assert "RpcTimeout" in world.problems[0]
    # the failed call's product was not asked for again under a new request id
    assert len({p["product_id"] for p in rpc.payloads}) == 4
