"""A steady load round the whole loop, for the fault scenarios.

The call centre opens repair orders over RPC (each with its own request id, retried with the
same id until it gets an answer, as an agent's desktop would); simulated partners take every
order assigned to them through accept, schedule, arrive and complete over the signed gateway;
simulated agents verify every callback task over RPC. Every create_order that returned is
recorded: those are the orders the system accepted and must never lose.

Each partner claims LABOUR_CENTS + TRAVEL_CENTS, under the demo rate card, so every verified
claim is approved in full and the money expected is known exactly.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import eventlet

from contracts.errors import ServiceError
from serviceloop.clock import OffsetFileClock, isoformat
from serviceloop.partner_sdk import PartnerClient
from serviceloop.seeding import demo_customers, seed_customers, seed_rates
from services.orders.catalog import CATALOG

CUSTOMERS = 150
PARTNERS = 4
LABOUR_CENTS, TRAVEL_CENTS, TRAVEL_KM = 5000, 1000, 5  # under every demo card rate
CLAIM_CENTS = LABOUR_CENTS + TRAVEL_CENTS
IDLE_POLL = (0.1, 0.5)  # seconds: an actor's first wait after finding nothing, and longest
RPC_TIMEOUT = 8  # seconds a simulated caller waits for an answer before asking again


@dataclass
class World:
    """What the load may use: products nobody has an order for yet, partners' credentials."""

    products: list[tuple[str, str]]  # (product_id, category)
    partners: list[dict]  # {"partner_id", "secret"}
    clock: OffsetFileClock


def seed_world(system, customers: int = CUSTOMERS, seed: int = 7) -> World:  # noqa: ANN001
    """Customers and products, partners covering every province and category, the rate card."""
    seed_rates()
    seed_customers(customers, seed=seed)
    people = list(demo_customers(customers, seed))
    provinces = sorted({c.address.province for c in people})
    categories = [c.code for c in CATALOG.categories()]
    products, partners = [], []
    with system.rpc() as rpc:
        for person in people:
            products += [(p["product_id"], p["category"])
                         for p in rpc.orders.lookup(person.phone)["products"]]
        for n in range(PARTNERS):
            answer = rpc.dispatch.register_partner({
                "name": f"故障测试服务部{n + 1}", "daily_capacity": 10_000, "rating": 4.0,
                "categories": categories, "agent_id": "faults",
                "regions": [{"province": p, "city": "*", "district": "*"} for p in provinces]})
            partners.append({"partner_id": answer["partner"]["partner_id"],
                             "secret": answer["secret"]})
    products.sort()
    return World(products, partners,
                 OffsetFileClock(system.env["SERVICELOOP_CLOCK"].removeprefix("file:")))


@dataclass
class Load:
    """The actors, as green threads; `accepted` is every order create_order answered with."""

    system: object
    world: World
    # two agents race for the tasks, as at a call centre: each visit is still verified once
    # (two once found a bug in services/callback that let both verify one visit, fixed since)
    agents: int = 2
    partner_class: type[PartnerClient] = PartnerClient
    accepted: dict[str, str] = field(default_factory=dict)  # order_id -> request_id
    completed: set[str] = field(default_factory=set)  # orders a partner saw completed
    verified: set[str] = field(default_factory=set)  # tasks an agent saw verified
    problems: list[str] = field(default_factory=list)  # what went wrong, for the report
    retries: Counter = field(default_factory=Counter)  # RPC method -> calls asked again
    # each agent sends every outcome a second time with its request id, as a desktop whose
    # answer was lost would: the second answer must be the first, and the visit verified once
    agents_ask_twice: bool = False

    def __post_init__(self) -> None:
        self.running = False
        self.pool = eventlet.GreenPool(64)
        self.intake: eventlet.greenthread.GreenThread | None = None
        self.intake_stopped = False

    # -- running -------------------------------------------------------------------------------

    def __enter__(self) -> Load:
        with self.system.rpc() as rpc:
            self.since = rpc.orders.log_head()["position"]  # this scenario's orders follow
        self.running = True
        for credentials in self.world.partners:
            client = self.partner_class(self.system.gateway(), credentials["partner_id"],
                                        credentials["secret"], timeout=10, retries=3)
            self.pool.spawn(self._loop, SimulatedPartner(client, self).work,
                            f"partner {client.partner_id}")
        for n in range(self.agents):
            self.pool.spawn(self._agent, f"fault-agent-{n + 1}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        if self.intake is not None:
            self.intake.wait()
        self.pool.waitall()

    def open_orders(self, seconds: float, rate: float = 2.0) -> None:
        """Start opening `rate` orders a second for `seconds` (in the background)."""
        self.intake = eventlet.spawn(self._intake, seconds, rate)

    def intake_done(self) -> None:
        """Wait for the intake to have opened its last order."""
        self.intake.wait()

    def intake_open(self) -> bool:
        """Whether the intake is still opening orders."""
        return self.intake is not None and not self.intake.dead

    def stop_intake(self) -> None:
        """Open no more orders (before `open_orders`' time is up); wait for those opening."""
        self.intake_stopped = True
        self.intake_done()

    def summary(self) -> str:
        return (f"{len(self.accepted)} orders accepted, {len(self.completed)} completed, "
                f"{len(self.verified)} verified by agents, {self.retries['create_order']} "
                f"create_order and {self.retries['record_outcome']} record_outcome retries, "
                f"{self.retries['record_outcome sent again']} outcomes sent again, "
                f"{len(self.problems)} refusals/errors seen by actors "
                f"(first: {self.problems[:3]})")

    # -- the actors ----------------------------------------------------------------------------

    def _intake(self, seconds: float, rate: float) -> None:
        started = time.monotonic()
        callers = eventlet.GreenPool(8)  # a slow answer does not hold up the next call
        opened = 0
        while time.monotonic() - started < seconds and self.running \
                and not self.intake_stopped:
            if opened < (time.monotonic() - started) * rate and self.world.products:
                callers.spawn(self._create_order, self.world.products.pop())
                opened += 1
            eventlet.sleep(0.02)
        callers.waitall()

    def _create_order(self, product: tuple[str, str]) -> None:
        """One call-centre agent opening one order: asks again with the same request id until
        the system answers (at most a minute)."""
        product_id, category = product
        payload = {"product_id": product_id, "order_type": "repair", "channel": "phone",
                   "agent_id": "fault-intake", "description": "客户来电报修",
                   "fault_code": CATALOG.faults(category)[0].code,
                   "request_id": f"faults-{uuid.uuid4().hex}"}
        try:
            order = self._until_answered(lambda rpc: rpc.orders.create_order(payload),
                                         f"create_order {payload['request_id']}", "create_order")
        except ServiceError as error:
            self.problems.append(f"create_order refused: {error.code}")
            return
        if order is not None:
            self.accepted[order["order_id"]] = payload["request_id"]

    def _until_answered(self, ask: Callable, who: str, method: str):  # noqa: ANN202
        """`ask(rpc)` on a fresh connection, again after an error that is not an answer (the
        broker or the service away) until the system answers, for at most a minute past the
        load: the call carries a request id, so asking again has one effect. None if it never
        answered; a ServiceError is an answer, raised."""
        deadline = time.monotonic() + 60
        while self.running or time.monotonic() < deadline:
            try:
                with self.system.rpc(timeout=RPC_TIMEOUT) as rpc:
                    return ask(rpc)
            except ServiceError:
                raise
            except Exception as error:  # noqa: BLE001 - away: ask again
                self.retries[method] += 1
                self._note(who, error)
                if time.monotonic() > deadline:
                    return None
                eventlet.sleep(0.5)
        return None

    def _agent(self, agent_id: str) -> None:
        while self.running:
            try:
                with self.system.rpc(timeout=RPC_TIMEOUT) as rpc:
                    self._loop(lambda: self._verify_next(rpc, agent_id), f"agent {agent_id}",
                               give_up_on_error=True)
            except Exception as error:  # noqa: BLE001 - no broker: try again shortly
                self._note(f"agent {agent_id} connecting", error)
                eventlet.sleep(0.5)

    def _verify_next(self, rpc, agent_id: str) -> int:  # noqa: ANN001
        task = rpc.callback.next_task(agent_id)
        if task is None:
            return 0
        outcome = {"task_id": task["task_id"], "agent_id": agent_id, "outcome": "verified",
                   "satisfaction": 5}
        request_id = f"{agent_id}-{task['task_id']}"  # the desktop's, kept until answered
        who = f"agent {agent_id} on {task['task_id']}"

        def ask(rpc) -> dict:  # noqa: ANN001
            return rpc.callback.record_outcome(outcome, request_id=request_id)

        try:
            answered = self._until_answered(ask, who, "record_outcome")
            if self.agents_ask_twice and answered is not None:
                again = self._until_answered(ask, who, "record_outcome")
                self.retries["record_outcome sent again"] += 1
                if again != answered:
                    self.problems.append(f"{who}: asked again, answered {again}, "
                                         f"not {answered}")
        except ServiceError as error:  # e.g. the lease ran out while the system was away
            self.problems.append(f"{who}: {error.code}")
            return 0
        if answered is None:
            return 0
        self.verified.add(task["task_id"])
        return 1

    def _loop(self, work: Callable[[], int], who: str, give_up_on_error: bool = False) -> None:
        wait = IDLE_POLL[0]
        while self.running:
            try:
                busy = work()
            except ServiceError as error:
                self.problems.append(f"{who}: {error.code}")
                busy = 0
            except Exception as error:  # noqa: BLE001 - an actor keeps going
                self._note(who, error)
                if give_up_on_error:
                    raise
                busy = 0
            wait = IDLE_POLL[0] if busy else min(wait * 2, IDLE_POLL[1])
            eventlet.sleep(0 if busy else wait)

    def _note(self, who: str, error: BaseException) -> None:
        self.problems.append(f"{who}: {type(error).__name__}: {error}"[:200])


class SimulatedPartner:
    """A partner's system: every order assigned to it, accepted, scheduled, visited and
    completed at once; an order a failed request left half-way is looked at again."""

    def __init__(self, client: PartnerClient, load: Load) -> None:
        self.client = client
        self.load = load
        self.unfinished: set[str] = set()

    def work(self) -> int:
        views = self.client.list_orders(status="assigned", page_size=100)["items"]
        for order_id in list(self.unfinished):
            views.append(self.client.get_order(order_id))
            self.unfinished.discard(order_id)
        acted = 0
        for view in views:
            try:
                self.act(view)
                acted += 1
            except ServiceError as error:
                self.load.problems.append(f"partner on {view['order_id']}: {error.code}")
                self.unfinished.add(view["order_id"])
        return acted

    def act(self, view: dict) -> None:
        order_id, status = view["order_id"], view["status"]
        now = self.load.world.clock.now()
        if status == "assigned":
            self.client.accept(order_id)
            status = "accepted"
        if status == "accepted":
            self.client.schedule(order_id, isoformat(now), isoformat(now + timedelta(hours=2)))
            status = "scheduled"
        if status == "scheduled":
            address = view["customer"]["address"]
            self.client.arrive(order_id, address.get("lat"), address.get("lon"), 15)
            status = "on_site"
        if status == "on_site":
            self.client.complete(order_id, work_done="检修完成", fault_code=view["fault_code"],
                                 labour_fee_cents=LABOUR_CENTS, travel_fee_cents=TRAVEL_CENTS,
                                 travel_distance_km=TRAVEL_KM)
            status = "completed"
        if status == "completed":
            self.load.completed.add(order_id)
