"""One order across the four logs: its events in causal order, and each service's state of
it as of a moment."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from serviceloop.clock import parse_time
from serviceloop.config import SERVICES


def causal_order(events: Iterable[dict]) -> list[dict]:
    """Events in causal order: each after the event that caused it (`causation_id`) and after
    everything before it in its own service's log (log order is commit order); among events
    that are free to go, the earliest `occurred_at` first, then by service and position."""
    import heapq

    items = list(events)
    rank = {service: n for n, service in enumerate(SERVICES)}
    by_id = {e["event_id"]: n for n, e in enumerate(items)}
    after: dict[int, list[int]] = {n: [] for n in range(len(items))}
    waiting = [0] * len(items)

    def edge(first: int, then: int) -> None:
        after[first].append(then)
        waiting[then] += 1

    per_service: dict[str, list[int]] = {}
    for n, event in enumerate(items):
        per_service.setdefault(event["source"], []).append(n)
        cause = by_id.get(event["causation_id"])
        if cause is not None and cause != n:
            edge(cause, n)
    for indices in per_service.values():
        indices.sort(key=lambda n: items[n]["global_position"])
        for first, then in zip(indices, indices[1:], strict=False):
            edge(first, then)

    def key(n: int) -> tuple:
        e = items[n]
        return (e["occurred_at"], rank.get(e["source"], 99), e["global_position"], n)

    ready = [key(n) for n in range(len(items)) if waiting[n] == 0]
    heapq.heapify(ready)
    ordered, done = [], set()
    while ready:
        n = heapq.heappop(ready)[-1]
        ordered.append(items[n])
        done.add(n)
        for then in after[n]:
            waiting[then] -= 1
            if waiting[then] == 0:
                heapq.heappush(ready, key(then))
    # a causation cycle (impossible unless a log was forged) still lists every event
    ordered += sorted((items[n] for n in range(len(items)) if n not in done),
                      key=lambda e: (e["occurred_at"], e["global_position"]))
    return ordered


# callback's outcome events, and the outcome each records for the visit it verified
OUTCOMES = {"order_verified": "verified", "order_disputed": "disputed",
            "order_unverified": "unverified", "unverified_closed": "closed_unverified"}


# -- one order's state in each service, as of a moment --------------------------------------
# Each service's state is a fold of its own events for the order, read the way that service's
# read models read them (services/*/projections.py), so `--as-of` shows what each service held.


def _orders_step(state: dict, kind: str, p: dict) -> None:
    if kind == "order_created":
        state.update(status=p["status"], order_type=p["order_type"], routed_to=p["routed_to"],
                     fault_code=p["fault_code"], in_warranty=p["in_warranty"], partner_id=None)
    elif kind == "order_fault_recorded":
        state.update(status=p["status"], fault_code=p["fault_code"])
    elif kind == "order_cancelled":
        state.update(status="cancelled", cancel_reason=p["reason"])
    elif kind == "order_progressed":
        state.update({k: p[k] for k in ("status", "partner_id", "window_start", "window_end")})
    elif kind == "order_verification_recorded":
        state.update(status=p["status"], verification=p["outcome"])
    elif kind == "order_settled":
        state.update(status="closed", settled_period=p["period"], paid_cents=p["payable_cents"])


def _dispatch_step(state: dict, kind: str, p: dict) -> None:
    free = dict(partner_id=None, window_start=None, window_end=None)  # nobody holds it
    if kind == "order_received":
        state.update(status=p["status"], fault_code=p["fault_code"], attempt=0, visits=0,
                     excluded=[], **free)
    elif kind == "fault_code_received":
        state.update(status="ready", fault_code=p["fault_code"])
    elif kind == "order_assigned":
        state.update(free, status="assigned", partner_id=p["partner_id"], attempt=p["attempt"],
                     accept_by=p["accept_by"])
    elif kind == "order_accepted":
        state.update(status="accepted", schedule_by=p["schedule_by"])
    elif kind in ("order_rejected", "assignment_timed_out", "sla_breached"):
        state.update(free, status="ready", ended_by=kind,
                     excluded=sorted({*state.get("excluded", []), p["partner_id"]}))
    elif kind == "order_escalated":
        state.update(free, status="escalated", escalation=p["reason"])
    elif kind == "appointment_scheduled":
        state.update(status="scheduled", window_start=p["window_start"],
                     window_end=p["window_end"])
    elif kind == "appointment_cancelled":
        state.update(status="accepted", window_start=None, window_end=None)
    elif kind == "partner_arrived":
        state.update(status="on_site", within_window=p["within_window"])
    elif kind == "order_completed":
        state.update(status="completed", visits=state.get("visits", 0) + 1,
                     labour_fee_cents=p["labour_fee_cents"],
                     travel_fee_cents=p["travel_fee_cents"],
                     parts_fee_cents=p["parts_fee_cents"],
                     parts=[part["part_code"] for part in p["parts"]])
    elif kind == "order_reopened":
        state.update(free, status="ready", reopened_for=p["reasons"])
    elif kind == "order_withdrawn":
        state.update(status="withdrawn")


_TASK_STATUS = {"task_leased": "leased", "confirmation_requested": "awaiting_reply",
                "callback_unanswered": "open", "order_verified": "verified",
                "order_disputed": "disputed", "order_unverified": "unverified",
                "unverified_closed": "closed", "task_returned": "open",
                "confirmation_send_started": "sending", "problem_reported": "open"}


def _callback_step(state: dict, kind: str, p: dict) -> None:
    """The order's current verification task (the latest visit's; a sampled review of an
    automatic verification is counted, not shown in its place)."""
    if kind == "verification_task_created":
        if p["review_of"]:
            state["reviews"] = state.get("reviews", 0) + 1
            return
        state.update(task_id=p["task_id"], visit=p["visit"], channel=p["channel"],
                     due_at=p["due_at"], task_status="open", outcome=None, attempts=0)
        return
    if p["task_id"] != state.get("task_id") or kind not in _TASK_STATUS:
        return
    state["task_status"] = _TASK_STATUS[kind]
    if kind in OUTCOMES:
        state["outcome"] = OUTCOMES[kind]
        state["satisfaction"] = p.get("satisfaction")
    if kind == "order_disputed":
        state["dispute_reasons"] = p["reasons"]
    if kind in ("confirmation_requested", "callback_unanswered"):
        state["attempts"] = p["attempt"]
    elif kind == "order_unverified":
        state["attempts"] = p["attempts"]
    elif kind == "task_returned":
        state.update(attempts=0, outcome=None)
    elif kind == "problem_reported":  # the customer answered "a problem": a person calls
        state.update(channel="agent", attempts=0)


def _settlement_step(state: dict, kind: str, p: dict) -> None:
    """The order's latest claim (one per completion) as last decided."""
    if kind == "order_facts_recorded":
        state["facts_recorded"] = True
    elif kind == "sla_breach_recorded":
        state["sla_breaches"] = state.get("sla_breaches", 0) + 1
    elif kind == "claim_decided":
        lines = p["lines"]
        state.update(claim_id=p["claim_id"], callback=p["callback"],
                     decisions={line["line_id"]: line["decision"] for line in lines},
                     claimed_cents=sum(line["claimed_cents"] for line in lines),
                     approved_cents=sum(line["approved_cents"] for line in lines),
                     held_cents=sum(line["claimed_cents"] for line in lines
                                    if line["decision"] == "held"))


FOLDS = {"orders": _orders_step, "dispatch": _dispatch_step, "callback": _callback_step,
         "settlement": _settlement_step}


def fold_service(service: str, events: Iterable[dict]) -> dict | None:
    """One service's state of the order after `events` (that service's, in log order); None
    when it has none. Plain dicts: what a person or `--json` reads."""
    state: dict | None = None
    for event in events:
        if state is None:
            state = {"order_id": event["correlation_id"], "events": 0}
        FOLDS[service](state, event["event_type"], event["payload"])
        state.update(events=state["events"] + 1, last_event=event["event_type"],
                     last_at=event["occurred_at"], position=event["global_position"],
                     actor=event["actor"])
    return state


def state_as_of(events: Iterable[dict], moment: datetime) -> dict[str, dict | None]:
    """Per service, the order's state as that service held it at `moment`: the fold of its
    events that had occurred by then (each tagged with its `source`), in its log order."""
    mine: dict[str, list[dict]] = {service: [] for service in SERVICES}
    for event in events:
        if parse_time(event["occurred_at"]) <= moment:
            mine.setdefault(event["source"], []).append(event)
    return {service: fold_service(service, sorted(log, key=lambda e: e["global_position"]))
            if service in FOLDS else None for service, log in mine.items()}
