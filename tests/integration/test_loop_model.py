"""A model of the whole loop, driven by hypothesis: orders created over RPC and assigned by
dispatch, accepted and completed by a partner over the signed gateway, verified or disputed
by a callback agent, claimed and settled — with events delivered twice and services
restarted in between — and checked after every step:

* at most one claim per order is paid (approved cents charged to the manufacturer);
* each claim pays exactly its approved lines, and the closed statements pay exactly the
  claims as they stood when their period was run;
* the orders log shows only transitions of DESIGN.md's diagram.

The four services run in-process (nameko containers) on PostgreSQL, with their relays as
processes and a RabbitMQ virtual host of their own, for the whole test; each example works
in a district of its own with a partner of its own, so examples do not see each other.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pika
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nameko.standalone.rpc import ServiceRpcProxy

from contracts.orders import CANCELLABLE_STATUSES
from contracts.subscriptions import SUBSCRIPTIONS
from serviceloop.clock import isoformat
from serviceloop.consumer import queue_name
from serviceloop.relay import message_properties
from services.callback.service import CallbackService
from services.dispatch.service import DispatchService
from services.orders.service import OrdersService
from services.settlement.service import SettlementService
from tests.helpers import queue_drained, wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    declare,
    dispatch_config,
    free_port,
    start_relay,
)
from tests.integration.test_settlement import PARTS, RATES, post

SERVICES = ("orders", "dispatch", "callback", "settlement")
SERVICE_CLASSES = {"orders": OrdersService, "dispatch": DispatchService,
                   "callback": CallbackService, "settlement": SettlementService}
PAID = ("approved", "cut")
ORDERS_PER_EXAMPLE = 2  # open at once; with every one closed there is always a rule to take
# the model's status -> what happens next to the order
NEXT_STEP = {"assigned": "accept", "accepted": "complete", "completed": "call_the_customer"}
FAULTS_PER_EXAMPLE = 2
# dispatch's line through one visit; orders follows it "latest dispatch version wins", so an
# event overtaken on its own queue is skipped, never applied late: forward skips are legal
VISIT = ("assigned", "accepted", "scheduled", "on_site", "completed")
VISIT_STARTS = ("created", "rejected", "sla_breached", "escalated", "reopened")


def legal(before: str | None, after: str) -> bool:
    """Is `before` -> `after` a transition of the order's life (shared/DESIGN.md)?"""
    if after == "cancelled":
        return before in CANCELLABLE_STATUSES
    if before is None:
        return after in ("created", "awaiting_fault")
    if before == "awaiting_fault":
        return after == "created"
    if before in VISIT_STARTS:
        return after in VISIT or after in ("rejected", "sla_breached", "escalated")
    if before in VISIT[:-1]:
        return (after in VISIT[VISIT.index(before) + 1:]
                or (before != "on_site" and after in ("rejected", "sla_breached"))
                or (before, after) == ("scheduled", "accepted"))  # appointment cancelled
    # the dispute and dispatch's reopening and re-dispatch travel on separate queues
    return after in {
        "completed": ("verified", "disputed", "unverified", "reopened", "assigned"),
        "disputed": ("reopened", "assigned", "escalated"),
        "verified": ("closed",),
        "unverified": ("closed", "completed"),
    }.get(before, ())


def statuses(history: list[dict]) -> list[str]:
    """The status the call centre saw after each event of an order's stream in orders."""
    seen = []
    for event in history:
        kind, payload = event["event_type"], event["payload"]
        if kind == "order_cancelled":
            seen.append("cancelled")
        elif kind == "order_settled":
            seen.append("closed")
        elif "status" in payload:
            seen.append(payload["status"])
    return seen


class LoopSystem(DispatchSystem):
    """The four services, restartable one at a time; RPC proxies survive a restart."""

    def restart(self, service: str) -> None:
        self.containers[service].stop()
        self.containers[service] = self.container_factory(SERVICE_CLASSES[service],
                                                          self.configs[service])
        self.containers[service].start()


@pytest.fixture
def system(container_factory, service_config, database_for, broker_uri, clock):
    declare(broker_uri)
    urls = {s: database_for(s, "postgres") for s in SERVICES}
    port = free_port()
    configs = {
        "orders": service_config(orders=urls["orders"]),
        "dispatch": dispatch_config(service_config, urls["dispatch"], port),
        "callback": {**service_config(callback=urls["callback"]),
                     "WEB_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
                     "AUTO_VERIFY_INSTALLS": "false"},
        "settlement": service_config(settlement=urls["settlement"]),
    }
    containers = {s: container_factory(SERVICE_CLASSES[s], configs[s]) for s in SERVICES}
    for container in containers.values():
        container.start()
    relays = [start_relay(s, broker_uri, urls[s]) for s in SERVICES]
    config = configs["orders"]
    with ServiceRpcProxy("orders", config, timeout=20) as orders_rpc, \
            ServiceRpcProxy("dispatch", config, timeout=20) as dispatch_rpc, \
            ServiceRpcProxy("callback", config, timeout=20) as callback_rpc, \
            ServiceRpcProxy("settlement", config, timeout=20) as settlement_rpc:
        loop = LoopSystem(orders_rpc, dispatch_rpc, f"http://127.0.0.1:{port}", clock, relays)
        loop.callback, loop.settlement = callback_rpc, settlement_rpc
        loop.containers, loop.configs = containers, configs
        loop.container_factory, loop.broker_uri = container_factory, broker_uri
        loop.settlement.load_rates(RATES)
        loop.settlement.load_rates(PARTS)
        yield loop
        loop.close()


class LoopModel(RuleBasedStateMachine):
    """What each of this example's orders should be, and what its partner was paid."""

    def __init__(self, loop: LoopSystem) -> None:
        super().__init__()
        self.loop = loop
        self.district = f"模型{uuid.uuid4().hex[:8]}区"
        self.orders: dict[str, str] = {}  # order_id -> the model's status
        self.visits: dict[str, int] = {}  # order_id -> completed visits
        self.settled: dict[str, int] = {}  # claim_id -> payable when its period was run
        self.periods_run: dict[str, int | None] = {}  # period -> what its statement paid
        self.old_parts: list[str] = []
        self.leases: dict[str, str] = {}  # order_id -> the agent holding its callback task
        self.faults = 0  # duplicates and restarts: a few an example, each costs a second

    # -- set-up and helpers ---------------------------------------------------------------

    @initialize()
    def a_partner_for_the_district(self) -> None:
        self.partner = self.loop.register_partner(
            f"{self.district}服务部", capacity=100,
            regions=({"province": "广东省", "city": "广州市", "district": self.district},))

    def in_state(self, *wanted: str) -> list[str]:
        """In the order they were created: the same choices pick the same orders each run."""
        return [o for o, s in self.orders.items() if s in wanted]

    def lease_task_of(self, order_id: str) -> tuple[dict, str]:
        """The open task of `order_id` and the agent holding it. Agents take the queue's
        first task in turn; one that got another order's task keeps it for that order."""
        agent = self.leases.pop(order_id, None) or f"a-{uuid.uuid4().hex[:8]}"
        while (task := self.loop.callback.next_task(agent)) is not None:
            if task["order_id"] == order_id:
                return task, agent
            self.leases[task["order_id"]] = agent
            agent = f"a-{uuid.uuid4().hex[:8]}"
        raise AssertionError(f"no callback task for {order_id} in the agents' queue")

    def orders_status(self, order_id: str) -> str:
        return self.loop.orders.get_order(order_id)["status"]

    def until_orders_shows(self, order_id: str, status: str) -> None:
        wait_until(lambda: self.orders_status(order_id) == status,
                   message=f"orders to show {order_id} {status}")

    def claims(self, order_id: str) -> list[dict]:
        return self.loop.settlement.claims_for_order(order_id)

    def period(self) -> str:
        return self.loop.clock.now().strftime("%Y-%m")

    # -- the agent, the partner, finance ------------------------------------------------------

    @precondition(lambda self: len(self.orders) - len(self.in_state("closed"))
                  < ORDERS_PER_EXAMPLE)
    @rule()
    def create_repair(self) -> None:
        today = self.loop.clock.now().date()
        phone = f"139{uuid.uuid4().int % 10**8:08d}"
        registered = self.loop.orders.register_customer({
            "name": "模型客户", "phone": phone, "agent_id": "a7",
            "address": {"province": "广东省", "city": "广州市", "district": self.district,
                        "street": "中山大道1号", "lat": 23.13, "lon": 113.33},
            "products": [{"model": "WH-E60A", "serial": f"WH{phone}",
                          "purchase_date": (today - timedelta(days=60)).isoformat(),
                          "installation_date": (today - timedelta(days=59)).isoformat()}]})
        order_id = self.loop.orders.create_order({
            "product_id": registered["products"][0]["product_id"], "order_type": "repair",
            "channel": "phone", "description": "不出热水", "fault_code": "WH-E1",
            "agent_id": "a7"})["order_id"]
        self.until_orders_shows(order_id, "assigned")  # dispatch assigned it by itself
        self.orders[order_id], self.visits[order_id] = "assigned", 0

    @precondition(lambda self: self.in_state(*NEXT_STEP))
    @rule(data=st.data())
    def advance_an_order(self, data) -> None:  # noqa: ANN001
        """The next step of one order's life: one rule, so that hypothesis's swarm testing,
        which switches rules off for a whole example, cannot leave orders stuck halfway."""
        order_id = data.draw(st.sampled_from(self.in_state(*NEXT_STEP)))
        step = getattr(self, NEXT_STEP[self.orders[order_id]])
        step(order_id, data)

    def accept(self, order_id: str, data) -> None:  # noqa: ANN001
        post(self.loop, self.partner, order_id, "accept")
        self.until_orders_shows(order_id, "accepted")
        self.orders[order_id] = "accepted"

    def complete(self, order_id: str, data) -> None:  # noqa: ANN001
        labour, travel = data.draw(st.integers(0, 9000)), data.draw(st.integers(0, 2000))
        with_part = data.draw(st.booleans())
        now = self.loop.clock.now()
        post(self.loop, self.partner, order_id, "schedule", {
            "window_start": isoformat(now), "window_end": isoformat(now + timedelta(hours=2))})
        self.until_orders_shows(order_id, "scheduled")
        post(self.loop, self.partner, order_id, "arrive", {
            "coordinates": {"lat": 23.13, "lon": 113.33}})
        self.until_orders_shows(order_id, "on_site")
        parts = []
        if with_part:
            old = f"OLD-{uuid.uuid4().hex[:10]}"
            parts = [{"part_code": "WH-P-HEATER-2KW", "old_serial": old,
                      "new_serial": f"NEW-{uuid.uuid4().hex[:10]}", "fee_cents": 11000}]
            self.old_parts.append(old)
        post(self.loop, self.partner, order_id, "complete", {
            "work_done": "换加热管", "fault_code": "WH-E1", "labour_fee_cents": labour,
            "travel_fee_cents": travel, "travel_distance_km": 12, "parts": parts})
        self.until_orders_shows(order_id, "completed")
        self.visits[order_id] += 1
        visit = self.visits[order_id]
        wait_until(lambda: len(self.claims(order_id)) == visit, message="the visit's claim")
        wait_until(lambda: [t for t in self.loop.callback.tasks_for_order(order_id)
                            if t["visit"] == visit and t["status"] == "open"],
                   message="the visit's callback task")
        self.orders[order_id] = "completed"

    def call_the_customer(self, order_id: str, data) -> None:  # noqa: ANN001
        outcome = data.draw(st.sampled_from(["verified", "disputed"]))
        task, agent = self.lease_task_of(order_id)
        extra = {"satisfaction": 5} if outcome == "verified" else {
            "dispute_reasons": ["not_fixed"]}
        self.loop.callback.record_outcome({"task_id": task["task_id"], "agent_id": agent,
                                           "outcome": outcome, **extra})
        wait_until(lambda: self.claims(order_id)[-1]["callback"] == outcome,
                   message="settlement to hear the outcome")
        if outcome == "verified":
            self.until_orders_shows(order_id, "verified")
            self.orders[order_id] = "verified"
        else:  # reopened and sent out again, to the same partner: not its fault
            self.until_orders_shows(order_id, "assigned")
            wait_until(lambda: self.loop.dispatch_status(order_id) == "assigned",
                       message="dispatch to assign it again")
            self.orders[order_id] = "assigned"

    @precondition(lambda self: self.old_parts)
    @rule(data=st.data())
    def old_part_returned(self, data) -> None:  # noqa: ANN001
        serial = data.draw(st.sampled_from(self.old_parts))
        self.old_parts.remove(serial)
        self.loop.settlement.record_part_return({"serial": serial, "parts_centre": "广州"})

    @precondition(lambda self: self.in_state("verified"))
    @rule()
    def run_the_period(self) -> None:
        period = self.period()
        closing = period not in self.periods_run
        statements = [s for s in self.loop.settlement.run(period)
                      if s["partner_id"] == self.partner.partner_id]
        assert [s for s in self.loop.settlement.run(period)
                if s["partner_id"] == self.partner.partner_id] == statements  # closed: same
        if closing:
            self.periods_run[period] = statements[0]["payable_cents"] if statements else None
            for order_id in self.orders:
                for claim in self.claims(order_id):
                    self.settled[claim["claim_id"]] = claim["payable_cents"]
        for order_id, status in self.orders.items():
            # settled: paid, or decided for good with nothing owed (nothing still held)
            settled = [line for s in statements for line in s["lines"]
                       if line["order_id"] == order_id
                       and (line["payable_cents"] > 0 or line["held_cents"] == 0)]
            if status == "verified" and settled:
                self.until_orders_shows(order_id, "closed")  # its loop is closed
                self.orders[order_id] = "closed"

    @precondition(lambda self: self.period() in self.periods_run
                  and not self.in_state("assigned", "accepted"))
    @rule()
    def next_month(self) -> None:
        """After a run, and with no partner's clock running: moving time must not breach an
        SLA here."""
        self.loop.clock.advance(days=31)

    # -- faults ----------------------------------------------------------------------------

    def fault_allowed(self) -> bool:
        return bool(self.orders) and self.faults < FAULTS_PER_EXAMPLE

    @precondition(fault_allowed)
    @rule(data=st.data(), source=st.sampled_from(["orders", "dispatch", "callback"]))
    def deliver_an_event_again(self, data, source: str) -> None:  # noqa: ANN001
        self.faults += 1
        order_id = data.draw(st.sampled_from(list(self.orders)))
        consumed = {(s.source, s.event_type) for s in SUBSCRIPTIONS}
        envelopes = [e for e in getattr(self.loop, source).events_for(order_id)
                     if (source, e["event_type"]) in consumed]
        if not envelopes:
            return
        # indexes, not sampled_from: how many events a log holds is the system's business,
        # and hypothesis wants the same kind of draw each time it replays a choice
        envelope = envelopes[data.draw(st.integers(0, 99)) % len(envelopes)]
        consumers = [s for s in SUBSCRIPTIONS
                     if (s.source, s.event_type) == (source, envelope["event_type"])]
        consumer = consumers[data.draw(st.integers(0, 9)) % len(consumers)]
        queue = queue_name(*consumer)
        # straight into that consumer's queue (the default exchange routes by queue name)
        connection = pika.BlockingConnection(pika.URLParameters(self.loop.broker_uri))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, json.dumps(envelope).encode(),
                              message_properties(envelope))
        connection.close()
        wait_until(lambda: queue_drained(self.loop.broker_uri, queue),
                   message=f"{queue} to take the copy")

    @precondition(fault_allowed)
    @rule(service=st.sampled_from(SERVICES))
    def restart(self, service: str) -> None:
        self.faults += 1
        self.loop.restart(service)

    # -- what must always hold ----------------------------------------------------------------

    @invariant()
    def at_most_one_paid_claim_per_order(self) -> None:
        for order_id in self.orders:
            claims = self.claims(order_id)
            assert len(claims) == self.visits[order_id]  # one per visit, never per delivery
            assert sum(1 for c in claims if c["payable_cents"] > 0) <= 1
            for claim in claims:
                approved = sum(line["manufacturer_cents"] for line in claim["lines"]
                               if line["decision"] in PAID)
                assert claim["payable_cents"] == approved, claim

    @invariant()
    def statements_pay_the_claims_as_they_stood_when_run(self) -> None:
        paid = 0
        for period, payable in self.periods_run.items():
            if payable is None:  # no claim of this partner's when it was run
                continue
            statement = self.loop.settlement.statement(period, self.partner.partner_id)
            assert statement["payable_cents"] == sum(line["payable_cents"]
                                                     for line in statement["lines"])
            assert statement["payable_cents"] == payable
            paid += statement["payable_cents"]
        assert paid == sum(self.settled.values())

    @invariant()
    def only_legal_transitions_in_the_orders_log(self) -> None:
        for order_id, expected in self.orders.items():
            seen = statuses(self.loop.orders.order_history(order_id))
            changes = [(a, b) for a, b in zip([None, *seen], seen, strict=False) if a != b]
            illegal = [(a, b) for a, b in changes if not legal(a, b)]
            assert not illegal, f"{order_id}: {illegal} in {seen}"
            assert seen[-1] == expected, f"{order_id}: orders shows {seen[-1]}, not {expected}"

    def teardown(self) -> None:
        """Leave the agents' queue empty for the next example."""
        for agent in [*self.leases.values(), "a-cleanup"]:
            while (task := self.loop.callback.next_task(agent)) is not None:
                self.loop.callback.record_outcome({"task_id": task["task_id"],
                                                   "agent_id": agent, "outcome": "verified"})


def test_the_loop_keeps_its_promises_under_duplicates_and_restarts(system):
    run_state_machine_as_test(lambda: LoopModel(system), settings=settings(
        max_examples=10, stateful_step_count=15, deadline=None, derandomize=True,
        database=None, phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck)))
