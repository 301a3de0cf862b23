"""Simulated service partners and callback agents driving real orders round the whole loop.

Partners work over the real signed gateway (serviceloop.partner_sdk, with the credentials
`serviceloop seed` saved under var/partners/), agents over nameko RPC (callback.next_task,
record_outcome), and the call centre opens the orders over RPC. What happens to each order
is its Script, drawn from a seeded random generator: a partner rejects it, lets it time out,
the customer disputes the visit, never answers the callback, or a claim reuses a part serial.
`serviceloop demo` and the load benchmark (bench/loop.py) are built on this.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import eventlet

from contracts.dispatch import REJECT_REASONS
from contracts.errors import ConcurrencyConflict, ServiceError
from serviceloop.client import cluster
from serviceloop.clock import OffsetFileClock, isoformat
from serviceloop.config import var_dir
from serviceloop.partner_sdk import PartnerClient
from services.callback.domain import PARTNER_FAULT_REASONS
from services.dispatch.assignment import PartnerProfile, covers
from services.orders.catalog import CATALOG

log = logging.getLogger(__name__)

CLOCK_OFFSET_FILE = "clock-offset"
# what can happen to an order; all but NORMAL need a second partner for the district
NORMAL, REJECTED, TIMED_OUT, DISPUTED, UNREACHABLE, DUPLICATE_SERIAL = (
    "normal", "partner_rejects", "accept_timeout", "disputed", "unreachable",
    "duplicate_serial")
NEEDS_SECOND_PARTNER = (REJECTED, TIMED_OUT, DISPUTED)


def clock_offset_path() -> Path:
    """The file `serviceloop up` gives its services as their clock's offset (seconds)."""
    return var_dir() / CLOCK_OFFSET_FILE


class MovableClock(OffsetFileClock):
    """The services' business time, which the simulation can move forward."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(str(path or clock_offset_path()))

    def offset(self) -> float:
        return self._current_offset().total_seconds()

    def advance(self, minutes: float) -> None:
        offset = round(self.offset() + minutes * 60)
        path = Path(self.path)
        spare = path.with_suffix(".tmp")
        spare.write_text(f"{offset}\n")
        spare.replace(path)  # readers see the old offset or the new, never half of it


# -- what the world knows about each order ------------------------------------------------


@dataclass
class Script:
    """An order's planned life and what has happened to it so far."""

    order_id: str
    plan: str
    order_type: str
    created: float = field(default_factory=time.monotonic)
    rejected_by: set[str] = field(default_factory=set)
    ignored_by: set[str] = field(default_factory=set)
    visits: list[str] = field(default_factory=list)  # partners that completed, in order
    no_answers: int = 0
    outcome: str | None = None  # verified | unverified (the callback's final word)
    finished: float | None = None  # monotonic time of the outcome
    # monotonic time of each step first seen here: "assigned" (a partner saw it),
    # "completed" (the gateway took the report), "task" (an agent got the callback task)
    marks: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    order_id: str
    partner_id: str
    report: dict


class World:
    """The scripts of the orders in play and every completion reported, shared by the actors
    (green threads in one process: no locks needed)."""

    def __init__(self, seed: int, rates: dict, clock: MovableClock | None = None) -> None:
        self.rng = random.Random(f"serviceloop.simulation:{seed}")
        self.card = RateCard(rates)
        self.clock = clock or MovableClock()
        self.scripts: dict[str, Script] = {}
        self.completions: list[Completion] = []
        self.problems: list[str] = []  # what an actor was refused, for the report
        self.acted = 0  # actions taken, so progress can be shown
        self.finished = 0  # scripts with an outcome
        self.polls = 0  # partners' looks at the gateway for new assignments

    def finish(self, script: Script, outcome: str) -> None:
        script.outcome, script.finished = outcome, time.monotonic()
        self.finished += 1

    def script(self, order_id: str, order_type: str = "repair") -> Script:
        """An order nobody planned (left from an earlier run) is treated as ordinary."""
        if order_id not in self.scripts:
            self.scripts[order_id] = Script(order_id, NORMAL, order_type)
        return self.scripts[order_id]

    def tally(self) -> Counter:
        return Counter(s.outcome or "in flight" for s in self.scripts.values())

    def claimed_serials(self) -> list[str]:
        return [p["new_serial"] for c in self.completions for p in c.report.get("parts", ())]


class RateCard:
    """What a partner knows it may charge: the card finance loaded (settlement.current_rates)."""

    def __init__(self, rates: dict) -> None:
        card = rates.get("rates", {})
        self.labour_rows = card.get("labour", [])
        self.travel_bands = sorted((r["up_to_km"], r["cents"]) for r in card.get("travel", []))
        self.parts = {row["part_code"]: row["cents"] for row in rates.get("parts", [])}

    def labour(self, order_type: str, category: str) -> int:
        rows = [r for r in self.labour_rows if r["order_type"] == order_type
                and r["category"] in (category, "*")]
        rows.sort(key=lambda r: r["category"] == "*")  # the category's own rate first
        return rows[0]["cents"] if rows else 5000

    def travel(self, km: int) -> int:
        return next((cents for up_to, cents in self.travel_bands if km <= up_to), 0)


# -- partners -------------------------------------------------------------------------------


class SimulatedPartner:
    """A partner's system: polls the gateway for new assignments and has its technicians
    work each one as its script says (reject it, let it time out, or accept, schedule,
    arrive and complete)."""

    def __init__(self, client: PartnerClient, world: World, technicians: int = 4) -> None:
        self.client = client
        self.partner_id = client.partner_id
        self.world = world
        self.technicians = eventlet.GreenPool(technicians)
        self.busy: set[str] = set()  # orders a technician is on
        self.unfinished: set[str] = set()  # orders a refused step left half-way

    def work(self) -> int:
        """One look at the gateway; how many orders went to a technician."""
        views = self.client.list_orders(status="assigned", page_size=100)["items"]
        self.world.polls += 1
        views += [self.client.get_order(order_id) for order_id in list(self.unfinished)]
        fresh = [view for view in views if view["order_id"] not in self.busy]
        for view in fresh:
            self.world.script(view["order_id"], view["order_type"]).marks.setdefault(
                "assigned", time.monotonic())
            self.busy.add(view["order_id"])
            self.technicians.spawn(self._visit, view)
        return len(fresh)

    def _visit(self, view: dict) -> None:
        try:
            self.act(view)
            self.unfinished.discard(view["order_id"])
        except ServiceError as error:
            self.world.problems.append(f"partner {self.partner_id} on "
                                       f"{view['order_id']}: {error.code}")
            if getattr(error, "status", 0) in (0, 409) or error.code == "order_reassigned":
                self.unfinished.discard(view["order_id"])
            else:
                self.unfinished.add(view["order_id"])
        finally:
            self.busy.discard(view["order_id"])

    def act(self, view: dict) -> int:
        script = self.world.script(view["order_id"], view["order_type"])
        order_id, status = view["order_id"], view["status"]
        if status == "assigned":
            if script.plan == REJECTED and not script.rejected_by:
                script.rejected_by.add(self.partner_id)
                self.client.reject(order_id, self.world.rng.choice(REJECT_REASONS[:4]),
                                   "不在服务范围")
                return 1
            if script.plan == TIMED_OUT and (not script.ignored_by
                                             or self.partner_id in script.ignored_by):
                script.ignored_by.add(self.partner_id)  # never answers: the timer moves it on
                return 0
            self.client.accept(order_id)
            status = "accepted"
        now = self.world.clock.now()
        if status == "accepted":
            self.client.schedule(order_id, isoformat(now), isoformat(now + timedelta(hours=2)))
            status = "scheduled"
        if status == "scheduled":
            address = view["customer"]["address"]
            self.client.arrive(order_id, address.get("lat"), address.get("lon"), 15)
            status = "on_site"
        if status == "on_site":
            report = self.report(view, script)
            self.client.complete(order_id, **report)
            script.visits.append(self.partner_id)
            script.marks.setdefault("completed", time.monotonic())
            self.world.completions.append(Completion(order_id, self.partner_id, report))
        self.world.acted += 1
        return 1

    def report(self, view: dict, script: Script) -> dict:
        """What was done: the catalogue's fault, a plausible part most of the time, fees at
        the card (now and then above it, which settlement cuts)."""
        rng, card = self.world.rng, self.world.card
        km = rng.randint(2, 45)
        labour = card.labour(view["order_type"], view["category"])
        report = {"work_done": "检修完成", "labour_fee_cents": labour
                  + (1000 if rng.random() < 0.1 else 0),
                  "travel_fee_cents": card.travel(km), "travel_distance_km": km}
        if view["order_type"] != "repair":
            return report
        fault = CATALOG.fault(view["fault_code"])
        report["fault_code"] = fault.code
        if script.plan == DUPLICATE_SERIAL or (fault.plausible_parts and rng.random() < 0.7):
            part = rng.choice(sorted(fault.plausible_parts)
                              or [p.code for p in CATALOG.parts(view["category"])])
            charged_to = "manufacturer" if view["in_warranty"] else "customer"
            serial = f"NEW-{rng.getrandbits(48):012X}"
            if script.plan == DUPLICATE_SERIAL and self.world.claimed_serials():
                serial = rng.choice(self.world.claimed_serials())  # the planted bad claim
            report["parts"] = [{"part_code": part, "old_serial": f"OLD-{rng.getrandbits(48):012X}",
                                "new_serial": serial, "charged_to": charged_to,
                                "fee_cents": card.parts.get(part, 5000)}]
            if charged_to == "customer":
                report["customer_paid_cents"] = report["parts"][0]["fee_cents"]
        return report


# -- callback agents ------------------------------------------------------------------------


class SimulatedAgent:
    """A call-centre agent working the callback queue; the customer on the phone answers
    as the order's script says."""

    def __init__(self, agent_id: str, world: World) -> None:
        self.agent_id = agent_id
        self.world = world

    def work(self, rpc) -> int:  # noqa: ANN001 - a nameko ClusterRpcProxy
        task = rpc.callback.next_task(self.agent_id)
        if task is None:
            return 0
        script = self.world.script(task["order_id"])
        script.marks.setdefault("task", time.monotonic())
        record = {"task_id": task["task_id"], "agent_id": self.agent_id}
        if script.plan == DISPUTED and task["visit"] == 1:
            record.update(outcome="disputed", dispute_reasons=[
                self.world.rng.choice(sorted(PARTNER_FAULT_REASONS))], notes="师傅没修好")
        elif script.plan == UNREACHABLE:
            record["outcome"] = "no_answer"
        else:
            record.update(outcome="verified", satisfaction=self.world.rng.choice((3, 4, 5, 5, 5)))
        try:
            answer = rpc.callback.record_outcome(record)
        except ConcurrencyConflict:
            return 0  # the task moved under us; it is still ours at the next look
        except ServiceError as error:
            self.world.problems.append(f"agent {self.agent_id} on {task['task_id']}: "
                                       f"{error.code}")
            return 0
        if record["outcome"] == "no_answer":
            script.no_answers += 1
            if answer["status"] == "unverified":
                self.world.finish(script, "unverified")
        elif record["outcome"] == "verified":
            self.world.finish(script, "verified")
        self.world.acted += 1
        return 1


# -- supervisors ----------------------------------------------------------------------------


class SimulatedSupervisor:
    """Hands an escalated order (nobody qualified had capacity left) to a partner covering
    the district who has not already had it; an order nobody covers stays escalated."""

    def __init__(self, world: World, partners: list[dict]) -> None:
        self.world = world
        self.profiles = [profile(p) for p in partners]

    def work(self, rpc) -> int:  # noqa: ANN001 - a nameko ClusterRpcProxy
        acted = 0
        for order in rpc.dispatch.escalations():
            script = self.world.scripts.get(order["order_id"])
            if script is None or script.outcome:
                continue  # not this simulation's, or already given up on
            district = (order["province"], order["city"], order["district"])
            choices = sorted(p.partner_id for p in self.profiles
                             if p.active and covers(p, district)
                             and order["category"] in p.categories
                             and p.partner_id not in order["excluded"])
            if not choices:
                self.world.finish(script, "escalated")
                continue
            rpc.dispatch.assign({"order_id": order["order_id"], "agent_id": "sim-supervisor",
                                 "partner_id": self.world.rng.choice(choices)})
            acted += 1
        return acted


def profile(partner: dict) -> PartnerProfile:
    """A partner as dispatch lists it, in assignment's terms."""
    return PartnerProfile(partner["partner_id"], partner["name"], frozenset(
        (r["province"], r["city"], r["district"]) for r in partner["regions"]),
        frozenset(partner["categories"]), partner["daily_capacity"], partner["rating"],
        partner["active"])


# -- running the actors ---------------------------------------------------------------------


class Simulation:
    """Every partner and agent as a green thread, polling while there is nothing to do."""

    IDLE_POLL = (0.2, 1.0)  # seconds: first wait after an idle look, and the longest

    def __init__(self, world: World, partners: list[SimulatedPartner],
                 agents: list[SimulatedAgent],
                 supervisor: SimulatedSupervisor | None = None) -> None:
        self.world = world
        self.partners = partners
        self.agents = agents
        self.supervisor = supervisor
        self.running = False
        self.pool = eventlet.GreenPool(len(partners) + len(agents) + 2)

    def start(self) -> Simulation:
        self.running = True
        for partner in self.partners:
            self.pool.spawn(self._loop, partner.work, f"partner {partner.partner_id}")
        for agent in self.agents:
            self.pool.spawn(self._with_rpc, agent.work, f"agent {agent.agent_id}")
        if self.supervisor:
            self.pool.spawn(self._with_rpc, self.supervisor.work, "supervisor")
        return self

    def stop(self) -> None:
        self.running = False
        self.pool.waitall()
        for partner in self.partners:
            partner.technicians.waitall()
            partner.client.close()

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _with_rpc(self, work: Callable, who: str) -> None:
        with cluster() as rpc:  # one proxy per green thread
            self._loop(lambda: work(rpc), who)

    def _loop(self, work: Callable[[], int], who: str) -> None:
        wait = self.IDLE_POLL[0]
        while self.running:
            try:
                busy = work()
            except Exception as error:  # noqa: BLE001 - an actor keeps going, the run reports it
                self.world.problems.append(f"{who}: {type(error).__name__}: {error}"[:300])
                busy = 0
            wait = self.IDLE_POLL[0] if busy else min(wait * 2, self.IDLE_POLL[1])
            if not busy:
                eventlet.sleep(wait)
            else:
                eventlet.sleep(0)


def partners_from_folder(world: World, folder: Path | None = None,
                         technicians: int = 4) -> list[SimulatedPartner]:
    """One simulated partner per credentials file `serviceloop seed` saved."""
    folder = folder or var_dir() / "partners"
    # a connection for each technician and one for the poller: none opened per request
    return [SimulatedPartner(PartnerClient.from_file(path, timeout=30,
                                                     connections=technicians + 1),
                             world, technicians)
            for path in sorted(folder.glob("*.json"))]


def agents(count: int, world: World) -> list[SimulatedAgent]:
    return [SimulatedAgent(f"sim-agent-{n + 1}", world) for n in range(count)]


# -- the call centre: orders to drive ---------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A customer's product an order can be opened for, and how many partners could take it."""

    product_id: str
    category: str
    partners: int


def candidates(rpc, phones: Iterable[str], partners: list[dict]) -> list[Candidate]:  # noqa: ANN001
    """The products of these customers, with the number of partners covering each."""
    profiles = [profile(p) for p in partners]
    found = []
    for phone in phones:
        caller = rpc.orders.lookup(phone)
        address = caller["customer"]["address"]
        district = (address["province"], address["city"], address["district"])
        for product in caller["products"]:
            if not _fully_covered(product):
                continue  # work the customer pays for is never settled with the partner
            if any(o["product_id"] == product["product_id"] and o["status"] not in (
                    "closed", "cancelled") for o in caller["orders"]):
                continue  # one open order per product
            qualified = sum(1 for p in profiles if p.active and covers(p, district)
                            and product["category"] in p.categories)
            found.append(Candidate(product["product_id"], product["category"], qualified))
    return found


def _fully_covered(product: dict) -> bool:
    unit = next(t for t in product["warranty"] if t["component"] == "unit")
    return unit["parts_covered"] and unit["labour_covered"]


def assign_plans(pool: list[Candidate], count: int, rng: random.Random,
                 shares: dict[str, float]) -> list[tuple[Candidate, str]]:
    """`count` candidates with a plan each: every plan in `shares` at least once (those
    needing a second partner only where two cover it), the rest ordinary."""
    pool = list(pool)
    rng.shuffle(pool)
    chosen: list[tuple[Candidate, str]] = []
    for plan, share in shares.items():
        wanted = max(1, round(count * share))
        fits = [c for c in pool if plan not in NEEDS_SECOND_PARTNER or c.partners >= 2]
        for candidate in fits[:wanted]:
            pool.remove(candidate)
            chosen.append((candidate, plan))
    chosen += [(c, NORMAL) for c in pool[:max(0, count - len(chosen))]]
    rng.shuffle(chosen)
    return chosen[:count]


def open_order(rpc, world: World, candidate: Candidate, plan: str,  # noqa: ANN001
               agent_id: str = "sim-intake") -> Script | None:
    """Create the order over RPC (a repair with a catalogue fault code); None if the product
    already had an open order."""
    order_type = "repair" if plan != NORMAL or world.rng.random() < 0.75 else "maintenance"
    payload = {"product_id": candidate.product_id, "order_type": order_type,
               "channel": "phone", "agent_id": agent_id, "description": "客户来电报修",
               "request_id": f"sim-{world.rng.getrandbits(64):016x}"}
    if order_type == "repair":
        faults = [f for f in CATALOG.faults(candidate.category)
                  if f.plausible_parts or plan != DUPLICATE_SERIAL]
        payload["fault_code"] = world.rng.choice(faults).code
    created = time.monotonic()
    order = rpc.orders.create_order(payload)
    if not order.get("created", True):
        return None
    script = Script(order["order_id"], plan, order_type, created=created)
    world.scripts[script.order_id] = script
    return script


def return_old_parts(rpc, world: World, centre: str = "广州配件中心",  # noqa: ANN001
                     skip: Iterable[str] = ()) -> int:
    """The parts centre receives every replaced in-warranty part (so its line can be paid)."""
    skipped, returned = set(skip), 0
    for completion in world.completions:
        if completion.order_id in skipped:
            continue
        for part in completion.report.get("parts", ()):
            if part["charged_to"] == "manufacturer":
                rpc.settlement.record_part_return({"serial": part["old_serial"],
                                                   "parts_centre": centre})
                returned += 1
    return returned


def until(probe: Callable[[], object], timeout: float, what: str, every: float = 0.5,
          tolerate: tuple[type[Exception], ...] = ()) -> object:
    """`probe()`'s first truthy answer, or TimeoutError after `timeout` seconds; an error in
    `tolerate` (a service restarting, a dropped connection) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = probe()
        except tolerate as error:
            log.warning("waiting for %s: %s", what, error)
            answer = None
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        eventlet.sleep(every)
