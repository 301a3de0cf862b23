"""`serviceloop demo`: against a running system, a few hundred orders round the whole loop
(simulated partners over the gateway, simulated agents over RPC), time moved on for the
timeouts and retries, the month settled, and the audit of what happened."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from nameko.exceptions import RemoteError, RpcTimeout, UnknownService

from contracts.errors import NotFound, ServiceError
from serviceloop import audit, simulation
from serviceloop.client import cluster
from serviceloop.seeding import demo_customers, seed_customers, seed_partners, seed_rates
from serviceloop.services import IMPLEMENTED
from serviceloop.simulation import (
    DISPUTED,
    DUPLICATE_SERIAL,
    REJECTED,
    TIMED_OUT,
    UNREACHABLE,
    MovableClock,
    Script,
    Simulation,
    World,
    until,
)

# share of the orders given each plan (each at least once); the rest are ordinary
SHARES = {REJECTED: 0.08, TIMED_OUT: 0.04, DISPUTED: 0.05, UNREACHABLE: 0.01}
ACCEPT_TIMEOUT_MINUTES = 125  # past ACCEPT_WITHIN_MINUTES (120) and the first callback retry
LAST_RETRY_MINUTES = 365  # past the second callback retry (CALLBACK_RETRY_MINUTES 120,360)
PARTNERS, AGENTS = 30, 4


class SystemNotRunning(ServiceError):
    code = "system_not_running"


def check_running(timeout: float = 10) -> None:
    """Every service answers, else a clear error saying how to start them."""
    try:
        with cluster(timeout=timeout) as rpc:
            for service in IMPLEMENTED:
                getattr(rpc, service).log_head()
    except (RpcTimeout, UnknownService, OSError) as error:
        raise SystemNotRunning(
            f"the system is not running ({type(error).__name__}: {error}): start it with "
            "`make run` in another terminal, then run `make demo` again",
            {"system": ["not running"]}) from None


class Demo:
    def __init__(self, orders: int, seed: int = 2026,
                 say: Callable[[str], None] | None = None) -> None:
        self.orders = orders
        self.seed = seed
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.clock = MovableClock()

    def run(self) -> dict:
        check_running()
        started = time.monotonic()
        customers = 2 * self.orders + 100  # about one product in two is under full warranty
        self.say(f"seeding: rate card, {PARTNERS} partners, {customers} customers …")
        seed_rates()
        seed_partners(PARTNERS, seed=self.seed)
        seed_customers(customers, seed=self.seed)
        with cluster(timeout=60) as rpc:
            self._fresh_period(rpc)
            world = World(self.seed, rpc.settlement.current_rates(), self.clock)
            partners = simulation.partners_from_folder(world)
            phones = [c.phone for c in demo_customers(customers, self.seed)]
            pool = simulation.candidates(rpc, phones, rpc.dispatch.list_partners())
            if len(pool) < self.orders:
                self.say(f"only {len(pool)} products under warranty without an open order: "
                         f"driving {len(pool)} orders")
            planted_for = pool.pop()
            plans = simulation.assign_plans(pool, min(len(pool), self.orders - 1), world.rng,
                                            SHARES)
            supervisor = simulation.SimulatedSupervisor(world, rpc.dispatch.list_partners())
            with Simulation(world, partners, simulation.agents(AGENTS, world), supervisor):
                self._intake(rpc, world, plans)
                self._settle_phase(rpc, world, 1, "partners and agents at work")
                planted = simulation.open_order(rpc, world, planted_for, DUPLICATE_SERIAL)
                self._settle_phase(rpc, world, 1, "the planted bad claim")
                self.say(f"moving the clock {ACCEPT_TIMEOUT_MINUTES} min on: accept timeouts, "
                         "first callback retry")
                self.clock.advance(ACCEPT_TIMEOUT_MINUTES)
                self._settle_phase(rpc, world, 2, "re-dispatch after timeouts")
                self.say(f"moving the clock {LAST_RETRY_MINUTES} min on: the last callback "
                         "retry")
                self.clock.advance(LAST_RETRY_MINUTES)
                self._settle_phase(rpc, world, 3, "the unreachable customer")
            returned = simulation.return_old_parts(rpc, world)
            self.say(f"parts centre: {returned} old parts returned")
            periods = self._claims_settled(rpc, world)
            statements = []
            for period in periods:
                self.say(f"settlement run {period} …")
                statements += rpc.settlement.run(period)
            report = self._audit(rpc, world, planted, statements)
        report["seconds"] = round(time.monotonic() - started, 1)
        return report

    def _fresh_period(self, rpc) -> None:  # noqa: ANN001
        """A closed period never changes, so when an earlier run closed this month, this
        run's work happens in the next one."""
        now = self.clock.now()
        period = now.strftime("%Y-%m")
        earlier = rpc.settlement.partners_to_close(period)[:1]
        try:
            for partner_id in earlier:
                rpc.settlement.statement(period, partner_id)
        except NotFound:
            return
        if not earlier:
            return
        following = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=9, minute=0)
        self.say(f"{period} was closed by an earlier run: moving the clock to {following:%Y-%m-%d}")
        self.clock.advance((following - now).total_seconds() / 60)

    # -- the phases -------------------------------------------------------------------------

    def _intake(self, rpc, world: World, plans: list) -> None:  # noqa: ANN001
        self.say(f"call centre: opening {len(plans)} orders …")
        for n, (candidate, plan) in enumerate(plans, 1):
            simulation.open_order(rpc, world, candidate, plan)
            if n % 50 == 0:
                self.say(f"  {n} orders opened; {self._tally(world)}")

    def _settle_phase(self, rpc, world: World, phase: int, what: str) -> None:  # noqa: ANN001
        """Wait until every order has gone as far as it can before time moves on."""
        shown = [0.0]

        def resting() -> bool:
            waiting = [s for s in world.scripts.values() if not _at_rest(s, phase)]
            if time.monotonic() - shown[0] > 5:
                shown[0] = time.monotonic()
                self.say(f"  {what}: {self._tally(world)}, {len(waiting)} still moving"
                         + (f" (last refusal: {world.problems[-1]})" if world.problems else ""))
            return not waiting

        until(resting, 60 + 2 * len(world.scripts), what, every=1.0)

    def _claims_settled(self, rpc, world: World) -> list[str]:  # noqa: ANN001
        """Wait until settlement has decided every claim on its final evidence; the periods
        the claims fall in."""
        pending = {s.order_id for s in world.scripts.values() if s.visits}
        periods: set[str] = set()

        def decided() -> bool:
            for order_id in list(pending):
                claims = rpc.settlement.claims_for_order(order_id)
                if claims and _final(claims[-1], world.scripts[order_id]):
                    periods.update(c["completed_on"][:7] for c in claims)
                    pending.discard(order_id)
            return not pending

        self.say(f"settlement: waiting for {len(pending)} claims to be decided …")
        until(decided, 120, "settlement to decide every claim", every=1.0,
              tolerate=(RemoteError, RpcTimeout))
        return sorted(periods)

    def _tally(self, world: World) -> str:
        return ", ".join(f"{n} {what}" for what, n in sorted(world.tally().items()))

    # -- the audit --------------------------------------------------------------------------

    def _audit(self, rpc, world: World, planted: Script | None,  # noqa: ANN001
               statements: list[dict]) -> dict:
        self.say("audit: reading the four logs …")
        read: dict = {}

        def orders_caught_up() -> bool:
            """Orders closes a paid order when it reads the period's close, a moment after the
            run: until then the audit rightly lists it settled_not_closed_in_orders."""
            read["logs"] = audit.read_logs(rpc, IMPLEMENTED)
            read["loops"] = audit.open_loops(read["logs"], self.clock.now())
            return not any(loop["missing"] == "settled_not_closed_in_orders"
                           and loop["order_id"] in world.scripts for loop in read["loops"])

        try:
            until(orders_caught_up, 60, "orders to close the paid orders", every=1.0)
        except TimeoutError as error:  # then the report shows them open, as they are
            self.say(f"  {error}")
        logs, loops = read["logs"], read["loops"]
        ours = [loop for loop in loops if loop["order_id"] in world.scripts]
        bad = []
        if planted is not None:
            claim = rpc.settlement.claims_for_order(planted.order_id)[-1]
            bad = [{"order_id": planted.order_id, "line_id": line["line_id"],
                    "decision": line["decision"], "reasons": line["reasons"],
                    "claimed_cents": line["claimed_cents"]}
                   for line in claim["lines"] if line["decision"] == "rejected"]
        timed_out = [s for s in world.scripts.values() if s.plan == TIMED_OUT]
        return {
            "orders": len(world.scripts),
            "plans": dict(Counter(s.plan for s in world.scripts.values())),
            "outcomes": dict(world.tally()),
            "loops_closed": len(world.scripts) - len(ours),
            "loops_open": [{**loop, "plan": world.scripts[loop["order_id"]].plan,
                            "visits": world.scripts[loop["order_id"]].visits,
                            "outcome": world.scripts[loop["order_id"]].outcome}
                           for loop in ours],
            "loops_open_elsewhere": len(loops) - len(ours),
            "redispatched_after_timeout": [
                {"order_id": s.order_id, "ignored_by": sorted(s.ignored_by),
                 "completed_by": s.visits} for s in timed_out],
            "disputed_revisits": [{"order_id": s.order_id, "visits": s.visits}
                                  for s in world.scripts.values() if s.plan == DISPUTED],
            "bad_claim": bad,
            "statements": [{k: st[k] for k in ("period", "partner_id", "payable_cents",
                                               "cut_cents", "held_cents", "rejected_cents",
                                               "adjustments_cents")}
                           | {"lines": len(st["lines"])} for st in statements],
            "reasons": dict(Counter(r for st in statements for line in st["lines"]
                                    for r in line["reasons"])),
            "clock_offset_hours": round(self.clock.offset() / 3600, 2),
            "events": {service: len(log) for service, log in logs.items()},
            "problems": world.problems[:20],
        }


def _at_rest(script: Script, phase: int) -> bool:
    """Gone as far as it can until the clock moves (phase 1, 2) or for good (phase 3)."""
    if script.outcome:
        return True
    if script.plan == TIMED_OUT and phase == 1:
        return bool(script.ignored_by) and not script.visits
    if script.plan == UNREACHABLE:
        return script.no_answers >= phase
    return False


def _final(claim: dict, script: Script) -> bool:
    """The claim decided on the callback's last word (and every returned part)."""
    expected = {"verified": "verified", "unverified": "unverified"}.get(script.outcome or "")
    if expected is None:
        return True
    if claim["callback"] != expected:
        return False
    return not any("old_part_not_returned" in line["reasons"] for line in claim["lines"]
                   if expected == "verified")


def render(report: dict) -> str:
    """The audit for people."""
    cents = lambda c: f"{c / 100:>10,.2f}"  # noqa: E731
    out = [f"\n{report['orders']} orders driven round the loop in {report['seconds']} s "
           f"(clock moved {report['clock_offset_hours']} h in all)",
           "  plans:    " + ", ".join(f"{k} {v}" for k, v in sorted(report["plans"].items())),
           "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"].items())),
           "  events:   " + ", ".join(f"{k} {v:,}" for k, v in report["events"].items()),
           "",
           f"LOOPS CLOSED: {report['loops_closed']} of {report['orders']}",
           f"LOOPS OPEN:   {len(report['loops_open'])}"
           + (f" (and {report['loops_open_elsewhere']} from earlier runs)"
              if report["loops_open_elsewhere"] else "")]
    for loop in report["loops_open"]:
        out.append(f"  {loop['order_id']}  {loop['missing']:<26} ({loop['plan']}; "
                   f"SLA: {loop['sla']})")
    out.append("\nRE-DISPATCHED AFTER AN ACCEPT TIMEOUT")
    for item in report["redispatched_after_timeout"]:
        out.append(f"  {item['order_id']}  not accepted by {', '.join(item['ignored_by'])}; "
                   f"completed by {', '.join(item['completed_by']) or '-'}")
    out.append("\nDISPUTED, RE-VISITED BY ANOTHER PARTNER")
    for item in report["disputed_revisits"]:
        out.append(f"  {item['order_id']}  visits: {' -> '.join(item['visits'])}")
    out.append("\nTHE PLANTED BAD CLAIM")
    for line in report["bad_claim"]:
        out.append(f"  {line['order_id']} {line['line_id']}: {line['decision']} "
                   f"({', '.join(line['reasons'])}), {cents(line['claimed_cents']).strip()} "
                   "claimed")
    out.append("\nSTATEMENTS (CNY)          payable        cut       held   rejected  lines")
    for st in report["statements"]:
        out.append(f"  {st['period']} {st['partner_id'][:12]:12} {cents(st['payable_cents'])}"
                   f" {cents(st['cut_cents'])} {cents(st['held_cents'])}"
                   f" {cents(st['rejected_cents'])} {st['lines']:>6}")
    out.append("  reasons on the lines: " + (", ".join(
        f"{r} {n}" for r, n in sorted(report["reasons"].items())) or "none"))
    if report["problems"]:
        out.append("\nrefused along the way (first 20): " + "; ".join(report["problems"]))
    out.append("\nNext: `serviceloop audit loops`, `serviceloop audit verify`, "
               "`serviceloop audit replay ORDER_ID` on any order above.")
    return "\n".join(out)
