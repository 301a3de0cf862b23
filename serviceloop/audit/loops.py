"""Open loops: every order whose loop is not closed, the link that is missing and the SLA it
breaks."""

from __future__ import annotations

from datetime import datetime

from serviceloop.audit.replay import OUTCOMES
from serviceloop.audit.wire import collector_paused
from serviceloop.clock import parse_time

# each missing link: the SLA it breaks, and after how many seconds it is broken
SLAS = {
    "never_dispatched": ("assign at once", 300),
    "never_completed": ("accept 2 h, schedule 24 h", 26 * 3600),
    "disputed_never_revisited": ("re-visit", 26 * 3600),
    "never_verified": ("verify within 48 h", 48 * 3600),
    "unverified_held": ("verify within 48 h", 0),
    "never_settled": ("next period's run", 62 * 86400),
    # orders closes a paid order as soon as it reads the period's close: minutes, not hours
    "settled_not_closed_in_orders": ("orders closes it at the period's close", 3600),
    "closed_unverified_not_closed_in_orders": ("orders closes it with the task", 3600),
    "settled_without_verification": ("must never happen", 0),
}
CLOSED_IN_ORDERS_BUT = "closed_in_orders_but_"  # + the link the other logs say is missing
# the kinds of event each log's fold below looks at, and nothing else: read_logs(event_types=
# LOOP_EVENT_TYPES) skips the rest (a test holds open_loops equal on whole and filtered logs)
FOLLOWED = {
    "orders": frozenset({"order_created", "order_cancelled", "order_settled",
                         "order_verification_recorded"}),  # _orders_from_their_log
    "dispatch": frozenset({"order_assigned", "order_completed", "order_withdrawn"}),
    "callback": frozenset({"verification_task_created", "task_returned", *OUTCOMES}),
    "settlement": frozenset({"period_closed"}),
}
LOOP_EVENT_TYPES = frozenset().union(*FOLLOWED.values())


def open_loops(logs: dict[str, list[dict]], now: datetime, *, since: datetime | None = None,
               partner: str | None = None) -> list[dict]:
    """Every order whose loop is not closed, the link that is missing, its age at `now` (the
    services' time, never the auditor's wall clock) and the SLA it breaks.

    A loop is closed when orders has closed the order and dispatch, callback and settlement
    agree: completed, verified (or closed unverified by a supervisor) and settled. Orders
    closes an order when a closed period settles it, paid or decided for good with nothing
    payable (customer-paid, rejected)."""
    with collector_paused():  # a dict per order, all living on
        return _open_loops(logs, now, since, partner)


def _open_loops(logs: dict[str, list[dict]], now: datetime, since: datetime | None,
                partner: str | None) -> list[dict]:
    orders = _orders_from_their_log(logs.get("orders", []))
    _follow_dispatch(orders, logs.get("dispatch", []))
    _follow_callback(orders, logs.get("callback", []))
    _follow_settlement(orders, logs.get("settlement", []))
    loops = []
    for order in orders.values():
        if order["cancelled"] or order["routed_to"] != "dispatch":
            continue
        if since and parse_time(order["created_at"]) < since:
            continue
        if partner and order["partner_id"] != partner:
            continue
        missing = _missing_link(order)
        if missing:
            age = now - parse_time(order["last_at"])
            sla, limit = SLAS.get(missing, ("must never happen", 0))
            loops.append({"order_id": order["order_id"], "order_type": order["order_type"],
                          "partner_id": order["partner_id"], "missing": missing,
                          "since": order["last_at"],
                          "age_hours": round(age.total_seconds() / 3600, 1),
                          "sla": sla, "sla_broken": age.total_seconds() > limit})
    return sorted(loops, key=lambda loop: loop["since"])


def _missing_link(order: dict) -> str | None:
    """The first link missing in the order's loop, or None when the loop is closed."""
    latest = order["outcomes"].get(order["visits"])
    completed = order["visits"] > 0 and latest != "disputed"
    if order["paid"] and latest != "verified":
        return "settled_without_verification"
    if not order["dispatched"]:
        missing = "never_dispatched"
    elif latest == "disputed":
        missing = "disputed_never_revisited"
    elif not completed:
        missing = "never_completed"
    elif latest == "closed_unverified":  # a supervisor closed it unverified: nothing is paid
        missing = None
    elif latest != "verified":
        missing = "unverified_held" if latest == "unverified" else "never_verified"
    elif not order["settled"]:
        missing = "never_settled"
    else:
        missing = None
    if missing:  # orders closed what another log says is still open
        return CLOSED_IN_ORDERS_BUT + missing if order["closed_in_orders"] else missing
    if order["closed_in_orders"]:
        return None
    if latest == "closed_unverified":
        return "closed_unverified_not_closed_in_orders"
    return "settled_not_closed_in_orders"


def _orders_from_their_log(log: list[dict]) -> dict[str, dict]:
    orders: dict[str, dict] = {}
    for event in log:
        p, kind = event["payload"], event["event_type"]
        if kind == "order_created":
            orders[p["order_id"]] = {"order_id": p["order_id"], "order_type": p["order_type"],
                                     "created_at": event["occurred_at"], "cancelled": False,
                                     "routed_to": p["routed_to"], "partner_id": None,
                                     "dispatched": False, "visits": 0, "outcomes": {},
                                     "settled": False, "paid": False,
                                     "closed_in_orders": False,
                                     "last_at": event["occurred_at"]}
            continue
        order = orders.get(p.get("order_id", ""))
        if order is None:
            continue
        if kind == "order_cancelled":
            order["cancelled"] = True
        elif kind == "order_settled" or (kind == "order_verification_recorded"
                                         and p["status"] == "closed"):
            order["closed_in_orders"] = True  # as orders' own read model closes it
    return orders


def _follow_dispatch(orders: dict[str, dict], log: list[dict]) -> None:
    for event in log:
        order = orders.get(event["payload"].get("order_id", ""))
        if order is None:
            continue
        kind = event["event_type"]
        if kind == "order_assigned":
            order.update(dispatched=True, partner_id=event["payload"]["partner_id"])
        elif kind == "order_completed":
            order["visits"] += 1
            order["last_at"] = max(order["last_at"], event["occurred_at"])
        elif kind == "order_withdrawn":
            order["cancelled"] = True


def _follow_callback(orders: dict[str, dict], log: list[dict]) -> None:
    """Each log is read on its own, so callback's outcomes are matched to dispatch's visits by
    their visit number (a task's, for an outcome that does not carry one), not by time."""
    visit_of_task: dict[str, int] = {}
    for event in log:
        p, kind = event["payload"], event["event_type"]
        order = orders.get(p.get("order_id", ""))
        if order is None or p.get("task_id", "").startswith("review-"):
            continue
        if kind == "verification_task_created":
            visit_of_task[p["task_id"]] = p["visit"]
        elif kind in OUTCOMES or kind == "task_returned":
            visit = p.get("visit") or visit_of_task.get(p["task_id"], 1)
            order["outcomes"][visit] = OUTCOMES.get(kind)  # sent back: no outcome yet
            order["last_at"] = max(order["last_at"], event["occurred_at"])


def _follow_settlement(orders: dict[str, dict], log: list[dict]) -> None:
    for event in log:
        if event["event_type"] != "period_closed":
            continue
        for line in event["payload"]["lines"]:
            order = orders.get(line["order_id"])
            if order is None:
                continue
            # settled: paid in a closed period, or decided there for good with nothing owed
            # to the partner (the customer paid, or the claim was rejected); a line still
            # held and paying nothing is not settled yet
            settles = line["payable_cents"] > 0 or line["held_cents"] == 0
            order["settled"] |= settles
            order["paid"] |= line["payable_cents"] > 0
            if settles:
                order["last_at"] = max(order["last_at"], event["occurred_at"])


def loops_now(logs: dict[str, list[dict]], clock_now: datetime,
              given: datetime | None = None) -> tuple[datetime, str]:
    """The moment open loops are aged at, and where it came from: `given` (an auditor's
    `--now`) if any, else the services' clock, but never before the newest event in the
    logs (a clock behind the services' would age loops negatively)."""
    if given is not None:
        return given, "--now"
    newest = max((log[-1]["occurred_at"] for log in logs.values() if log), default=None)
    if newest is not None and parse_time(newest) > clock_now:
        return parse_time(newest), "the newest event (the services' clock reads earlier)"
    return clock_now, "the services' clock"
