"""What must hold after every fault, once the load has stopped and the system has settled:
nothing accepted is lost, nothing is applied twice, the money agrees, the logs verify, and the
only open loops are the ones waiting for the month's settlement run."""

from __future__ import annotations

from collections import Counter

from serviceloop import audit
from serviceloop.services import IMPLEMENTED
from tests.faults.load import CLAIM_CENTS, Load
from tests.helpers import wait_until

# the one open loop a verified order legitimately has: the period is not closed yet
LEGITIMATELY_OPEN = {"never_settled"}
# per order, how many of each event its life puts in each log (a fault-free repair)
ONCE_PER_ORDER = {
    "orders": ("order_created",),
    "dispatch": ("order_received", "order_assigned", "order_accepted",
                 "appointment_scheduled", "partner_arrived", "order_completed"),
    "callback": ("verification_task_created", "order_verified"),
}


def scenario_orders(logs: dict[str, list[dict]], load: Load) -> set[str]:
    """The orders opened while this scenario's load ran (earlier scenarios were checked)."""
    return {e["payload"]["order_id"] for e in logs["orders"]
            if e["event_type"] == "order_created" and e["global_position"] > load.since}


def settled_logs(system, load: Load, timeout: float = 120) -> dict[str, list[dict]]:  # noqa: ANN001
    """The four logs, once every accepted order's loop has gone as far as it can go."""
    def settled() -> dict | None:
        with system.rpc() as rpc:
            logs = audit.read_logs(rpc, IMPLEMENTED)
        orders = scenario_orders(logs, load)
        loops = audit.open_loops(logs, load.world.clock.now())
        busy = [loop for loop in loops if loop["missing"] not in LEGITIMATELY_OPEN
                and loop["order_id"] in orders]
        verified = {e["payload"]["order_id"] for e in logs["callback"]
                    if e["event_type"] == "order_verified"}
        claimed = {e["payload"]["order_id"] for e in logs["settlement"]
                   if e["event_type"] == "claim_decided"
                   and e["payload"]["callback"] == "verified"}
        done = set(load.accepted) <= orders and not busy and verified & orders <= claimed
        return logs if done else None

    return wait_until(settled, timeout=timeout, interval=1.0,
                      message="every accepted order to be verified and claimed")


def assert_nothing_lost_or_doubled(system, load: Load) -> dict[str, list[dict]]:  # noqa: ANN001
    logs = settled_logs(system, load)
    print(f"\n{load.summary()}; events: "
          + ", ".join(f"{s} {len(log)}" for s, log in logs.items()))
    assert audit.verify(logs) == []
    orders = scenario_orders(logs, load)
    loops = audit.open_loops(logs, load.world.clock.now())
    assert {loop["missing"] for loop in loops if loop["order_id"] in orders} <= \
        LEGITIMATELY_OPEN
    assert set(load.accepted) <= orders, "an order create_order accepted is not in the log"

    for service, kinds in ONCE_PER_ORDER.items():
        counted = Counter((e["payload"].get("order_id"), e["event_type"])
                          for e in logs[service] if e["event_type"] in kinds)
        wrong = {key: n for key, n in counted.items() if key[0] in orders and n != 1}
        missing = [(o, k) for o in orders for k in kinds if (o, k) not in counted]
        assert not wrong, f"{service}: events applied more than once: {list(wrong)[:5]}\n" + \
            history(logs[service], next(iter(wrong))[0])
        assert not missing, f"{service}: lost: {missing[:5]}"
    assert_each_cause_applied_once(logs, orders)
    assert_one_approved_claim_per_order(logs, orders)
    return logs


def history(log: list[dict], order_id: str) -> str:
    """One order's events in one log, a line each, for a failure's message."""
    return "\n".join(f"  {e['global_position']} {e['stream_id']} v{e['stream_version']} "
                     f"{e['event_type']} by {e['actor']} at {e['occurred_at']} "
                     f"cause {e['causation_id']}"
                     for e in log if e["payload"].get("order_id") == order_id)


def assert_each_cause_applied_once(logs: dict[str, list[dict]], orders: set[str]) -> None:
    """A consumer that handled one event twice leaves two events of one type with the same
    cause in its log."""
    for service, log in logs.items():
        others = {e["event_id"] for s, other in logs.items() if s != service for e in other}
        counted = Counter((e["causation_id"], e["event_type"]) for e in log
                          if e["causation_id"] in others and e["correlation_id"] in orders)
        twice = [key for key, n in counted.items() if n > 1]
        assert not twice, f"{service} applied an event twice: {twice[:5]}"


def assert_one_approved_claim_per_order(logs: dict[str, list[dict]], orders: set[str]) -> None:
    """One claim per completion, decided last as approved in full: claimed, nothing cut,
    held or rejected (the money the partners asked for, counted once)."""
    last_decision: dict[str, dict] = {}
    for event in logs["settlement"]:
        if event["event_type"] == "claim_decided":
            last_decision[event["payload"]["claim_id"]] = event["payload"]
    last_decision = {claim: d for claim, d in last_decision.items() if d["order_id"] in orders}
    claims = Counter(decision["order_id"] for decision in last_decision.values())
    assert {o: n for o, n in claims.items() if n != 1} == {}, "an order claimed twice"
    assert orders <= set(claims), "a completed order without its claim"
    for decision in last_decision.values():
        lines = decision["lines"]
        assert sum(line["claimed_cents"] for line in lines) == CLAIM_CENTS, decision
        assert sum(line["approved_cents"] for line in lines) == CLAIM_CENTS, decision
        assert {line["decision"] for line in lines} == {"approved"}, decision
